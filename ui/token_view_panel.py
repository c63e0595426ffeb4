"""The Chat tab's token view: what the model considered at each token of the last reply.

Every token is coloured by the model's probability for it; hovering a token shows its top-10 alternatives as bars.
Picking a token (click it, or the "Token" slider) opens it in the explorer, where temperature / top-k / top-p redraw
the same bars: the model's own probability beside what sampling with those knobs would draw from. The numbers come
from ``llm_core.labs.token_view`` (recorded while the reply was generated; the knobs reuse ``llm_core.generation.sampling``); this
module only formats them. All token text is HTML-escaped.
"""

from __future__ import annotations

import html
import math
from typing import Any

import gradio as gr

from ui.errors import readable_error
from ui.models import ModelRegistry

BARS = 10  # alternatives shown per token
CSS = """<style>
.tv-text{line-height:1.9;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:0.9em}
.tv-tok{position:relative;border-radius:3px;padding:1px 0;cursor:pointer;color:#111}
.tv-tok .tv-pop{display:none;position:absolute;left:0;top:1.6em;z-index:20;min-width:260px;background:#fff;
 border:1px solid #bbb;border-radius:6px;padding:6px;box-shadow:0 2px 8px rgba(0,0,0,.2);white-space:normal}
.tv-tok:hover .tv-pop{display:block}
.tv-row{display:flex;align-items:center;gap:6px;font-size:0.85em;margin:1px 0}
.tv-lab{width:7em;overflow:hidden;text-overflow:ellipsis;white-space:pre}
.tv-bar{flex:1;position:relative;height:0.9em;background:#eee;border-radius:2px}
.tv-bar i{position:absolute;left:0;top:0;bottom:0;border-radius:2px}
.tv-raw{background:#9aa5b1}.tv-new{background:#6366f1;opacity:.85;top:50%!important}
.tv-num{width:9.5em;white-space:nowrap;text-align:right;font-variant-numeric:tabular-nums}
.tv-chosen{font-weight:bold}
</style>"""
# a click on a token picks it in the "Token" slider (the slider's own box fires Gradio's change)
PICK_JS = """
element.addEventListener('click', (e) => {
  const t = e.target.closest('[data-i]');
  const box = document.querySelector('#tv-token input[type=number]');
  if (!t || !box) return;
  box.value = String(Number(t.dataset.i) + 1);
  box.dispatchEvent(new Event('input', {bubbles: true}));
  box.dispatchEvent(new Event('change', {bubbles: true}));
});
"""


def esc(text: str) -> str:
    """Token text for HTML: escaped (quotes too), braces defused for templates, newlines shown as ↵."""
    out = html.escape(text, quote=True).replace("{", "&#123;").replace("}", "&#125;").replace("$", "&#36;")
    return out.replace("\n", "↵\n")


def colour(p: float) -> str:
    """Red (unlikely) -> yellow -> green (likely), on a log scale so 1% and 10% look different."""
    x = min(1.0, max(0.0, 1.0 + math.log10(max(p, 1e-4)) / 4))  # 1e-4 -> 0, 1 -> 1
    return f"hsl({int(120 * x)},75%,80%)"


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%" if p >= 0.001 or p == 0 else f"{100 * p:.2g}%"


def _row(label: str, raw: float, new: float | None = None, chosen: bool = False) -> str:
    bars = f'<i class="tv-raw" style="width:{100 * raw:.1f}%"></i>'
    nums = _pct(raw)
    if new is not None:
        bars += f'<i class="tv-new" style="width:{100 * new:.1f}%"></i>'
        nums += f" → {_pct(new)}"
    cls = "tv-row tv-chosen" if chosen else "tv-row"
    return (f'<div class="{cls}"><span class="tv-lab">{esc(repr(label)[1:-1])}</span>'
            f'<span class="tv-bar">{bars}</span><span class="tv-num">{nums}</span></div>')


def tokens_html(view: Any) -> str:
    """The reply token by token, coloured by probability; hovering one shows its top alternatives as bars."""
    if view is None or not view.steps:
        return "<p><i>Send a message: its reply shows here token by token.</i></p>"
    out = [CSS, '<div class="tv-text">']
    for i, s in enumerate(view.steps):
        rows = "".join(_row(t, math.exp(lp), chosen=tid == s.token_id)
                       for tid, t, lp in zip(s.top_ids[:BARS], s.top_texts()[:BARS], s.top_logprobs[:BARS]))
        head = (f"<div><b>token {i + 1}</b>: model {_pct(s.prob)}, sampled from {_pct(s.sampled_prob)}</div>")
        out.append(f'<span class="tv-tok" data-i="{i}" style="background:{colour(s.prob)}">{esc(s.text)}'
                   f'<span class="tv-pop">{head}{rows}</span></span>')
    out.append("</div>")
    mean = sum(s.logprob for s in view.steps) / len(view.steps)
    out.append(f"<p><sub>{len(view.steps)} tokens · mean log-probability {mean:.2f} (perplexity "
               f"{math.exp(-mean):.2f}) · colour: the model's probability for the token, red = unlikely, "
               "green = likely. Hover a token for its alternatives; click it to try the knobs on it.</sub></p>")
    return "".join(out)


