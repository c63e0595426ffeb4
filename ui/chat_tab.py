"""Chat tab: streamed replies with stop, regenerate, undo, clear, a system prompt, sampling controls and a model
picker. Each reply ends with a small stats line (tokens, tokens/s). Generation itself is ``llm_core``."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import gradio as gr

from ui.models import ModelRegistry

DEFAULT_SYSTEM = "You are a helpful, concise assistant."
STATS_RE = re.compile(r"\n\n<sub>⚡[^\n]*</sub>\s*$")

# one stop flag per browser session (gr.State cannot hold an Event: it is deep-copied per session)
_STOP: dict[str, threading.Event] = {}


def _stop_event(request: gr.Request | None) -> threading.Event:
    key = getattr(request, "session_hash", None) or "local"
    return _STOP.setdefault(key, threading.Event())


def message_text(msg: dict) -> str:
    """Plain text of a chat message in any of Gradio's shapes (str, or a list of content parts)."""
    content = msg.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    elif isinstance(content, dict):
        text = content.get("text", "")
    else:
        text = "" if content is None else str(content)
    return STATS_RE.sub("", text)


def clean_history(history: list[dict] | None) -> list[dict]:
    """Chatbot value -> plain ``[{"role", "content": str}]`` without our stats lines."""
    return [{"role": m["role"], "content": message_text(m)} for m in (history or [])
            if m.get("role") in ("user", "assistant")]


def format_stats(n_new: int, n_prompt: int, seconds: float, ttft: float | None, stopped: bool = False,
                 note: str = "", context_full: bool = False) -> str:
    rate = n_new / seconds if seconds > 0 else 0.0
    parts = [f"{n_new} tokens", f"{rate:.1f} tok/s", f"prompt {n_prompt} tokens"]
    if ttft is not None:
        parts.append(f"first token {ttft:.2f} s")
    parts.append(f"{seconds:.1f} s")
    if stopped:
        parts.append("stopped")
    elif context_full:
        parts.append("context full")
    return "<sub>⚡ " + " · ".join(parts) + note + "</sub>"


def sampling_config(temperature: float, top_k: int, top_p: float, repetition_penalty: float,
                    max_new_tokens: int, seed: float | int | None) -> Any:
    from llm_core.generate import GenerationConfig

    seed_v = None if seed is None or int(seed) < 0 else int(seed)
    return GenerationConfig(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_k=int(top_k),
                            top_p=float(top_p), repetition_penalty=float(repetition_penalty), seed=seed_v)


def prompt_for(tok: Any, msgs: list[dict], system: str | None, budget: int) -> list[int]:
    """Prompt ids through llm_core's chat prompt builder (oldest turns dropped to fit ``budget``)."""
    from llm_core.chat import build_chat_prompt

    return build_chat_prompt(tok, msgs, system=system, max_prompt_tokens=budget)


