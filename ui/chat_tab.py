"""Chat tab: streamed replies with stop, regenerate, undo, clear, a system prompt, sampling controls and a model
picker. Each reply ends with a small stats line (tokens, tokens/s). Generation itself is ``llm_core``.

The settings start at the selected model's own defaults (``ui.chat_settings``); chats and settings are kept in
the browser (``ui.chat_store``), so a reload keeps them and "Earlier chats" reopens an older one. A problem with
the input (an empty message, a seed out of range) shows as a warning and leaves the chat as it was.

Each reply goes through ``llm_core.generation.chat.ChatSession`` (the CLI's prompt building and context budget), which records
its token view for the "What the model considered" panel (``ui.token_view_panel``)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from ui.chat_settings import (
    SAMPLING_NAMES,
    SETTING_NAMES,
    check_sampling,
    model_defaults,
    restore_page,
    sampling_config,
    settings_updates,
    stored_settings,
)
from ui.chat_store import chat_choices, find_chat, new_chat_id, open_chat, parse_store, save_chat
from ui.errors import readable_error, warn
from ui.models import ModelRegistry
from ui.remote_panel import create_remote_panel, remote_on, respond_remote, wire_remote_panel
from ui.token_view_panel import create_token_view_panel, wire_token_view_panel

STATS_RE = re.compile(r"\n\n<sub>⚡[^\n]*</sub>\s*$")

# one stop flag per browser session (gr.State cannot hold an Event: it is deep-copied per session)
_STOP: dict[str, threading.Event] = {}


def _stop_event(request: gr.Request | None) -> threading.Event:
    key = getattr(request, "session_hash", None) or "local"
    return _STOP.setdefault(key, threading.Event())


def raw_text(msg: dict) -> str:
    """Text of a chat message in any of Gradio's shapes (str, or a list of content parts), stats line kept."""
    content = msg.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    elif isinstance(content, dict):
        text = content.get("text", "")
    else:
        text = "" if content is None else str(content)
    return text


def message_text(msg: dict) -> str:
    """Plain text of a chat message without our stats line (what the model sees next turn)."""
    return STATS_RE.sub("", raw_text(msg))


def shown_messages(history: list[dict] | None) -> list[dict]:
    """Chatbot value -> ``[{"role", "content": str}]`` as shown (stats lines kept), for the browser's copy."""
    return [{"role": m["role"], "content": raw_text(m)} for m in (history or [])
            if isinstance(m, dict) and m.get("role") in ("user", "assistant")]


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


def chat_session(lm: Any, msgs: list[dict], system: str | None, cfg: Any) -> Any:
    """An ``llm_core.generation.chat.ChatSession`` holding ``msgs`` but the last (the question it answers next): the same
    prompt building and context budget as the CLI. It records the reply's token view."""
    from llm_core.generation.chat import ChatSession

    # a model without a chat template (e.g. pretrained here) continues text: a system prompt only adds noise
    sys_prompt = (system or "").strip() or None if getattr(lm.tokenizer, "chat_template", None) else None
    session = ChatSession(lm.model, lm.tokenizer, system=sys_prompt, config=cfg, record_tokens=True)
    session.messages = [dict(m) for m in msgs[:-1]]
    return session


