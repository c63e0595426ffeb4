"""Any OpenAI-compatible server as the model: a llama.cpp server, vLLM, Ollama, or another studio.

A user who outgrows one machine keeps using the studio with a real serving engine: the Chat tab and the document
answerer (``rag``'s ``LLM`` protocol) stream from ``POST {base_url}/chat/completions`` instead of the local GPT.
Plain ``httpx`` (already a dependency of Gradio), so no client library is needed at run time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class RemoteStats:
    """Filled in while streaming, like ``llm_core.generation.generate.GenerationStats``."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0
    total_s: float = 0.0
    finish_reason: str = ""
    pieces: list[str] = field(default_factory=list, repr=False)


class RemoteError(ValueError):
    """The server could not be used; the message says why in words."""


def _message(r: httpx.Response) -> str:
    try:
        err = r.json().get("error")
        text = err.get("message") if isinstance(err, dict) else str(err or "")
    except (ValueError, AttributeError):
        text = ""
    return text or r.text[:200] or r.reason_phrase


class RemoteLLM:
    """Chat through an OpenAI-compatible server. ``context_window`` is what the server's model takes (it cannot be
    asked through the API); token counts are estimates (~4 characters a token), used only to pack passages."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, context_window: int = 8192,
                 timeout: float = 120.0) -> None:
        url = (base_url or "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise RemoteError(f"The server address must start with http:// or https:// (got {base_url!r}).")
        if not (model or "").strip():
            raise RemoteError("Name the model the server should use.")
        self.base_url, self.model, self.context_window = url, model.strip(), int(context_window)
        self.name = f"{self.model} @ {self.base_url}"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout

    # ---- talking to the server ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = httpx.request(method, f"{self.base_url}{path}", headers=self._headers, timeout=self._timeout, **kw)
        except httpx.TransportError as e:
            raise RemoteError(f"Cannot reach {self.base_url}: is the server running? ({e})") from e
        self._raise_for(r)
        return r

    def _raise_for(self, r: httpx.Response) -> None:
        if r.status_code == 401:
            raise RemoteError(f"{self.base_url} refused the API key: {_message(r)}")
        if r.status_code >= 400:
            raise RemoteError(f"{self.base_url} answered {r.status_code}: {_message(r)}")

    def models(self) -> list[str]:
        """The model ids the server offers (``GET /models``)."""
        data = self._request("GET", "/models").json().get("data", [])
        return [m.get("id", "") for m in data if isinstance(m, dict)]

    def check(self) -> RemoteLLM:
        """Fail now, in words, when the server is unreachable, refuses the key, or lacks the model."""
        ids = self.models()
        if ids and self.model not in ids:
            raise RemoteError(f"{self.base_url} has no model {self.model!r}; it offers {', '.join(ids[:10])}.")
        return self

    # ---- rag's LLM protocol ----------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(text) // 4 + 1

    def prompt_tokens(self, messages: list[dict]) -> int:
        return sum(self.count_tokens(str(m.get("content", ""))) + 4 for m in messages) + 2

    def stream(self, messages: list[dict], max_new_tokens: int, stop_event: threading.Event | None = None,
               stats: RemoteStats | None = None, **sampling: Any) -> Iterator[str]:
        """Text pieces of the server's streamed reply. ``sampling``: temperature, top_p, seed, stop (None: the
        server's defaults). Setting ``stop_event`` closes the connection, which stops a well-behaved server."""
        st = stats if stats is not None else RemoteStats()
        body = {"model": self.model, "messages": messages, "max_tokens": int(max_new_tokens), "stream": True,
                "stream_options": {"include_usage": True},
                **{k: v for k, v in sampling.items() if v is not None}}
        t0 = time.perf_counter()
        try:
            with httpx.stream("POST", f"{self.base_url}/chat/completions", json=body, headers=self._headers,
                              timeout=self._timeout) as r:
                if r.status_code >= 400:
                    r.read()
                    self._raise_for(r)
                for piece in self._pieces(r, st):
                    if not st.pieces:
                        st.ttft_s = time.perf_counter() - t0
                    st.pieces.append(piece)
                    yield piece
                    if stop_event is not None and stop_event.is_set():
                        st.finish_reason = "stopped"
                        break
        except httpx.TransportError as e:
            raise RemoteError(f"Lost the connection to {self.base_url}: {e}") from e
        finally:
            st.total_s = time.perf_counter() - t0

    @staticmethod
    def _pieces(r: httpx.Response, st: RemoteStats) -> Iterator[str]:
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if "error" in event:
                raise RemoteError(f"The server failed while answering: {_message_of(event)}")
            if event.get("usage"):
                st.prompt_tokens = int(event["usage"].get("prompt_tokens", 0))
                st.new_tokens = int(event["usage"].get("completion_tokens", 0))
            for choice in event.get("choices") or []:
                if choice.get("finish_reason"):
                    st.finish_reason = choice["finish_reason"]
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield text


def _message_of(event: dict) -> str:
    err = event.get("error")
    return err.get("message", "") if isinstance(err, dict) else str(err)
