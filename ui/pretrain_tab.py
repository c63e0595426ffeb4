"""Pretrain tab: train a small GPT from scratch on Shakespeare or your own text, watching the loss fall and the
samples improve. Training is ``llm_core.training.train`` in a background job; the checkpoint shows up in Chat's list."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import gradio as gr

from ui.errors import finite_number, hide_server_paths, in_range, readable_error, refuse, whole_number
from ui.job_panel import create_job_panel, stop_job
from ui.jobs import Job, JobBusyError, JobManager
from ui.models import ModelRegistry
from ui.runs import (
    RunRecord,
    history_until,
    list_runs,
    load_record,
    record_to_resume,
    run_name,
    safe_name,
    settings_key,
    stable_copy,
    table,
)
from ui.scaling_panel import create_scaling_panel
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
EVALS_PER_RUN = 12  # validation loss points (each with a text sample) over a run's budget
RUN_HEADERS = ["name", "step", "status", "date"]


def preset_choices() -> list[tuple[str, str]]:
    from llm_core.model.config import PRESETS

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
    """The trainer's settings for a UI run: llm_core's "pretrain-tab" recipe fitted to the budget, with a
    validation loss and a text sample about EVALS_PER_RUN times over it."""
    from llm_core.training.trainer import budget_recipe

    return budget_recipe("pretrain-tab", max_steps, max_time, evals=EVALS_PER_RUN, data=data, tokenizer=tokenizer,
                         preset=preset, out_dir=str(out))


def run_pretrain(job: Job, cfg: Any) -> str | None:
    """Runner for the JobManager: llm_core's trainer with its events forwarded to ``job``."""
    from llm_core.training.train_events import CheckpointEvent, EvalEvent, SampleEvent, StatusEvent, StepEvent
    from llm_core.training.trainer import train

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
            job.persist()  # the loss history survives a crash up to here
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


def name_stem(preset: str, corpus: str, tokenizer: str) -> str:
    return safe_name(f"{preset}-{'shakespeare' if corpus == SHAKESPEARE else 'mytext'}-{tokenizer.replace(':', '')}",
                     "run")


def run_folder(name: str) -> Path:
    return data_dir() / "checkpoints" / name