def respond(history: list[dict] | None, model_key: str | None, system: str, temperature: float, top_k: int,
            top_p: float, repetition_penalty: float, max_new_tokens: int, seed: float | int | None,
            registry: ModelRegistry, request: gr.Request | None = None,
            use_adapter: bool = True, remote: dict | None = None,
            on_view: Callable[[Any], None] | None = None) -> Iterator[list[dict]]:
    """Stream the assistant's answer to the last user message of ``history`` (from ``remote``, an
    OpenAI-compatible server, when that is switched on). ``on_view`` receives the reply's token view
    (``llm_core.labs.token_view.TokenView``) once it is done (not for remote replies)."""
    msgs = clean_history(history)
    if not msgs or msgs[-1]["role"] != "user":
        yield history or []
        return
    stop = _stop_event(request)
    stop.clear()
    if remote_on(remote):
        yield from respond_remote(msgs, remote, system, temperature, top_p, max_new_tokens, seed, stop,
                                  lambda n, p, sec, t, stopped, note: format_stats(n, p, sec, t, stopped, note))
        return
    shown = msgs + [{"role": "assistant", "content": ""}]
    if not registry.is_loaded(model_key):
        shown[-1]["content"] = "⏳ *loading the model (first use)…*"
        yield [dict(m) for m in shown]  # a copy per frame: Gradio may diff them
    try:
        lm = registry.get(model_key)
    except Exception as e:
        shown[-1]["content"] = f"⚠️ Could not load this model: {readable_error(e)}"
        if (model_key or registry.default_key) == registry.default_key:
            shown[-1]["content"] += "\n\n" + registry.status_markdown(model_key)
        yield [dict(m) for m in shown]  # a copy per frame: Gradio may diff them
        return
    try:
        cfg = sampling_config(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed)  # validated
        session = chat_session(lm, msgs, system, cfg)
        stream = session.stream(msgs[-1]["content"], stop_event=stop)  # builds the prompt: may refuse it
    except ValueError as e:
        shown[-1]["content"] = f"⚠️ {readable_error(e)}"
        yield [dict(m) for m in shown]  # a copy per frame: Gradio may diff them
        return
    with lm.generating(use_adapter):
        shown[-1]["content"] = ""
        for piece in stream:
            shown[-1]["content"] += piece
            yield [dict(m) for m in shown]  # a copy per frame: Gradio may diff them
    reply = shown[-1]["content"]
    st = session.last_stats
    if on_view is not None and session.last_view is not None:
        on_view(session.last_view)
    note = "" if lm.adapter is None or use_adapter else " · adapter off"
    shown[-1]["content"] = (reply or "*(no text generated)*") + "\n\n" + format_stats(
        st.new_tokens, st.prompt_tokens, st.total_s, st.ttft_s if st.new_tokens else None,
        stopped=st.stop_reason == "stopped" or stop.is_set(), note=note, context_full=st.stop_reason == "context")
    yield [dict(m) for m in shown]  # a copy per frame: Gradio may diff them


def add_user_message(message: str, history: list[dict] | None,
                     *sampling: Any) -> tuple[Any, Any, bool]:
    """Accept the typed message (box emptied, message added, True), or warn why not and leave the box and the
    chat exactly as they are (False, so the reply step does nothing). ``sampling`` are the sampling controls
    (temperature, top-k, top-p, repetition penalty, max new tokens, seed), checked before anything changes."""
    text = (message or "").strip()
    reason = "Type a message first." if not text else check_sampling(*sampling) if sampling else None
    if reason:
        warn(reason)
        return gr.skip(), gr.skip(), False
    return "", clean_history(history) + [{"role": "user", "content": text}], True


def drop_last_reply(history: list[dict] | None, *sampling: Any) -> tuple[Any, bool]:
    """For *regenerate*: remove the last assistant reply so the last user message is answered again."""
    msgs = clean_history(history)
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    reason = "Nothing to regenerate yet." if not msgs else check_sampling(*sampling) if sampling else None
    if reason:
        warn(reason)
        return gr.skip(), False
    return msgs, True


def undo_last_turn(history: list[dict] | None) -> tuple[list[dict], str]:
    """Remove the last exchange and give the user's message back to the text box for editing."""
    msgs = clean_history(history)
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    text = msgs.pop()["content"] if msgs and msgs[-1]["role"] == "user" else ""
    return msgs, text


def request_stop(request: gr.Request | None = None) -> None:
    _stop_event(request).set()


