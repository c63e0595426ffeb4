"""Tokenizer tab: text in, tokens out as coloured pieces with their ids and counts; two tokenizers side by side;
and the tokenizer zoo: char, BPE, WordPiece, Unigram (and tiktoken's when cached) trained and compared on your text,
with the bits-per-byte experiment (each handler calls one ``llm_core.tokenizer`` function and formats the result).
The zoo's training is a JobManager job (``ui.jobs``): merges done, Stop, its turn in the queue, back after a reload."""

from __future__ import annotations

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


ZOO_KIND = "tokenizer"  # the JobManager kind of the zoo's training
BPB_KIND = "tokenizer-bpb"  # and of the bits-per-byte experiment


def run_zoo(job: Any, source: str | bytes, vocab_size: int) -> None:
    """Runner for the JobManager: the zoo trained and compared, merges done reported into ``job``; the result is
    the comparison's Markdown (what :func:`compare_view` shows)."""
    from llm_core.tokenizer import compare_tokenizers
    from llm_core.tokenizer.compare import TRAINED

    n = len(TRAINED)

    def steps(kind: str, done: int, total: int) -> None:
        unit = "pruning rounds" if kind == "unigram" else "merges"
        job.progress((TRAINED.index(kind) + done / max(1, total)) / n, f"{kind}: {done:,} / {total:,} {unit}")

    def started(message: str) -> None:
        kind = message.split()[-1]
        job.add_log(message)
        if kind in TRAINED:
            job.progress(TRAINED.index(kind) / n, message)

    result = compare_tokenizers(source, vocab_size, progress=started, should_stop=job.stop_event.is_set,
                                steps=steps)
    stopped = job.stop_event.is_set()
    job.result = format_zoo(result) + ("\n\n(stopped early: the vocabularies are smaller than asked)"
                                       if stopped else "")
    return None


def start_zoo(text: str, file: Any, vocab_size: float, jobs: Any) -> str:
    """The zoo's Train button: the text (or file, read now) trained on as a job that waits its turn behind a
    running one; returns the line beside the button, or the reason nothing started."""
    from ui.jobs import JobBusyError

    source = _zoo_source(text, file)
    if not source.strip():
        return "Type or upload some text to train the tokenizers on."
    try:
        vocab = int(vocab_size)
    except (TypeError, ValueError):
        return "⚠️ The vocabulary size must be a whole number."
    title = f"tokenizer zoo: vocabulary {vocab:,} on {len(source):,} characters"
    try:
        job = jobs.start(ZOO_KIND, title, lambda job: run_zoo(job, source, vocab))
    except JobBusyError as e:
        return f"⚠️ {e}"
    return jobs.started_message(job, "⏳ Training char, BPE, WordPiece and Unigram…")


def zoo_panel(jobs: Any, seen: tuple | None, kind: str = "tokenizer") -> tuple[Any, ...]:
    """(status, progress, log, seen, result) of the zoo's job (or the experiment's, ``kind``): the result once
    when the job ends, else unchanged."""
    from ui.job_panel import task_poll

    status, prog, log, snap, seen = task_poll(kind, jobs, seen)
    if snap is None or snap["status"] in ("queued", "starting", "running"):
        return status, prog, log, seen, gr.skip()
    if snap["status"] == "failed":
        return status, prog, log, seen, f"⚠️ {snap.get('error')}"
    if snap["status"] == "cancelled":
        return status, prog, log, seen, "🚫 Cancelled before it started."
    return status, prog, log, seen, snap.get("result") or ""


