"""The Chat tab's settings: checked before a message is sent, filled from the selected model's own defaults, and
kept per browser with the chats (see ``ui.chat_store``).

Small models are sensitive to their settings: SmolLM2-135M answers "What is the capital of France?" with its own
system prompt and sampling settings and garbles it under a generic prompt, so the controls show each model's own
defaults (``llm_core.generation.chat.chat_defaults``) and a person changes them from there.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ui.chat_store import SETTING_KINDS, chat_choices, find_chat, own_store, owner_of, parse_settings
from ui.errors import finite_number, in_words, readable_error, warn, whole_number
from ui.models import ModelRegistry

# order of the setting controls everywhere (inputs, outputs, the stored dict)
SETTING_NAMES = ["model", "system", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "seed",
                 "use_adapter"]
SAMPLING_NAMES = SETTING_NAMES[2:8]
LABELS = {"max_new_tokens": "Max new tokens", "temperature": "Temperature", "top_k": "Top-k",
          "top_p": "Top-p", "repetition_penalty": "Repetition penalty", "seed": "Seed"}


def _in_words(message: str) -> str:
    """The core's validation message with the control's label for its field name (``top_p`` -> ``Top-p``)."""
    return in_words(message, LABELS).replace("(or none for random)", "(or -1 for random)")


def sampling_config(temperature: float, top_k: int, top_p: float, repetition_penalty: float,
                    max_new_tokens: int, seed: float | int | None) -> Any:
    """A validated ``GenerationConfig`` from the controls; a ValueError in words names the bad control.

    The rules are ``GenerationConfig.validate``'s; here only what a box can send is turned into numbers
    (an emptied box sends None, a seed box may send 1e30; -1 or empty = a random seed)."""
    from llm_core.generation.generate import GenerationConfig

    seed_v = None if seed is None or seed == "" else whole_number(seed, "Seed")
    cfg = GenerationConfig(max_new_tokens=whole_number(max_new_tokens, LABELS["max_new_tokens"]),
                           temperature=finite_number(temperature, LABELS["temperature"]),
                           top_k=whole_number(top_k, LABELS["top_k"]), top_p=finite_number(top_p, LABELS["top_p"]),
                           repetition_penalty=finite_number(repetition_penalty, LABELS["repetition_penalty"]),
                           seed=None if seed_v is None or seed_v == -1 else seed_v)
    try:
        cfg.validate()
    except ValueError as e:
        raise ValueError(_in_words(str(e))) from None
    return cfg


def check_sampling(*values: Any) -> str | None:
    """None when the sampling controls are usable, else the reason in words."""
    try:
        sampling_config(*values)
    except ValueError as e:
        return str(e)
    return None


def _clamp(name: str, v: float) -> float:
    kind, lo, hi = SETTING_KINDS[name]
    v = min(max(v, lo), hi)
    return int(round(v)) if kind == "int" else float(v)


def default_values(defaults: Any) -> dict[str, Any]:
    """Control values from a model's ``ChatDefaults`` (clamped into the sliders' ranges)."""
    cfg = defaults.config
    vals = {name: _clamp(name, getattr(cfg, name)) for name in SAMPLING_NAMES if name != "seed"}
    return {"system": defaults.system or "", **vals, "seed": -1 if cfg.seed is None else int(cfg.seed)}


def settings_updates(values: dict[str, Any]) -> list[Any]:
    """One output per control from the system prompt to the seed: the value, or unchanged when absent."""
    return [values[n] if n in values else gr.skip() for n in SETTING_NAMES[1:8]]


def model_defaults(key: str | None, registry: ModelRegistry) -> dict[str, Any] | None:
    """The model's own defaults as control values (loads the model); None, with a warning, when it cannot load."""
    try:
        return default_values(registry.chat_defaults(key))
    except Exception as e:  # a broken or deleted model: say so and leave the controls as they are
        warn(f"Could not load this model, so its default settings are unknown: {readable_error(e)}")
        return None


def stored_settings(*values: Any) -> dict[str, Any]:
    """The controls' values as the dict the browser keeps (only what parses; see ``parse_settings``)."""
    return parse_settings(dict(zip(SETTING_NAMES, values)))


def restore_page(saved_settings: Any, saved_chats: Any, registry: ModelRegistry, request: Any = None) -> list[Any]:
    """On page load: the browser's chats and settings back in place.

    Outputs: model, adapter checkbox, status, chatbot, chat list, chats store, the controls from the system prompt
    to the seed, and which model's settings are shown (None = fill in its defaults once it has loaded).
    """
    store = own_store(saved_chats, owner_of(request))  # with login: only this login's own chats
    registry = registry.for_request(request)  # the models this login or session may pick
    chat = find_chat(store, store["current"])
    saved = parse_settings(saved_settings)
    keys = [k for _, k in registry.choices()]
    model = saved.get("model") if saved.get("model") in keys else registry.default_key
    if saved.get("model") == model and all(n in saved for n in SAMPLING_NAMES):
        values, shown_for = saved, model  # the person's own settings for this model
    elif registry.is_loaded(model):
        values, shown_for = model_defaults(model, registry) or {}, model
    else:
        values, shown_for = {}, None
    chats = gr.update(choices=chat_choices(store), value=chat["id"] if chat else None)
    adapter = gr.update(visible=model.startswith("lora:"), value=saved.get("use_adapter", True))
    return [gr.update(choices=registry.choices(), value=model), adapter,
            registry.status_markdown(model), list(chat["messages"]) if chat else [], chats, store,
            *settings_updates(values), shown_for]
