"""An external model backend for the API: any OpenAI-compatible server (a llama.cpp server, vLLM, Ollama, another
studio) answering ``/v1/chat/completions`` and ``/v1/completions`` in place of a local model.

Set on the server, not per request: ``STUDIO_LLM_URL`` (its base URL, ending in ``/v1``), ``STUDIO_LLM_MODEL`` (the
model it should run) and ``STUDIO_LLM_KEY`` (its API key, if it wants one), or ``python -m llm_core serve
--llm-url URL --llm-model NAME``. ``/v1/models`` then lists that model first; a request naming it (or naming no
model) is forwarded as the client sent it, streamed or not, and the backend's answer comes back unchanged. Local
models stay reachable by their own ids. Our clients still authenticate with our key; the backend's key never
leaves the server. When the backend cannot be used the client gets an OpenAI-style error that says so: 502 when it
is unreachable, fails, or refuses this server's key; its own status (400, 404, 429, ...) when it refuses the
request, with its message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.responses import JSONResponse, StreamingResponse

from .schemas import APIError

ENV_URL, ENV_KEY, ENV_MODEL = "STUDIO_LLM_URL", "STUDIO_LLM_KEY", "STUDIO_LLM_MODEL"


def _backend_message(r: httpx.Response) -> tuple[str, dict]:
    """(the backend's error message, its OpenAI error object or {})."""
    try:
        err = r.json().get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict):
        return str(err.get("message") or r.reason_phrase), err
    return (str(err) if err else (r.text or "").strip()[:300] or r.reason_phrase), {}


@dataclass(frozen=True)
class Backend:
    """Where the API forwards requests for ``model``."""

    url: str
    model: str
    key: str | None = None
    timeout: float = 300.0

    @classmethod
    def from_settings(cls, url: str | None = None, model: str | None = None, key: str | None = None,
                      env: dict[str, str] | None = None) -> Backend | None:
        """The backend the flags (else the environment) name, or None; a ValueError in words when it is set up
        halfway (a model or key without a URL, a URL without a model, an address that is not http(s))."""
        env = dict(os.environ if env is None else env)
        url = (url or env.get(ENV_URL) or "").strip().rstrip("/")
        model = (model or env.get(ENV_MODEL) or "").strip()
        key = (key or env.get(ENV_KEY) or "").strip() or None
        if not url:
            if model or key:
                raise ValueError(f"{ENV_MODEL if model else ENV_KEY} is set but {ENV_URL} is not: give the model "
                                 f"backend's base URL too (--llm-url), e.g. http://127.0.0.1:8080/v1.")
            return None
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"The model backend's address must start with http:// or https:// (got {url!r}).")
        if not model:
            raise ValueError(f"{ENV_URL} is set but {ENV_MODEL} is not: name the model the backend should run "
                             "(--llm-model).")
        return cls(url=url, model=model, key=key)

    def owns(self, name: str | None) -> bool:
        """True when a request for model ``name`` goes to the backend (its model, or no model named)."""
        return not name or name == self.model

    def listing(self, created: int) -> dict:
        return {"id": self.model, "object": "model", "created": created, "owned_by": "external-backend"}

    # ---- forwarding ------------------------------------------------------------------------------------------
    def forward(self, path: str, req: Any) -> Any:
        """POST the client's request (as sent, with the backend's model name) to ``{url}{path}``: the backend's
        JSON answer, or (``"stream": true``) its server-sent events passed through."""
        body = req.model_dump(exclude_unset=True)
        body.pop("collection", None)
        body["model"] = self.model
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        client = httpx.Client(timeout=httpx.Timeout(self.timeout, connect=10.0))
        try:
            r = client.send(client.build_request("POST", f"{self.url}{path}", json=body, headers=headers),
                            stream=True)
        except httpx.TransportError as e:
            client.close()
            raise self.unreachable(e) from e
        if r.status_code >= 400 or not body.get("stream"):
            try:
                r.read()
            except httpx.TransportError as e:
                raise self.unreachable(e) from e
            finally:
                r.close()
                client.close()
            if r.status_code >= 400:
                raise self.refused(r)
            try:
                return JSONResponse(r.json())
            except ValueError as e:
                raise APIError(502, f"The model backend at {self.url} answered something that is not JSON.",
                               type_="server_error", code="backend_error") from e
        return StreamingResponse(self._relay(client, r), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    def _relay(self, client: httpx.Client, r: httpx.Response) -> Iterator[bytes]:
        """The backend's events as they arrive; a connection lost midway ends the stream with an error event.
        Closing (the client went away) closes the backend connection, which stops its generation."""
        try:
            yield from r.iter_bytes()
        except httpx.TransportError as e:
            err = APIError(502, f"Lost the connection to the model backend at {self.url}: {e}",
                           type_="server_error", code="backend_unreachable")
            yield f"data: {json.dumps(err.body())}\n\ndata: [DONE]\n\n".encode()
        finally:
            r.close()
            client.close()

    # ---- errors in words ---------------------------------------------------------------------------------------
    def unreachable(self, e: Exception) -> APIError:
        return APIError(502, f"The model backend at {self.url} is unreachable ({e or type(e).__name__}): is it "
                        f"running, and is {ENV_URL} right?", type_="server_error", code="backend_unreachable")

    def refused(self, r: httpx.Response) -> APIError:
        msg, err = _backend_message(r)
        if r.status_code in (401, 403):
            return APIError(502, f"The model backend at {self.url} refused this server's key ({ENV_KEY}): {msg}",
                            type_="server_error", code="backend_auth_failed")
        if r.status_code >= 500:
            return APIError(502, f"The model backend at {self.url} failed ({r.status_code}): {msg}",
                            type_="server_error", code="backend_error")
        return APIError(r.status_code, f"The model backend at {self.url} refused the request ({r.status_code}): "
                        f"{msg}", err.get("param"), err.get("code") or "backend_error",
                        err.get("type") or "invalid_request_error")
