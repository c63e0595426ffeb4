"""Pretrain tab: train a small GPT from scratch on Shakespeare or your own text, watching the loss fall and the
samples improve. Training is ``llm_core.train`` in a background job; the checkpoint shows up in Chat's list."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import gradio as gr

from ui.errors import finite_number, hide_server_paths, in_range, readable_error, refuse, whole_number
from ui.job_panel import create_job_panel, stop_job
from ui.jobs import Job, JobBusyError, JobManager
from ui.models import ModelRegistry
from ui.settings import data_dir

SHAKESPEARE = "shakespeare"
UPLOAD = "upload"
CORPORA = [("Built-in: Shakespeare's plays (about 5 MB)", SHAKESPEARE), ("My text files", UPLOAD)]
TOKENIZERS = [("Characters (small vocabulary, the classic first step)", "char"),
              ("BPE trained on the corpus (byte-level)", "bpe")]
PRESET_NAMES = ["nano", "micro", "small", "nano-llama"]
# this tab's sane maxima: one job runs at a time on a shared server, and a CPU run of a day is already long
MAX_MINUTES = 24 * 60
MAX_STEPS = 1_000_000
MINUTES_LABEL = "Time budget (minutes)"
STEPS_LABEL = "Step budget"


def preset_choices() -> list[tuple[str, str]]:
    from llm_core.config import PRESETS

    out = []
    for n in PRESET_NAMES:
        p = PRESETS.get(n)
        if p is None:
            continue
        fam = "Llama-style" if p["arch"] == "llama" else "GPT-2-style"
        out.append((f"{n}: {p['n_layer']} layers × {p['n_embd']} wide, context {p['block_size']} ({fam})", n))
    return out


def _paths(files: list[Any] | None) -> list[str]:
    out = []
    for f in files or []:
        p = f if isinstance(f, str) else getattr(f, "name", None) or getattr(f, "path", None)
        if p:
            out.append(str(p))
    return out


def train_config(data: str | list[str], tokenizer: str, preset: str, out: Path, max_steps: int | None,
                 max_time: float | None) -> Any:
    """The trainer's settings for a UI run: the CPU recipe's optimiser, evals and samples often enough to watch."""
    from llm_core.trainer import TrainConfig

    horizon = max_steps or 3000  # a time budget on a CPU runs a few thousand steps of the nano model
    every = max(5, min(250, horizon // 10))
    return TrainConfig(data=data, tokenizer=tokenizer, preset=preset, out_dir=str(out), max_steps=max_steps,
                       max_time=max_time, batch_size=12, lr=1e-3, min_lr=1e-4, beta2=0.99,
                       warmup_steps=min(100, max(1, horizon // 10)), eval_interval=every, eval_batches=10,
                       sample_interval=2 * every, sample_tokens=160, checkpoint_interval=0)


def run_pretrain(job: Job, cfg: Any) -> str | None:
    """Runner for the JobManager: llm_core's trainer with its events forwarded to ``job``."""
    from llm_core.train_events import CheckpointEvent, EvalEvent, SampleEvent, StatusEvent, StepEvent
    from llm_core.trainer import train

    def on_event(ev: Any) -> None:
        if isinstance(ev, StepEvent):
            fracs = []
            if ev.max_steps:
                fracs.append(ev.step / ev.max_steps)
            if cfg.max_time:
                fracs.append(ev.elapsed_s / cfg.max_time)
            job.report(ev.step, loss=ev.loss, total_steps=ev.max_steps, fraction=max(fracs) if fracs else None,
                       eta_s=ev.eta_s, tokens_per_s=ev.tokens_per_s)
        elif isinstance(ev, EvalEvent):
            job.report(ev.step, val_loss=ev.val_loss)
            job.add_log(f"step {ev.step}: validation loss {ev.val_loss:.3f} (perplexity {ev.val_ppl:.1f})")
        elif isinstance(ev, SampleEvent):
            job.add_sample(ev.step, ev.text)
        elif isinstance(ev, StatusEvent):
            prog = f" ({ev.done}/{ev.total})" if ev.total and f"{ev.done}/{ev.total}" not in ev.message else ""
            job.add_log(hide_server_paths(ev.message) + prog)  # uploads are named as the user named them
        elif isinstance(ev, CheckpointEvent):
            job.add_log(f"checkpoint at step {ev.step} ({ev.reason})")

    result = train(cfg, callbacks=on_event, stop_event=job.stop_event)
    job.add_log(f"done: {result.steps} steps, {result.tokens_per_s:,.0f} tokens/s, validation loss "
                f"{result.val_loss if result.val_loss is None else round(result.val_loss, 3)}")
    out = Path(result.out_dir)
    return str(out) if (out / "config.json").is_file() else None


