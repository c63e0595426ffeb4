"""Tokenizer tab: text in, tokens out as coloured pieces with their ids and counts; two tokenizers side by side."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gradio as gr

from ui.errors import readable_error
from ui.model_view import visible_piece
from ui.models import BASE, CKPT, LORA, ModelRegistry, adapter_base_model

DEFAULT_TEXT = ("Tokenizers split text into pieces. Unbelievably, \"tokenization\" isn't always intuitive: "
                "3.14159, naïve café, 東京, 🙂 and   runs of spaces.")
CHAR = "char:text"  # a character tokenizer built from the text itself
SHAKESPEARE_BPE = "bpe:shakespeare-1k"
MAX_CHIPS = 2000  # tokens drawn per panel; more makes a page hundreds of thousands of pixels tall
_built: dict[str, Any] = {}
_built_lock = threading.Lock()


def tokenizer_choices(registry: ModelRegistry) -> list[tuple[str, str]]:
    out = []
    for e in registry.entries():
        if e.kind == LORA:
            continue  # an adapter shares its base model's tokenizer
        out.append((e.label.replace(" (default)", " (default model)"), e.key))
    out.append(("🔤 Characters of this text (the classic first step)", CHAR))
    out.append(("📜 BPE with 1,024 tokens trained on Shakespeare", SHAKESPEARE_BPE))
    return out


def load_tokenizer(key: str, text: str, registry: ModelRegistry) -> Any:
    """A tokenizer by picker key; model tokenizers come from the model folder or the loaded model."""
    if key == CHAR:
        from llm_core.tokenizer import CharTokenizer

        return CharTokenizer.train(text or " ")
    if key == SHAKESPEARE_BPE:
        with _built_lock:
            if key not in _built:
                from llm_core.data import shakespeare_text
                from llm_core.tokenizer import BPETokenizer

                _built[key] = BPETokenizer.train(shakespeare_text()[:300_000], 1024)
            return _built[key]
    kind, _, ref = key.partition(":")
    if kind == CKPT and Path(ref, "tokenizer_scratch.json").is_file():
        from llm_core.tokenizer import Tokenizer

        return Tokenizer.load(ref)
    if kind == LORA:
        base = adapter_base_model(Path(ref))
        key = f"{CKPT}:{base}" if base and Path(base).is_dir() else f"{BASE}:{base or registry.default_model}"
    return registry.get(key).tokenizer


def piece_text(tokenizer: Any, i: int) -> str:
    return visible_piece(tokenizer.id_to_piece(i))


def tokenize_view(text: str, key: str, registry: ModelRegistry,
                  max_chips: int = MAX_CHIPS) -> tuple[list[tuple[str, str]], str]:
    """(HighlightedText value: one (piece, id) per token, markdown with the counts).

    A tokenizer that cannot load or cannot encode this text (a character outside a character vocabulary) gets
    the reason in its own panel; the other panel keeps its result. Only the first ``max_chips`` tokens are drawn
    (a long text would draw tens of thousands of chips); the counts are for the whole text."""
    if not text:
        return [], "Type some text."
    try:
        tok = load_tokenizer(key, text, registry)
    except Exception as e:  # shown in this panel only
        return [], f"⚠️ Could not load this tokenizer: {readable_error(e)}"
    try:
        ids = tok.encode(text, allowed_special="all")
    except Exception as e:  # e.g. a character outside a character-level vocabulary
        return [], f"⚠️ This tokenizer cannot encode the text: {readable_error(e)}"
    pieces = [(piece_text(tok, i), str(i)) for i in ids[:max_chips]]
    n_bytes = len(text.encode("utf-8"))
    uniq = len(set(ids))
    md = (f"**{len(ids):,} tokens** for {len(text):,} characters ({n_bytes:,} bytes): "
          f"{len(text) / max(1, len(ids)):.2f} characters per token, {uniq:,} distinct ids, "
          f"vocabulary {tok.vocab_size:,}.")
    if len(ids) > max_chips:
        md += f"\n\nShowing the first {max_chips:,} of {len(ids):,} tokens."
    return pieces, md


def create_tokenizer_tab(registry: ModelRegistry) -> dict[str, Any]:
    text = gr.Textbox(DEFAULT_TEXT, label="Text", lines=3, elem_id="tok-text")
    btn = gr.Button("Tokenize", variant="primary", elem_id="tok-go")
    choices = tokenizer_choices(registry)
    with gr.Row():
        with gr.Column():
            left = gr.Dropdown(choices, value=choices[0][1], label="Tokenizer A")
            left_stats = gr.Markdown()
            left_out = gr.HighlightedText(label="Tokens (id next to each piece)", show_legend=False,
                                          show_inline_category=True, combine_adjacent=False,
                                          elem_id="tok-left")
        with gr.Column():
            right = gr.Dropdown(choices, value=CHAR, label="Tokenizer B")
            right_stats = gr.Markdown()
            right_out = gr.HighlightedText(label="Tokens (id next to each piece)", show_legend=False,
                                           show_inline_category=True, combine_adjacent=False,
                                           elem_id="tok-right")
    gr.Markdown("Spaces belong to the piece that follows them in byte-level BPE (`␣word`); a character that "
                "needs several UTF-8 bytes may be split across tokens, shown as `\\xNN` bytes.")

    def _both(t, a, b):
        la, ma = tokenize_view(t, a, registry)
        lb, mb = tokenize_view(t, b, registry)
        return la, ma, lb, mb

    outs = [left_out, left_stats, right_out, right_stats]
    btn.click(_both, [text, left, right], outs)
    text.submit(_both, [text, left, right], outs)
    left.change(lambda t, k: tokenize_view(t, k, registry), [text, left], [left_out, left_stats])
    right.change(lambda t, k: tokenize_view(t, k, registry), [text, right], [right_out, right_stats])

    def _refresh(a, b):
        ch = tokenizer_choices(registry)
        keys = {k for _, k in ch}
        return (gr.update(choices=ch, value=a if a in keys else ch[0][1]),
                gr.update(choices=ch, value=b if b in keys else CHAR))

    left.focus(_refresh, [left, right], [left, right], queue=False)
    right.focus(_refresh, [left, right], [left, right], queue=False)
    return dict(left=left, right=right)