def _initial_sampling(registry: ModelRegistry) -> Any:
    """What the sliders show before the default model has loaded: its shipped settings when they are known
    without loading it (the bundled SmolLM2), else ``GenerationConfig()``; the loaded model's own replace them."""
    from llm_core.generation.generation_config import GenerationConfig, known_generation_config

    return known_generation_config(registry.default_model) or GenerationConfig()


def _layout(registry: ModelRegistry, secret: str | None) -> dict[str, Any]:
    """The Chat tab's components by name (settings start at our generic defaults until the model has loaded)."""
    c: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=4):
            c["status"] = gr.Markdown(registry.status_markdown(), elem_id="chat-status")
            with gr.Row():
                c["chat_list"] = gr.Dropdown([], value=None, label="Earlier chats (kept in this browser)",
                                             scale=5, elem_id="chat-history")
                c["new_chat"] = gr.Button("➕ New chat", scale=1, size="sm", elem_id="chat-new")
            c["chatbot"] = gr.Chatbot(label="Chat", height=520, elem_id="chatbot", buttons=["copy"],
                                      placeholder="**Say hello** to a GPT that was built from scratch in PyTorch.")
            with gr.Row():
                c["msg"] = gr.Textbox(placeholder="Message… (Enter to send)", show_label=False, scale=6,
                                      elem_id="chat-input", autofocus=True)
                c["send"] = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
                c["stop"] = gr.Button("Stop", variant="stop", scale=1, elem_id="chat-stop")
            with gr.Row():
                c["regen"] = gr.Button("🔄 Regenerate", size="sm")
                c["undo"] = gr.Button("↩️ Undo", size="sm")
                c["clear"] = gr.Button("🗑️ Clear", size="sm", elem_id="chat-clear")
            c["token_view"] = create_token_view_panel()
        with gr.Column(scale=2, min_width=280):
            c["model"] = gr.Dropdown(registry.choices(), value=registry.default_key, label="Model",
                                     elem_id="chat-model",
                                     info="The default model, your pretrained checkpoints and LoRA adapters")
            c["refresh"] = gr.Button("↻ Refresh the model list", size="sm", variant="secondary")
            c["use_adapter"] = gr.Checkbox(True, label="LoRA adapter on (untick to compare with the base model)",
                                           visible=False, elem_id="chat-adapter-on")
            c["system"] = gr.Textbox("", label="System prompt", lines=3, elem_id="chat-system",
                                     placeholder="(empty: the model's own default system prompt)",
                                     info="Starts as the model's own default. Empty = the model's own default, "
                                          "not 'no system prompt'. Models without a chat template (pretrained "
                                          "here) continue text and ignore it.")
            init = _initial_sampling(registry)
            with gr.Accordion("Sampling", open=True):
                c["temperature"] = gr.Slider(0.0, 2.0, value=init.temperature, step=0.05, label="Temperature",
                                             elem_id="chat-temperature",
                                             info="0 = greedy (always the most likely token)")
                c["top_k"] = gr.Slider(0, 200, value=min(init.top_k, 200), step=1, label="Top-k", info="0 = off",
                                       elem_id="chat-top-k")
                c["top_p"] = gr.Slider(0.05, 1.0, value=init.top_p, step=0.05, label="Top-p (nucleus)",
                                       elem_id="chat-top-p")
                c["repetition_penalty"] = gr.Slider(1.0, 2.0, value=init.repetition_penalty, step=0.05,
                                                    label="Repetition penalty",
                                                    elem_id="chat-rep")
                c["max_new_tokens"] = gr.Slider(8, 1024, value=256, step=8, label="Max new tokens",
                                                elem_id="chat-max-new")
                c["seed"] = gr.Number(-1, label="Seed", precision=0, elem_id="chat-seed",
                                      info="-1 = random; 0 to 2^63 - 1 repeats the same reply")
            c["reset"] = gr.Button("↺ Reset to the model's defaults", size="sm", elem_id="chat-reset")
            c["remote"] = create_remote_panel(secret)
    c["go"] = gr.State(False)  # did the last send/regenerate pass its checks (else the reply step does nothing)
    c["shown_for"] = gr.State(None)  # the model whose defaults/settings the controls show (None: not yet)
    c["chats_store"] = gr.BrowserState(None, storage_key="studio-chats", secret=secret)
    c["settings_store"] = gr.BrowserState(None, storage_key="studio-chat-settings", secret=secret)
    c["timer"] = gr.Timer(2.0)  # until the model is ready (or failed): then it switches itself off
    return c


