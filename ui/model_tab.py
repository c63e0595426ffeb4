"""Model tab: what is inside the selected model (architecture, parameters per module) and where its attention
goes for a prompt you type (one head, all heads of a layer, or their average, plus a per-head profile)."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from ui.errors import readable_error, warn
from ui.export_panel import create_export_panel
from ui.model_labs import create_model_labs
from ui.model_view import (
    ATTENTION_HELP,
    HEAD_HEADERS,
    MAX_ATTN_TOKENS,
    PARAM_HEADERS,
    _gpt,
    attention_figure,
    head_profile,
    summary_markdown,
    summary_rows,
    token_labels,
)
from ui.models import ModelRegistry

VIEWS = [("One head", "head"), ("All heads of the layer (grid)", "grid"), ("Average over heads", "mean")]
DEFAULT_PROMPT = "The cat sat on the mat. The cat sat on the"


def describe_model(model_key: str | None, registry: ModelRegistry) -> tuple[Any, Any, Any, Any]:
    """Summary markdown, parameter table rows, and layer/head slider updates for ``model_key``; when the model
    cannot load, the reason in the summary and the rest of the tab as it was."""
    try:
        lm = registry.get(model_key)
    except Exception as e:  # shown in the summary, no error badges over the tab
        return f"⚠️ Could not load this model: {readable_error(e)}", gr.skip(), gr.skip(), gr.skip()
    from llm_core.labs.model_inspect import model_summary

    s = model_summary(lm.model)
    cfg = s.config
    md, rows = summary_markdown(s, lm.entry.label), summary_rows(cfg, s.groups)
    return (md, rows, gr.update(maximum=cfg.n_layer - 1, value=min(cfg.n_layer - 1, cfg.n_layer // 2)),
            gr.update(maximum=cfg.n_head - 1, value=0))


def compute_attention(model_key: str | None, prompt: str, registry: ModelRegistry) -> dict:
    """Attention maps of every layer/head for ``prompt`` (``llm_core.labs.model_inspect.attention_maps``: cut to
    MAX_ATTN_TOKENS tokens), as numpy. A ValueError in words when there is no prompt."""
    from llm_core.labs.model_inspect import attention_maps

    if not (prompt or "").strip():
        raise ValueError("Type a prompt to see where the model attends.")
    lm = registry.get(model_key)
    att = attention_maps(lm.model, lm.tokenizer, prompt, MAX_ATTN_TOKENS)
    note = f"Showing the first {MAX_ATTN_TOKENS} tokens of the prompt." if att.truncated else ""
    return {"maps": att.maps, "labels": token_labels(lm.tokenizer, att.ids), "ids": att.ids, "note": note,
            "key": lm.entry.key}


def render_attention(state: dict | None, layer: float, head: float, view: str) -> tuple[Any, str]:
    if not state:
        return None, ""
    maps: np.ndarray = state["maps"]
    fig = attention_figure(maps, state["labels"], int(layer), int(head), view)
    L, H, T, _ = maps.shape
    caption = f"{T} tokens · {L} layers × {H} heads." + (f" {state['note']}" if state.get("note") else "")
    return fig, caption


def show_attention(key: str | None, text: str, layer: float, head: float, view: str,
                   registry: ModelRegistry) -> tuple[Any, Any, Any, Any]:
    """(state, figure, caption, head profile) for the Show button; a missing prompt or a model that does not
    load is a warning, and the heatmap already shown stays."""
    try:
        st = compute_attention(key, text, registry)
    except Exception as e:
        warn(readable_error(e))
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    fig, cap = render_attention(st, layer, head, view)
    return st, fig, cap, head_profile(st["maps"], st["ids"])


def _refresh(current: str | None, registry: ModelRegistry) -> Any:
    """The model list as the Chat tab has it: default model, checkpoints and adapters made since."""
    keys = [k for _, k in registry.choices()]
    return gr.update(choices=registry.choices(), value=current if current in keys else registry.default_key)


def create_model_tab(registry: ModelRegistry) -> dict[str, Any]:
    with gr.Row():
        model = gr.Dropdown(registry.choices(), value=registry.default_key, label="Model", scale=4,
                            elem_id="model-tab-model",
                            info="The default model, your pretrained checkpoints and LoRA adapters")
        inspect_btn = gr.Button("Inspect", variant="primary", scale=1)
    with gr.Row():
        with gr.Column(scale=2):
            summary = gr.Markdown("Press **Inspect** to load the model and see its architecture.")
        with gr.Column(scale=3):
            params = gr.Dataframe(headers=PARAM_HEADERS, label="Parameters per module (repeated blocks grouped)",
                                  interactive=False, wrap=True, max_height=420)
    gr.Markdown("## Attention heatmap")
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=3)
            view = gr.Radio(VIEWS, value="head", label="View")
            layer = gr.Slider(0, 1, value=0, step=1, label="Layer")
            head = gr.Slider(0, 1, value=0, step=1, label="Head (one-head view)")
            show_btn = gr.Button("Show attention", variant="primary")
            caption = gr.Markdown()
            gr.Markdown(ATTENTION_HELP)
        with gr.Column(scale=3):
            plot = gr.Plot(label="Attention", elem_id="attention-plot")
    profile = gr.Dataframe(headers=HEAD_HEADERS, label="Head profile: where each head attends on this prompt "
                                                       "(averaged over query positions)",
                           interactive=False, max_height=360)
    attn_state = gr.State(None)
    labs = create_model_labs(model, registry)  # Memory and Perplexity panels
    labs.update(create_export_panel(model, registry))  # GGUF + Modelfile for local runtimes

    def _describe(key):
        return describe_model(key, registry)

    def _show(key, text, lyr, hd, vw):
        return show_attention(key, text, lyr, hd, vw, registry)

    inspect_btn.click(_describe, model, [summary, params, layer, head])
    model.change(_describe, model, [summary, params, layer, head])
    show_btn.click(_show, [model, prompt, layer, head, view], [attn_state, plot, caption, profile])
    prompt.submit(_show, [model, prompt, layer, head, view], [attn_state, plot, caption, profile])

    def _first_look(key, text, lyr, hd, vw, st):
        """On opening the tab: describe the model and draw the default prompt's attention once."""
        desc = _describe(key)
        if st is not None:
            return (*desc, gr.skip(), gr.skip(), gr.skip(), gr.skip())
        if not registry.is_loaded(key):  # it did not load: the summary says why
            return (*desc, gr.skip(), gr.skip(), gr.skip(), gr.skip())
        cfg = _gpt(registry.get(key).model).config
        return (*desc, *_show(key, text, min(cfg.n_layer - 1, cfg.n_layer // 2), 0, vw))

    first_look = dict(fn=_first_look, inputs=[model, prompt, layer, head, view, attn_state],
                      outputs=[summary, params, layer, head, attn_state, plot, caption, profile])
    redraw = dict(fn=render_attention, inputs=[attn_state, layer, head, view], outputs=[plot, caption])
    model.focus(lambda k: _refresh(k, registry), model, model, queue=False)
    layer.release(**redraw)
    head.release(**redraw)
    view.change(**redraw)
    return dict(model=model, first_look=first_look, **labs)