def saved_step(out: Path) -> int | None:
    """The step of the run's saved training state (what a resume continues from), or None."""
    try:
        return int(json.loads((out / "train_state" / "state.json").read_text())["state"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resumable(rec: RunRecord) -> bool:
    return rec.status != "finished" and saved_step(Path(rec.output)) is not None


def start_pretrain(corpus: str, files: list[Any] | None, tok_kind: str, vocab: int, preset: str, name: str,
                   max_minutes: float, max_steps: int, jobs: JobManager) -> str:
    """Start a pretraining job; returns the line shown beside the Start button. Bad settings are refused with
    the reason (a warning and that line) before anything starts. Naming follows the Fine-tune tab: the same
    settings resume a stopped run, a finished run's name is never taken again, a typed name must be free."""
    try:
        if safe_name(name, ""):
            jobs.check_free("pretrain", safe_name(name, ""))  # a second Start of the same run: "already running"
        data = _corpus(corpus, files)
        if isinstance(data, list):
            missing = [Path(p).name for p in data if not Path(p).is_file()]
            if missing:
                raise ValueError(f"The uploaded file {missing[0]} is gone; upload it again.")
            data = [str(stable_copy(p)) for p in data]
        steps, seconds = budgets(max_minutes, max_steps)
        tokenizer = "char" if tok_kind == "char" else f"bpe:{whole_number(vocab, 'BPE vocabulary size')}"
        cfg = train_config(data, tokenizer, preset, run_folder("pending"), steps, seconds)
        key = settings_key(cfg.to_dict())
        name, resume = run_name("pretrain", name, name_stem(preset, corpus, tokenizer), key, run_folder, resumable)
        cfg.out_dir, cfg.resume = str(run_folder(name)), resume
    except JobBusyError as e:
        return refuse(str(e))
    except ValueError as e:
        return refuse(readable_error(e))
    what = f"{preset} on {'Shakespeare' if corpus == SHAKESPEARE else 'your text'}"
    return _launch(cfg, name, key, resume, what, jobs)


def _launch(cfg: Any, name: str, key: str, resume: bool, what: str, jobs: JobManager) -> str:
    old = load_record("pretrain", name) if resume else None
    step = (saved_step(Path(cfg.out_dir)) or 0) if resume else 0
    rec = RunRecord("pretrain", name, cfg.out_dir, cfg.to_dict(), key=key, total_steps=cfg.max_steps,
                    started_at=old.started_at if old else time.time())
    try:
        job = jobs.start("pretrain", f"{what} → {name}", lambda job: run_pretrain(job, cfg), run=rec,
                         history=history_until(old, step) if old else [], step=step)
    except JobBusyError as e:
        return refuse(str(e))
    if resume:
        return jobs.started_message(job, f"Resuming **{name}** from step {step}.")
    return jobs.started_message(job, f"Started pretraining; the model will be saved as **{name}**.")


def resume_pretrain(name: str | None, jobs: JobManager) -> str:
    """The Resume button: continue an earlier run from its saved training state with its own settings."""
    from llm_core.training.trainer import TrainConfig

    try:
        rec = record_to_resume("pretrain", name, resumable,
                               f"'{name}' finished its budget; there is nothing to resume. It is in the Chat tab.",
                               f"'{name}' has no saved training state to resume from.")
        cfg = TrainConfig.from_dict({**rec.config, "resume": True})
        data = [cfg.data] if isinstance(cfg.data, str) else cfg.data
        if cfg.data != SHAKESPEARE and not all(Path(p).is_file() for p in data):
            raise ValueError(f"The text files of '{name}' are gone; start a new run with them.")
    except ValueError as e:
        return refuse(readable_error(e))
    what = f"{cfg.preset} on {'Shakespeare' if cfg.data == SHAKESPEARE else 'your text'}"
    return _launch(cfg, rec.name, rec.key, True, what, jobs)


def runs_update(jobs: JobManager) -> tuple[Any, Any]:
    """(table rows, dropdown choices) for the Earlier runs list."""
    cur = jobs.current()
    running = cur.run.name if cur is not None and cur.kind == "pretrain" and cur.run is not None else None
    runs = list_runs("pretrain")
    return table(runs, running), gr.update(choices=[r.name for r in runs])


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
            with gr.Accordion("Earlier runs", open=False):
                runs = gr.Dataframe(lambda: runs_update(jobs)[0], headers=RUN_HEADERS, interactive=False,
                                    elem_id="pt-runs")
                with gr.Row():
                    pick = gr.Dropdown([r.name for r in list_runs("pretrain")], label="Run", elem_id="pt-run-pick")
                    resume = gr.Button("Resume", elem_id="pt-resume")
                    refresh = gr.Button("↻ Refresh")
            gr.Markdown("A character model on Shakespeare starts babbling letters, learns words within a minute or "
                        "two and line breaks between speakers soon after: watch the samples on the right. "
                        "The finished checkpoint appears in the **Chat** tab's model list (it continues text "
                        "rather than chatting).")
        with gr.Column(scale=3):
            panel = create_job_panel("pretrain", jobs, with_samples=True)
    scaling = create_scaling_panel(jobs)  # the ladder of sizes: loss against parameters and FLOPs

    corpus.change(lambda c: gr.update(visible=c == UPLOAD), corpus, files)
    tok.change(lambda t: gr.update(visible=t == "bpe"), tok, vocab)
    listed = dict(fn=lambda: runs_update(jobs), inputs=None, outputs=[runs, pick], queue=False)
    start.click(lambda *a: start_pretrain(*a, jobs=jobs), [corpus, files, tok, vocab, preset, name, minutes, steps],
                start_msg).then(**listed)
    stop.click(lambda: stop_job("pretrain", jobs), None, start_msg, queue=False).then(**listed)
    resume.click(lambda n: resume_pretrain(n, jobs), pick, start_msg).then(**listed)
    refresh.click(**listed)
    pick.focus(lambda: gr.update(choices=[r.name for r in list_runs("pretrain")]), None, pick, queue=False)
    return dict(panel=panel, start=start, runs=runs, resume=resume, scaling=scaling)