def _persist(history: list[dict] | None, store: Any, model_key: str | None,
             registry: ModelRegistry) -> tuple[Any, Any, str]:
    """After a reply or an edit: the chat into the browser's copy, the chat list and the status line updated."""
    store = save_chat(store, shown_messages(history))
    current = store["current"] if find_chat(store, store["current"]) else None
    return store, gr.update(choices=chat_choices(store), value=current), registry.status_markdown(model_key)


def _apply_defaults(key: str | None, registry: ModelRegistry) -> list[Any]:
    """The selected model's own defaults into the controls (a model switch or "Reset"); loads the model."""
    values = model_defaults(key, registry)
    return [registry.status_markdown(key), *settings_updates(values or {}), key if values else gr.skip()]


def _status_tick(key: str | None, shown_for: str | None, registry: ModelRegistry) -> list[Any]:
    """Every 2 s until settled: the status line, and the model's defaults once it has loaded (if not shown yet)."""
    key = key or registry.default_key
    failed = key == registry.default_key and registry.default_error is not None
    values = model_defaults(key, registry) if shown_for is None and registry.is_loaded(key) else None
    shown = key if values else shown_for
    loading = key == registry.default_key and registry.default_loading
    done = failed or (shown is not None and not loading)
    return [registry.status_markdown(key), gr.update(active=not done), *settings_updates(values or {}),
            shown if values else gr.skip()]


def _refresh_models(current: str | None, registry: ModelRegistry) -> Any:
    keys = [k for _, k in registry.choices()]
    return gr.update(choices=registry.choices(), value=current if current in keys else registry.default_key)


def _wire_chat(c: dict[str, Any], registry: ModelRegistry) -> None:
    """Send / regenerate / undo / clear / stop, and keeping each chat in the browser afterwards."""
    chatbot, store = c["chatbot"], c["chats_store"]
    sampling = [c[n] for n in SAMPLING_NAMES]

    tv = c["token_view"]

    def _respond(go, history, model_key, system, temperature, top_k, top_p, rep, max_new, seed, adapter_on, remote,
                 request: gr.Request):
        if not go:  # the message or a setting was refused: the warning is shown, the chat stays as it was
            yield gr.skip(), gr.skip()
            return
        views: list = []
        for frame in respond(history, model_key, system, temperature, top_k, top_p, rep, max_new, seed,
                             registry=registry, request=request, use_adapter=adapter_on, remote=remote,
                             on_view=views.append):
            yield frame, gr.skip()
        # the token view of this reply, with what the explorer needs to reload its logits (none from a remote)
        yield gr.skip(), {"view": views[-1], "model": model_key, "adapter": adapter_on} if views else None

    reply = dict(fn=_respond, inputs=[c["go"], chatbot, *[c[n] for n in SETTING_NAMES], c["remote"]["state"]],
                 outputs=[chatbot, tv["view"]],
                 concurrency_limit=4, concurrency_id="chat-generate")
    show_view = wire_token_view_panel(tv, registry)
    keep = dict(fn=lambda h, s, k: _persist(h, s, k, registry), inputs=[chatbot, store, c["model"]],
                outputs=[store, c["chat_list"], c["status"]], queue=False, show_progress="hidden")
    # queued (warnings reach the page only through the queue) but never waiting behind a generation
    checked = dict(concurrency_limit=None, show_progress="hidden")
    accept = dict(fn=add_user_message, inputs=[c["msg"], chatbot, *sampling], outputs=[c["msg"], chatbot, c["go"]],
                  **checked)
    e1 = c["msg"].submit(**accept).then(**reply)
    e2 = c["send"].click(**accept).then(**reply)
    e3 = c["regen"].click(drop_last_reply, [chatbot, *sampling], [chatbot, c["go"]], **checked).then(**reply)
    running = [e1, e2, e3]
    for ev in running:
        ev.then(**keep).then(**show_view)
    c["stop"].click(request_stop, None, None, queue=False)
    c["undo"].click(undo_last_turn, chatbot, [chatbot, c["msg"]], queue=False, cancels=running).then(**keep)
    c["clear"].click(lambda: [], None, chatbot, queue=False, cancels=running).then(**keep)

    def _new_chat(s: Any) -> tuple[Any, list, Any, str]:
        s = parse_store(s)
        s["current"] = new_chat_id()
        return s, [], gr.update(choices=chat_choices(s), value=None), ""

    def _open(chat_id: str | None, s: Any) -> tuple[Any, list]:
        return open_chat(s, chat_id)

    c["new_chat"].click(_new_chat, store, [store, chatbot, c["chat_list"], c["msg"]], queue=False, cancels=running)
    c["chat_list"].input(_open, [c["chat_list"], store], [store, chatbot], queue=False, cancels=running)