def bars_html(view: Any, i: int, shaped: Any) -> str:
    """The explorer: token ``i``'s top alternatives, the model's own probability (grey) and the knobs' (blue)."""
    s = view.steps[i]
    texts = dict(zip(s.top_ids, s.top_texts()))
    rows = "".join(_row(texts.get(t, f"#{t}"), r, n, chosen=t == s.token_id)
                   for t, r, n in zip(shaped.ids, shaped.raw_probs, shaped.probs))
    words = (f"Top-k keeps {shaped.kept_after_top_k:,} of {shaped.vocab:,} tokens; top-p then keeps "
             f"{shaped.kept:,}, which hold {_pct(shaped.kept_raw_mass)} of the model's probability.")
    return (f"{CSS}<div><b>Token {i + 1}: {esc(repr(s.text))}</b> · generated at temperature {view.temperature:g}, "
            f"top-k {view.top_k}, top-p {view.top_p:g}</div>{rows}<p><sub>Grey: the model's own probability. "
            f"Blue: what sampling with these knobs draws from. {words}</sub></p>")


def create_token_view_panel() -> dict[str, Any]:
    """The panel's components (inside an accordion); wire them with :func:`wire_token_view_panel`."""
    c: dict[str, Any] = {}
    with gr.Accordion("🔍 What the model considered (token view)", open=False, elem_id="token-view"):
        c["tokens"] = gr.HTML(tokens_html(None), elem_id="tv-tokens", js_on_load=PICK_JS)
        c["token"] = gr.Slider(1, 2, value=1, step=1, label="Token", elem_id="tv-token",
                               info="Pick a token (or click it above) to see what the knobs do to it")
        with gr.Row():
            c["temperature"] = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature", elem_id="tv-temp")
            c["top_k"] = gr.Slider(0, 200, value=0, step=1, label="Top-k", info="0 = off", elem_id="tv-top-k")
            c["top_p"] = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p", elem_id="tv-top-p")
        c["bars"] = gr.HTML("", elem_id="tv-bars")
    c["view"] = gr.State(None)  # {"view": TokenView, "model": key, "adapter": bool} of the last reply
    c["logits"] = gr.State(None)  # the picked token's full next-token logits, for the knobs
    return c


def show_view(state: dict | None) -> list[Any]:
    """After a reply: its tokens, the slider over them, and the knobs at the settings it was generated with."""
    view = (state or {}).get("view")
    n = len(view.steps) if view is not None else 0
    knobs = ([gr.update(value=view.temperature), gr.update(value=min(view.top_k, 200)), gr.update(value=view.top_p)]
             if view is not None else [gr.skip()] * 3)
    return [tokens_html(view), gr.update(maximum=max(n, 2), value=1, interactive=n > 0), *knobs, None, ""]


def pick_token(state: dict | None, i: float, temperature: float, top_k: float, top_p: float,
               registry: ModelRegistry) -> tuple[Any, str]:
    """A token picked: its full logits (one forward pass over what the model had seen) and its bars."""
    from llm_core.labs.token_view import token_logits

    view = (state or {}).get("view")
    if view is None or not view.steps:
        return None, ""
    step = min(max(int(i or 1), 1), len(view.steps)) - 1
    try:
        lm = registry.get(state.get("model"))
        with lm.generating(state.get("adapter", True)):
            logits = token_logits(lm.model, view, step)
    except Exception as e:  # noqa: BLE001 - a model deleted since the reply: say so
        return None, f"<p>⚠️ {esc(readable_error(e))}</p>"
    return logits, reshape_bars(state, i, logits, temperature, top_k, top_p)


def reshape_bars(state: dict | None, i: float, logits: Any, temperature: float, top_k: float,
                 top_p: float) -> str:
    """The knobs moved: the same bars redrawn from the stored logits (no model call)."""
    from llm_core.labs.token_view import reshape

    view = (state or {}).get("view")
    if view is None or logits is None:
        return ""
    step = min(max(int(i or 1), 1), len(view.steps)) - 1
    try:
        shaped = reshape(logits, float(temperature), int(top_k), float(top_p), view.prev_ids(step),
                         view.repetition_penalty, top_n=BARS)
    except ValueError as e:
        return f"<p>⚠️ {esc(readable_error(e))}</p>"
    return bars_html(view, step, shaped)


def wire_token_view_panel(c: dict[str, Any], registry: ModelRegistry) -> dict[str, Any]:
    """Wire the explorer; returns the arguments of the event that shows a new reply's view (chain it after the
    reply with ``.then(**...)``)."""
    knobs = [c["temperature"], c["top_k"], c["top_p"]]
    pick = dict(fn=lambda s, i, t, k, p: pick_token(s, i, t, k, p, registry),
                inputs=[c["view"], c["token"], *knobs], outputs=[c["logits"], c["bars"]], show_progress="minimal")
    c["token"].input(**pick)  # a person's pick only: a new reply resets the slider without a forward pass
    redraw = dict(fn=reshape_bars, inputs=[c["view"], c["token"], c["logits"], *knobs], outputs=c["bars"],
                  queue=False, show_progress="hidden")
    for k in knobs:
        k.change(**redraw)
    return dict(fn=show_view, inputs=c["view"],
                outputs=[c["tokens"], c["token"], *knobs, c["logits"], c["bars"]], queue=False,
                show_progress="hidden")