def respond(history: list[dict] | None, model_key: str | None, system: str, temperature: float, top_k: int,
            top_p: float, repetition_penalty: float, max_new_tokens: int, seed: float | int | None,
            registry: ModelRegistry, request: gr.Request | None = None,
            use_adapter: bool = True) -> Iterator[list[dict]]:
    """Stream the assistant's answer to the last user message of ``history``."""
    from llm_core.generate import stream_generate

    msgs = clean_history(history)
    if not msgs or msgs[-1]["role"] != "user":
        yield history or []
        return
    stop = _stop_event(request)
    stop.clear()
    shown = msgs + [{"role": "assistant", "content": ""}]
    if not registry.is_loaded(model_key):
        shown[-1]["content"] = "⏳ *loading the model (first use)…*"
        yield [dict(m) for m in shown]  # a copy per frame: Gradio may diff them
    try:
        lm = registry.get(model_key)
    except Exception as e:
        shown[-1]["content"] = f"⚠️ Could not load this model: {e}"
        if (model_key or registry.default_key) == registry.default_key:
            shown[-1]["content"] += "\n\n" + registry.status_markdown()
        yield [dict(m) for m in shown]  # a copy per frame: Gradio may diff them
        return
    tok = lm.tokenizer
    try:
        cfg = sampling_config(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed)
        cfg.validate()
        block = lm.model.config.block_size
        budget = max(block - cfg.max_new_tokens, block // 2)  # generation stops at the context's end anyway
        # a model without a chat template (e.g. pretrained here) continues text: a system prompt only adds noise
        sys_prompt = (system or "").strip() or None if getattr(tok, "chat_template", None) else None
        prompt_ids = prompt_for(tok, msgs, sys_prompt, budget)
    except ValueError as e:
        shown[-1]["content"] = f"⚠️ {e}"
        yield [dict(m) for m in shown]  # a copy per frame: Gradio may diff them
        return
    with lm.lock if lm.adapter is not None else nullcontext():
        if lm.adapter is not None:
            lm.adapter.set_enabled(bool(use_adapter))
        stream = stream_generate(lm.model, tok, prompt_ids, cfg, stop_event=stop)
        shown[-1]["content"] = ""
        for piece in stream:
            shown[-1]["content"] += piece
            yield [dict(m) for m in shown]  # a copy per frame: Gradio may diff them
    reply = shown[-1]["content"]
    st = stream.stats
    note = "" if lm.adapter is None or use_adapter else " · adapter off"
    shown[-1]["content"] = (reply or "*(no text generated)*") + "\n\n" + format_stats(
        st.new_tokens, st.prompt_tokens, st.total_s, st.ttft_s if st.new_tokens else None,
        stopped=st.stop_reason == "stopped" or stop.is_set(), note=note, context_full=st.stop_reason == "context")
    yield [dict(m) for m in shown]  # a copy per frame: Gradio may diff them


def add_user_message(message: str, history: list[dict] | None) -> tuple[str, list[dict]]:
    message = (message or "").strip()
    history = clean_history(history) if history else []
    if not message:
        raise gr.Error("Type a message first.")
    return "", history + [{"role": "user", "content": message}]


def drop_last_reply(history: list[dict] | None) -> list[dict]:
    """For *regenerate*: remove the last assistant reply so the last user message is answered again."""
    msgs = clean_history(history)
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    if not msgs:
        raise gr.Error("Nothing to regenerate yet.")
    return msgs


def undo_last_turn(history: list[dict] | None) -> tuple[list[dict], str]:
    """Remove the last exchange and give the user's message back to the text box for editing."""
    msgs = clean_history(history)
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    text = msgs.pop()["content"] if msgs and msgs[-1]["role"] == "user" else ""
    return msgs, text


def request_stop(request: gr.Request | None = None) -> None:
    _stop_event(request).set()


def create_chat_tab(registry: ModelRegistry) -> dict[str, Any]:
    """Lay out the Chat tab; returns its components (the app refreshes the model list on load)."""
    with gr.Row():
        with gr.Column(scale=4):
            status = gr.Markdown(registry.status_markdown(), elem_id="chat-status")
            chatbot = gr.Chatbot(label="Chat", height=520, elem_id="chatbot", buttons=["copy"],
                                 placeholder="**Say hello** to a GPT that was built from scratch in PyTorch.")
            with gr.Row():
                msg = gr.Textbox(placeholder="Message… (Enter to send)", show_label=False, scale=6,
                                 elem_id="chat-input", autofocus=True)
                send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
                stop = gr.Button("Stop", variant="stop", scale=1, elem_id="chat-stop")
            with gr.Row():
                regen = gr.Button("🔄 Regenerate", size="sm")
                undo = gr.Button("↩️ Undo", size="sm")
                clear = gr.Button("🗑️ Clear", size="sm")
        with gr.Column(scale=2, min_width=280):
            model = gr.Dropdown(registry.choices(), value=registry.default_key, label="Model", elem_id="chat-model",
                                info="The default model, your pretrained checkpoints and LoRA adapters")
            refresh = gr.Button("↻ Refresh the model list", size="sm", variant="secondary")
            use_adapter = gr.Checkbox(True, label="LoRA adapter on (untick to compare with the base model)",
                                      visible=False, elem_id="chat-adapter-on")
            system = gr.Textbox(DEFAULT_SYSTEM, label="System prompt", lines=3)
            with gr.Accordion("Sampling", open=True):
                temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature",
                                        elem_id="chat-temperature", info="0 = greedy (always the most likely token)")
                top_k = gr.Slider(0, 200, value=0, step=1, label="Top-k", info="0 = off")
                top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p (nucleus)")
                rep = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="Repetition penalty")
                max_new = gr.Slider(8, 1024, value=256, step=8, label="Max new tokens")
                seed = gr.Number(-1, label="Seed", precision=0, info="-1 = random")

    settings = [model, system, temperature, top_k, top_p, rep, max_new, seed, use_adapter]

    def _respond(history, model_key, system, temperature, top_k, top_p, rep, max_new, seed, adapter_on,
                 request: gr.Request):
        yield from respond(history, model_key, system, temperature, top_k, top_p, rep, max_new, seed,
                           registry=registry, request=request, use_adapter=adapter_on)

    reply_kw = dict(inputs=[chatbot, *settings], outputs=chatbot, concurrency_limit=4,
                    concurrency_id="chat-generate")
    e1 = msg.submit(add_user_message, [msg, chatbot], [msg, chatbot], queue=False).then(_respond, **reply_kw)
    e2 = send.click(add_user_message, [msg, chatbot], [msg, chatbot], queue=False).then(_respond, **reply_kw)
    e3 = regen.click(drop_last_reply, chatbot, chatbot, queue=False).then(_respond, **reply_kw)
    stop.click(request_stop, None, None, queue=False)
    undo.click(undo_last_turn, chatbot, [chatbot, msg], queue=False, cancels=[e1, e2, e3])
    clear.click(lambda: [], None, chatbot, queue=False, cancels=[e1, e2, e3])

    def _refresh(current):
        keys = [k for _, k in registry.choices()]
        return gr.update(choices=registry.choices(), value=current if current in keys else registry.default_key)

    model.change(lambda k: gr.update(visible=str(k or "").startswith("lora:")), model, use_adapter, queue=False)
    refresh.click(_refresh, model, model, queue=False)
    model.focus(_refresh, model, model, queue=False)
    return dict(status=status, chatbot=chatbot, model=model, refresh=_refresh, msg=msg)