def _wire_settings(c: dict[str, Any], registry: ModelRegistry) -> dict[str, Any]:
    """Model switch / reset fill the model's defaults; every change is kept in the browser. Returns the page-load
    event's arguments (restore the browser's chats and settings)."""
    model, settings = c["model"], [c[n] for n in SETTING_NAMES]
    filled = [c["status"], *[c[n] for n in SETTING_NAMES[1:8]], c["shown_for"]]
    model.change(lambda k: gr.update(visible=str(k or "").startswith("lora:")), model, c["use_adapter"],
                 queue=False)
    model.input(lambda k: _apply_defaults(k, registry), model, filled, show_progress="minimal")
    c["reset"].click(lambda k: _apply_defaults(k, registry), model, filled, show_progress="minimal")
    c["refresh"].click(lambda k: _refresh_models(k, registry), model, model, queue=False)
    model.focus(lambda k: _refresh_models(k, registry), model, model, queue=False)
    gr.on([s.change for s in settings], stored_settings, settings, c["settings_store"], queue=False,
          show_progress="hidden")
    # a person's own edit counts as chosen settings: the defaults arriving later must not overwrite it
    gr.on([s.input for s in settings[1:]], lambda k: k or registry.default_key, model, c["shown_for"],
          queue=False, show_progress="hidden")
    c["timer"].tick(lambda k, s: _status_tick(k, s, registry), [model, c["shown_for"]],
                    [c["status"], c["timer"], *filled[1:]], queue=False, show_progress="hidden")
    outputs = [model, c["use_adapter"], c["status"], c["chatbot"], c["chat_list"], c["chats_store"],
               *filled[1:]]
    def _restore(s: Any, h: Any, request: gr.Request) -> list[Any]:
        return restore_page(s, h, registry, request)

    return dict(fn=_restore, inputs=[c["settings_store"], c["chats_store"]],
                outputs=outputs, queue=False)


def create_chat_tab(registry: ModelRegistry, secret: str | None = None) -> dict[str, Any]:
    """Lay out and wire the Chat tab. ``secret`` encrypts the browser's copy of the chats (stable across server
    restarts when given). Returns its components and ``on_load`` (the page-load event's arguments)."""
    c = _layout(registry, secret)
    _wire_chat(c, registry)
    c["on_load"] = _wire_settings(c, registry)
    c["on_load_remote"] = wire_remote_panel(c["remote"])
    return c