def format_bpb(rows: list[Any]) -> str:
    lines = ["| tokenizer | vocab | steps | held-out tokens | loss / token | **bits per byte** |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r.bits_per_byte):
        lines.append(f"| {r.name} | {r.vocab_size:,} | {r.steps} | {r.val_tokens:,} | {r.nll_per_token:.3f} | "
                     f"**{r.bits_per_byte:.3f}** |")
    return "\n".join(lines) + ("\n\nLoss per token is not comparable across vocabularies; bits per byte is "
                                "(lower is better).")


def run_bpb(job: Any, source: str, vocab_size: int, seconds: float) -> None:
    """The bits-per-byte experiment as a job: each tokenizer's training shows in the log, the bar follows the
    clock (every tokenizer trains ``seconds``), Stop ends the current training early."""
    import time

    from llm_core.tokenizer.bpb import bpb_experiment  # torch and the trainer: only when it runs
    from llm_core.tokenizer.compare import TRAINED

    t0, total = time.monotonic(), (len(TRAINED) + 1) * seconds  # char + the trained kinds

    def progress(message: str) -> None:
        job.add_log(message)
        job.progress(min(0.99, (time.monotonic() - t0) / total), message)

    rows = bpb_experiment(source, vocab_size, seconds, progress=progress, stop_event=job.stop_event)
    job.result = format_bpb(rows) + ("\n\n(stopped early)" if job.stop_event.is_set() else "")


def start_bpb(text: str, file: Any, vocab_size: float, seconds: float, jobs: Any) -> str:
    """The experiment's Run button: it trains models, so it is a job that waits its turn behind a running one."""
    from ui.errors import finite_number, in_range, whole_number
    from ui.jobs import JobBusyError

    source = _zoo_source(text, file)
    if not source.strip():
        return "Type or upload some text to train on."
    try:
        vocab = int(in_range(whole_number(vocab_size, "The vocabulary size"), "The vocabulary size", 64, 50_000))
        secs = in_range(finite_number(seconds, "Seconds of training per tokenizer"),
                        "Seconds of training per tokenizer", 1, 600)
        job = jobs.start(BPB_KIND, f"bits per byte: vocabulary {vocab:,}, {secs:g} s per tokenizer",
                         lambda job: run_bpb(job, source, vocab, secs))
    except (ValueError, JobBusyError) as e:
        return f"⚠️ {readable_error(e)}"
    return jobs.started_message(job, "⏳ Training the same tiny GPT with each tokenizer…")


def create_zoo_panel(jobs: Any) -> dict[str, Any]:
    from ui.job_panel import create_task_panel, stop_job

    with gr.Accordion("🦁 Tokenizer zoo: train char, BPE, WordPiece and Unigram on your text and compare", open=False):
        zoo_text = gr.Textbox(label="Training text (or upload a file below)", lines=4, elem_id="zoo-text")
        zoo_file = gr.File(label="Text file", file_types=[".txt", ".md"], type="filepath")
        with gr.Row():
            vocab = gr.Number(500, label="Vocabulary size", precision=0, minimum=64, maximum=50_000)
            go = gr.Button("Train and compare", variant="primary", elem_id="zoo-go")
            zoo_stop = gr.Button("Stop", variant="stop", elem_id="zoo-stop")
        zoo_msg = gr.Markdown(elem_id="zoo-msg")
        panel = create_task_panel(ZOO_KIND)
        table = gr.Markdown(elem_id="zoo-table")
        shown = [panel["status"], panel["progress"], panel["log"], panel["seen"], table]
        go.click(lambda t, f, v: start_zoo(t, f, v, jobs), [zoo_text, zoo_file, vocab], zoo_msg)
        zoo_stop.click(lambda: stop_job(ZOO_KIND, jobs, "Stopping after the current merge…"), None, zoo_msg,
                       queue=False)
        panel["timer"].tick(lambda seen: zoo_panel(jobs, seen), panel["seen"], shown, show_progress="hidden",
                            concurrency_limit=None)
        gr.Markdown("**The experiment:** the same tiny GPT trained for the same time with each tokenizer, scored "
                    "in bits per byte on the held-out tenth of the text (fair across vocabularies).")
        with gr.Row():
            seconds = gr.Number(20, label="Seconds of training per tokenizer", minimum=1, maximum=600)
            run = gr.Button("Run the experiment", elem_id="zoo-bpb")
            stop = gr.Button("Stop", variant="stop")
        bpb_panel = create_task_panel(BPB_KIND)
        bpb = gr.Markdown(elem_id="zoo-bpb-out")
        bpb_shown = [bpb_panel["status"], bpb_panel["progress"], bpb_panel["log"], bpb_panel["seen"], bpb]
        run.click(lambda t, f, v, sec: start_bpb(t, f, v, sec, jobs), [zoo_text, zoo_file, vocab, seconds], zoo_msg)
        stop.click(lambda: stop_job(BPB_KIND, jobs, "Stopping the current training…"), None, zoo_msg, queue=False)
        bpb_panel["timer"].tick(lambda seen: zoo_panel(jobs, seen, BPB_KIND), bpb_panel["seen"], bpb_shown,
                                show_progress="hidden", concurrency_limit=None)
    return dict(panel=panel, bpb_panel=bpb_panel,
                on_load=dict(fn=lambda: zoo_panel(jobs, None), inputs=None, outputs=shown))


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
    zoo = create_zoo_panel(jobs)
    return dict(left=left, right=right, zoo=zoo, on_load=zoo["on_load"])
