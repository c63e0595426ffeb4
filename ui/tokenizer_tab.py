"""Tokenizer tab: text in, tokens out as coloured pieces with their ids and counts; two tokenizers side by side;
and the tokenizer zoo: char, BPE, WordPiece, Unigram (and tiktoken's when cached) trained and compared on your text,
with the bits-per-byte experiment (each handler calls one ``llm_core.tokenizer`` function and formats the result)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
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
_bpb_stop = threading.Event()


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
        from llm_core.tokenizer import shakespeare_bpe

        return shakespeare_bpe(1024)
    kind, _, ref = key.partition(":")
    if kind == CKPT and Path(ref, "tokenizer_scratch.json").is_file():
        from llm_core.tokenizer import Tokenizer

        registry.entry(key)  # on a shared deployment only one's own checkpoints (ValueError otherwise)
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


def _zoo_source(text: str, file: Any) -> str | bytes:
    """The uploaded file's bytes (decoded in llm_core, as the RAG loaders do) or the typed text."""
    path = getattr(file, "name", file)
    return Path(path).read_bytes() if path else (text or "")


def format_zoo(result: Any) -> str:
    """The comparison as Markdown: the table, then how each tokenizer splits the sample sentence."""
    from llm_core.tokenizer import format_table

    lines = [f"**{result.text_bytes:,} bytes of text, vocabulary size {result.vocab_size:,}.** Bytes per token: "
             "higher means shorter sequences for the model.", "", format_table(result), "",
             f"**How each splits** “{result.sample}”:", ""]
    for r in result.rows:
        if not r.error:
            lines.append(f"- **{r.name}** ({len(r.sample_pieces)}): " +
                         " · ".join(f"`{p.replace(' ', '␣')}`" for p in r.sample_pieces))
    for w in result.warnings:
        lines.append(f"\n⚠️ {w}")
    return "\n".join(lines)


def compare_view(text: str, file: Any, vocab_size: float) -> str:
    """Train and compare the tokenizer zoo on the text (or uploaded file)."""
    from llm_core.tokenizer import compare_tokenizers

    source = _zoo_source(text, file)
    if not source.strip():
        return "Type or upload some text to train the tokenizers on."
    try:
        return format_zoo(compare_tokenizers(source, int(vocab_size)))
    except (OSError, ValueError) as e:
        return f"⚠️ {readable_error(e)}"


def format_bpb(rows: list[Any]) -> str:
    lines = ["| tokenizer | vocab | steps | held-out tokens | loss / token | **bits per byte** |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r.bits_per_byte):
        lines.append(f"| {r.name} | {r.vocab_size:,} | {r.steps} | {r.val_tokens:,} | {r.nll_per_token:.3f} | "
                     f"**{r.bits_per_byte:.3f}** |")
    return "\n".join(lines) + ("\n\nLoss per token is not comparable across vocabularies; bits per byte is "
                                "(lower is better).")


def bpb_view(text: str, file: Any, vocab_size: float, seconds: float, jobs: Any = None) -> Iterator[str]:
    """The bits-per-byte experiment, streaming its progress; the Stop button ends it early. It trains models, so
    it waits its turn: while a JobManager job (pretraining, fine-tuning) runs it does not start."""
    source = _zoo_source(text, file)
    if not source.strip():
        yield "Type or upload some text to train on."
        return
    busy = jobs.busy_message() if jobs is not None else None
    if busy:
        yield f"⚠️ {busy}"
        return
    from llm_core.tokenizer.bpb import bpb_experiment  # torch and the trainer: only when it runs
    _bpb_stop.clear()
    messages: queue.Queue[str | None] = queue.Queue()
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["rows"] = bpb_experiment(source, int(vocab_size), float(seconds), progress=messages.put,
                                         stop_event=_bpb_stop)
        except Exception as e:  # shown in the panel
            out["error"] = e
        finally:
            messages.put(None)

    threading.Thread(target=run, daemon=True, name="bpb-experiment").start()
    log: list[str] = []
    while (m := messages.get()) is not None:
        log.append(m)
        yield "⏳ " + "\n\n".join(log[-4:])
    if "error" in out:
        yield f"⚠️ {readable_error(out['error'])}"
    else:
        yield format_bpb(out.get("rows", [])) + ("\n\n(stopped early)" if _bpb_stop.is_set() else "")


def create_zoo_panel(jobs: Any = None) -> None:
    with gr.Accordion("🦁 Tokenizer zoo: train char, BPE, WordPiece and Unigram on your text and compare", open=False):
        zoo_text = gr.Textbox(label="Training text (or upload a file below)", lines=4, elem_id="zoo-text")
        zoo_file = gr.File(label="Text file", file_types=[".txt", ".md"], type="filepath")
        with gr.Row():
            vocab = gr.Number(500, label="Vocabulary size", precision=0, minimum=64, maximum=50_000)
            go = gr.Button("Train and compare", variant="primary", elem_id="zoo-go")
        table = gr.Markdown(elem_id="zoo-table")
        go.click(compare_view, [zoo_text, zoo_file, vocab], table)
        gr.Markdown("**The experiment:** the same tiny GPT trained for the same time with each tokenizer, scored "
                    "in bits per byte on the held-out tenth of the text (fair across vocabularies).")
        with gr.Row():
            seconds = gr.Number(20, label="Seconds of training per tokenizer", minimum=1, maximum=600)
            run = gr.Button("Run the experiment", elem_id="zoo-bpb")
            stop = gr.Button("Stop", variant="stop")
        bpb = gr.Markdown(elem_id="zoo-bpb-out")

        def _bpb(t: str, f: Any, v: float, sec: float) -> Iterator[str]:
            yield from bpb_view(t, f, v, sec, jobs)

        run.click(_bpb, [zoo_text, zoo_file, vocab, seconds], bpb)
        stop.click(lambda: _bpb_stop.set(), None, None, queue=False)


def create_tokenizer_tab(registry: ModelRegistry, jobs: Any = None) -> dict[str, Any]:
    """``jobs``: the JobManager whose running training the bits-per-byte experiment waits for (default: JOBS)."""
    from ui.jobs import JOBS

    jobs = JOBS if jobs is None else jobs
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
    create_zoo_panel(jobs)
    return dict(left=left, right=right)