def budgets(max_minutes: Any, max_steps: Any) -> tuple[int | None, float | None]:
    """(steps, seconds) from the two budget boxes (0 or empty = none); a ValueError in words when a budget is
    not a number, out of this tab's range, or both are none (the run would never end)."""
    minutes = in_range(finite_number(max_minutes or 0, MINUTES_LABEL), MINUTES_LABEL, 0, MAX_MINUTES)
    steps = in_range(whole_number(max_steps or 0, STEPS_LABEL), STEPS_LABEL, 0, MAX_STEPS)
    if not minutes and not steps:
        raise ValueError("Set a time budget or a step budget, or the run would never end.")
    return (int(steps) or None), (minutes * 60 or None)


def _corpus(corpus: str, files: list[Any] | None) -> str | list[str]:
    if corpus != UPLOAD:
        return SHAKESPEARE
    paths = _paths(files)
    if not paths:
        raise ValueError("Upload one or more text files (.txt, .md), or pick the built-in Shakespeare corpus.")
    return paths


def _run_name(name: str, preset: str, corpus: str, tokenizer: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", (name or "").strip()).strip("-.") or \
        f"{preset}-{'shakespeare' if corpus == SHAKESPEARE else 'mytext'}-{tokenizer.replace(':', '')}-" \
        f"{time.strftime('%m%d-%H%M')}"


def start_pretrain(corpus: str, files: list[Any] | None, tok_kind: str, vocab: int, preset: str, name: str,
                   max_minutes: float, max_steps: int, jobs: JobManager) -> str:
    """Start a pretraining job; returns the line shown beside the Start button. Bad settings are refused with
    the reason (a warning and that line) before anything starts."""
    try:
        data = _corpus(corpus, files)
        steps, seconds = budgets(max_minutes, max_steps)
        tokenizer = "char" if tok_kind == "char" else f"bpe:{whole_number(vocab, 'BPE vocabulary size')}"
        name = _run_name(name, preset, corpus, tokenizer)
        cfg = train_config(data, tokenizer, preset, data_dir() / "checkpoints" / name, steps, seconds)
    except ValueError as e:
        return refuse(readable_error(e))
    try:
        jobs.start("pretrain", f"{preset} on {'Shakespeare' if corpus == SHAKESPEARE else 'your text'} → {name}",
                   lambda job: run_pretrain(job, cfg))
    except JobBusyError as e:
        return refuse(str(e))
    return f"Started pretraining; the model will be saved as **{name}**."


def create_pretrain_tab(registry: ModelRegistry, jobs: JobManager) -> dict[str, Any]:
    presets = preset_choices()
    with gr.Row():
        with gr.Column(scale=2, min_width=340):
            gr.Markdown("### 1 · Corpus and tokenizer")
            corpus = gr.Radio(CORPORA, value=SHAKESPEARE, label="Corpus", elem_id="pt-corpus")
            files = gr.File(file_count="multiple", file_types=[".txt", ".md"], label="Text files", visible=False,
                            height=120)
            tok = gr.Radio(TOKENIZERS, value="char", label="Tokenizer", elem_id="pt-tokenizer")
            vocab = gr.Slider(256, 8192, value=1024, step=256, label="BPE vocabulary size", visible=False)
            gr.Markdown("### 2 · Model and budget")
            preset = gr.Dropdown(presets, value=presets[0][1] if presets else None, label="Model size",
                                 elem_id="pt-preset")
            with gr.Row():
                minutes = gr.Number(3, label=MINUTES_LABEL, elem_id="pt-minutes",
                                    info=f"0 = none; at most {MAX_MINUTES // 60} hours")
                steps = gr.Number(0, label=STEPS_LABEL, precision=0, elem_id="pt-steps",
                                  info=f"0 = none; at most {MAX_STEPS:,}")
            name = gr.Textbox(label="Checkpoint name", placeholder="(automatic)", elem_id="pt-name")
            with gr.Row():
                start = gr.Button("Start pretraining", variant="primary", elem_id="pt-start")
                stop = gr.Button("Stop", variant="stop", elem_id="pt-stop")
            start_msg = gr.Markdown(elem_id="pt-start-msg")
            gr.Markdown("A character model on Shakespeare starts babbling letters, learns words within a minute or "
                        "two and line breaks between speakers soon after: watch the samples on the right. "
                        "The finished checkpoint appears in the **Chat** tab's model list (it continues text "
                        "rather than chatting).")
        with gr.Column(scale=3):
            panel = create_job_panel("pretrain", jobs, with_samples=True)

    corpus.change(lambda c: gr.update(visible=c == UPLOAD), corpus, files)
    tok.change(lambda t: gr.update(visible=t == "bpe"), tok, vocab)
    start.click(lambda *a: start_pretrain(*a, jobs=jobs), [corpus, files, tok, vocab, preset, name, minutes, steps],
                start_msg)
    stop.click(lambda: stop_job("pretrain", jobs), None, start_msg, queue=False)
    return dict(panel=panel, start=start)
