"""Chat tab panel: answer with an OpenAI-compatible server (llama.cpp server, vLLM, Ollama, another studio)
instead of the local GPT. Generation there is ``api.remote.RemoteLLM``; this module only lays out and checks.

The address, key and model are kept in this browser (encrypted ``BrowserState``), never on the server, so on a
shared deployment one person's server and key are invisible to everyone else.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import gradio as gr

from ui.errors import readable_error, warn


def remote_on(remote: Any) -> bool:
    return isinstance(remote, dict) and bool(remote.get("on")) and bool(remote.get("url"))


def connect(url: str, key: str, model: str, on: bool) -> tuple[dict | Any, str]:
    """(the browser's copy, status line): the server is asked for its models before it is used."""
    if not on:
        return {"url": url, "key": key, "model": model, "on": False}, "Replies come from the local model."
    from api.remote import RemoteError, RemoteLLM

    try:
        offered = RemoteLLM(url, model, key or None, timeout=15).check().models()
    except RemoteError as e:
        warn(str(e))
        return gr.skip(), f"⚠️ Not connected: {readable_error(e)} Replies come from the local model."
    return ({"url": url, "key": key, "model": model, "on": True},
            f"✅ Replies come from **{model}** at {url} ({len(offered)} model(s) offered).")


def restore(remote: Any) -> list[Any]:
    """The panel's fields from the browser's copy after a reload."""
    r = remote if isinstance(remote, dict) else {}
    status = f"✅ Replies come from **{r.get('model')}** at {r.get('url')}." if remote_on(r) else ""
    return [r.get("url", ""), r.get("key", ""), r.get("model", ""), bool(r.get("on")), status]


def create_remote_panel(secret: str | None = None) -> dict[str, Any]:
    """The accordion and its state; ``wire_remote_panel`` connects them."""
    c: dict[str, Any] = {}
    with gr.Accordion("Use an OpenAI-compatible server", open=False, elem_id="chat-remote"):
        c["url"] = gr.Textbox(label="Server address", placeholder="http://127.0.0.1:8080/v1",
                              info="llama.cpp server, vLLM, Ollama (…/v1), or another studio")
        c["key"] = gr.Textbox(label="API key", type="password", placeholder="(none)")
        c["model_name"] = gr.Textbox(label="Model name on that server", placeholder="e.g. qwen2.5-1.5b-instruct")
        c["on"] = gr.Checkbox(False, label="Answer with this server instead of the local model")
        c["status"] = gr.Markdown("", elem_id="chat-remote-status")
    c["state"] = gr.BrowserState(None, storage_key="studio-remote", secret=secret)
    return c


def wire_remote_panel(c: dict[str, Any]) -> dict[str, Any]:
    """Ticking the box (or changing a field while it is ticked) checks the server; returns the page-load event's
    arguments (the fields back from the browser's copy)."""
    fields = [c["url"], c["key"], c["model_name"], c["on"]]
    c["on"].input(connect, fields, [c["state"], c["status"]], show_progress="minimal")
    for f in fields[:3]:
        f.submit(connect, fields, [c["state"], c["status"]], show_progress="minimal")
    return dict(fn=restore, inputs=c["state"], outputs=[*fields, c["status"]], queue=False)


def respond_remote(msgs: list[dict], remote: dict, system: str, temperature: float, top_p: float,
                   max_new_tokens: int, seed: float | int | None, stop: threading.Event,
                   stats_line: Any) -> Iterator[list[dict]]:
    """Stream the reply to ``msgs`` from the server (top-k and repetition penalty are not part of the OpenAI API
    and are not sent). ``stats_line(new, prompt, seconds, ttft, stopped, note)`` formats the stats line."""
    from api.remote import RemoteLLM, RemoteStats

    shown = msgs + [{"role": "assistant", "content": ""}]
    prompt = ([{"role": "system", "content": system.strip()}] if (system or "").strip() else []) + msgs
    st = RemoteStats()
    try:
        llm = RemoteLLM(remote["url"], remote["model"], remote.get("key") or None)
        seed_ = None if seed is None or int(seed) < 0 else int(seed)
        for piece in llm.stream(prompt, int(max_new_tokens), stop, stats=st, temperature=float(temperature),
                                top_p=float(top_p), seed=seed_):
            shown[-1]["content"] += piece
            yield [dict(m) for m in shown]
    except ValueError as e:
        shown[-1]["content"] += f"\n\n⚠️ {readable_error(e)}"
        yield [dict(m) for m in shown]
        return
    reply = shown[-1]["content"] or "*(no text generated)*"
    shown[-1]["content"] = reply + "\n\n" + stats_line(st.new_tokens or len(st.pieces), st.prompt_tokens, st.total_s,
                                                       st.ttft_s if st.pieces else None, stop.is_set(),
                                                       f" · {llm.name}")
    yield [dict(m) for m in shown]
