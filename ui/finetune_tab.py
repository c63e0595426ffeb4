"""Fine-tune tab: a dataset (uploaded or the built-in demo) checked and previewed as the model will see it, LoRA
settings, Start/Stop, live train/validation loss and ETA. Training is ``finetune.FinetuneJob`` run as the job itself
(or, with several processes, a ``torchrun`` subprocess the job watches); the finished adapter shows up in Chat's
model list."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import gradio as gr

from finetune.config import DEFAULT_TARGETS
from ui.errors import finite_number, hide_server_paths, in_range, in_words, readable_error, refuse, whole_number
from ui.finetune_compare_panel import create_compare_panel
from ui.job_panel import create_job_panel, stop_job
from ui.jobs import Job, JobBusyError, JobManager
from ui.models import LORA, ModelRegistry
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
from ui.settings import data_dir

DEMO = "demo"
UPLOAD = "upload"
SOURCES = [("Built-in demo: sentence → exact JSON (name, age, city, job)", DEMO), ("My dataset file", UPLOAD)]
FORMATS = ["auto", "alpaca", "chat", "sharegpt", "text"]
TARGETS = list(DEFAULT_TARGETS)  # finetune's own list
# this tab's sane maxima for the run's length (one job at a time on a shared server)
MAX_STEPS = 100_000
MAX_EPOCHS = 100
# config field -> the control's label, so the config's messages name what the person sees
LABELS = {"lr": "Learning rate", "epochs": "Epochs", "max_steps": "Max steps", "seed": "Seed", "rank": "Rank r",
          "alpha": "Alpha", "dropout": "LoRA dropout", "batch_size": "Batch size",
          "grad_accum": "Gradient accumulation", "max_length": "Max length", "target_modules": "Target modules",
          "patience": "Early stopping patience", "processes": "Processes / GPUs"}
FORMAT_HELP = """**Accepted files**: Alpaca (`instruction`, `input`, `output`), chat
(`{"messages": [{"role": "user", "content": ...}, ...]}`) or ShareGPT (`conversations` with `from`/`value`) records
as JSONL, a JSON array, CSV (a header row naming the columns) or Parquet, or plain `.txt`/`.md` for continued
pretraining. Only the assistant's part is learned (highlighted in the preview)."""
FILE_TYPES = [".json", ".jsonl", ".csv", ".parquet", ".txt", ".md"]
RUN_HEADERS = ["name", "step", "status", "date"]


def base_model_choices(registry: ModelRegistry) -> list[tuple[str, str]]:
    return [(e.label, e.key) for e in registry.entries() if e.kind != LORA]


def _file_path(f: Any) -> str | None:
    if f is None:
        return None
    return f if isinstance(f, str) else getattr(f, "name", None) or getattr(f, "path", None)


def dataset_path(source: str, upload: Any) -> str:
    """The dataset to use; a ValueError in words when "My dataset file" is chosen and none is uploaded."""
    if source == DEMO:
        return DEMO
    path = _file_path(upload)
    if not path:
        raise ValueError("Upload a dataset file, or choose the built-in demo.")
    return str(path)


def check_dataset(source: str, upload: Any, fmt: str, model_key: str | None, max_length: int,
                  registry: ModelRegistry) -> tuple[str, list[tuple[str, str | None]]]:
    """(validation markdown, preview as HighlightedText pieces: trained text labelled 'learned')."""
    from finetune import DatasetError, load_dataset, preview
    from finetune.demo import demo_data_path

    try:
        data = dataset_path(source, upload)
    except ValueError as e:
        return f"⚠️ {e}", []
    path = demo_data_path()["train"] if data == DEMO else Path(data)
    shown = "the built-in demo" if data == DEMO else f"`{Path(getattr(upload, 'orig_name', '') or path).name}`"
    try:
        ds = load_dataset(path, fmt or "auto")
    except DatasetError as e:
        lines = "\n".join(f"- {i}" for i in e.issues[:15])
        more = f"\n- … and {len(e.issues) - 15} more" if len(e.issues) > 15 else ""
        return f"❌ **{len(e.issues)} problem(s) in {shown}** (fix these and check again):\n\n{lines}{more}", []
    except (OSError, ValueError) as e:
        return f"❌ {shown}: {readable_error(e)}", []
    try:
        tok = registry.get(model_key).tokenizer
    except Exception as e:
        return (f"✅ {shown}: {len(ds)} {ds.format} records. (No preview: the model did not load: "
                f"{readable_error(e)})"), []
    items = preview(ds, tok, n=3, max_length=int(max_length))
    pieces: list[tuple[str, str | None]] = []
    notes = []
    for k, it in enumerate(items, start=1):
        pieces.append((f"── example {k} (line {it.line}): {it.n_tokens} tokens, {it.n_trained} learned"
                       f"{', TRUNCATED' if it.truncated else ''} ──\n", "info"))
        pieces.extend((t, "learned" if trained else None) for t, trained in it.pieces)
        pieces.append(("\n\n", None))
        if it.truncated:
            notes.append(f"example {k} is longer than {max_length} tokens and will be cut")
    md = f"✅ {shown}: **{len(ds)} {ds.format} records**, valid."
    if notes:
        md += "\n\n⚠️ " + "; ".join(notes) + ". Raise *max length* to keep them whole."
    return md, pieces


def name_stem(source: str, upload: Any) -> str:
    """The readable part of an automatic adapter name: the dataset's name."""
    return "demo-json" if source == DEMO else safe_name(Path(_file_path(upload) or "dataset").stem, "adapter")


def adapter_folder(name: str) -> Path:
    return data_dir() / "adapters" / name


def checkpoint_step(out: Path) -> int | None:
    """The step of the run's resumable checkpoint (``finetune.trainer`` keeps the latest one), or None."""
    steps = sorted((out / "checkpoints").glob("step-*"))
    try:
        return int(steps[-1].name.split("-")[1]) if steps else None
    except ValueError:
        return None


def resumable(rec: RunRecord) -> bool:
    return rec.status != "finished" and checkpoint_step(Path(rec.output)) is not None


def forward_event(job: Job, ev: Any) -> None:
    """A training event (an ``llm_core.training.train_events`` object, or its ``@event`` JSON from a torchrun subprocess)
    into the job: progress, the loss plot and the log."""
    get = ev.get if isinstance(ev, dict) else (lambda k, d=None: getattr(ev, k, d))
    kind, step = get("kind"), get("step", 0)
    if kind == "step":
        job.report(step, loss=get("loss"), total_steps=get("max_steps"), eta_s=get("eta_s"),
                   tokens_per_s=get("tokens_per_s"))
    elif kind == "eval":
        job.report(step, val_loss=get("val_loss"), total_steps=get("max_steps"))
    if kind in ("info", "checkpoint", "done", "stopped") and get("message"):  # an error is logged when the job fails
        job.add_log(hide_server_paths(get("message")))
    if kind in ("eval", "checkpoint"):
        job.persist()  # the loss history survives a crash up to here


def _adapter_output(out_dir: str | None) -> str | None:
    out = Path(out_dir) if out_dir else None
    return str(out) if out is not None and (out / "adapter_config.json").is_file() else None


def run_finetune(job: Job, cfg: Any, processes: int = 1) -> str | None:
    """Runner for the JobManager: the LoRA run itself, in the job's thread, stopped by the job's stop event;
    with several processes a torchrun subprocess (:func:`run_finetune_torchrun`)."""
    if processes > 1:
        return run_finetune_torchrun(job, cfg, processes)
    from finetune import FinetuneJob

    fj = FinetuneJob(cfg, stop_event=job.stop_event)
    st = fj.run(lambda ev: forward_event(job, ev))
    if st.state == "error":  # the original exception, so the job's message is in words (no class name)
        raise fj.exception or RuntimeError(st.error or "fine-tuning failed")
    return _adapter_output(st.out_dir)


def torchrun_command(config_file: Path, stop_file: Path, processes: int) -> list[str]:
    """``torchrun --standalone --nproc_per_node=N -m finetune`` reading the run's settings from a file, reporting
    ``@event`` JSON lines and stopping cleanly when ``stop_file`` appears."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m",
            "finetune", "--config", str(config_file), "--events", "jsonl", "--stop-file", str(stop_file)]


def run_finetune_torchrun(job: Job, cfg: Any, processes: int) -> str | None:
    """Run the job as a torchrun subprocess of ``processes`` DDP workers: its events feed the job, and the job's
    Stop creates the stop file, on which every worker finishes its step and rank 0 saves a resumable checkpoint."""
    tmp = Path(tempfile.mkdtemp(prefix="finetune-ddp-"))
    config_file, stop_file = tmp / "config.json", tmp / "stop"
    config_file.write_text(json.dumps(cfg.to_dict()))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(torchrun_command(config_file, stop_file, processes), cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def relay_stop() -> None:  # the job's Stop -> the stop file, until the process ends
        while proc.poll() is None:
            if job.stop_event.wait(0.5):
                stop_file.touch()
                return

    threading.Thread(target=relay_stop, name=f"stop-relay-{job.id}", daemon=True).start()
    error, tail = None, deque(maxlen=20)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("@event "):
                ev = json.loads(line[len("@event "):])
                error = ev["message"] if ev["kind"] == "error" else error
                forward_event(job, ev)
            elif line.strip():
                tail.append(line.rstrip())
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    if rc != 0:
        raise ValueError(error or f"fine-tuning with {processes} processes failed (exit status {rc}): "
                         + hide_server_paths(" | ".join(list(tail)[-3:])))
    return _adapter_output(cfg.out_dir)


def finetune_config(source: str, upload: Any, fmt: str, model_ref: str, out: Path, rank: Any, alpha: Any,
                    dropout: Any, targets: list[str], lr: Any, epochs: Any, max_steps: Any, batch_size: Any,
                    grad_accum: Any, max_length: Any, seed: Any, low_memory: bool, patience: Any = 0) -> Any:
    """A ``FinetuneConfig`` from the controls. The rules are the config's own (its message, with this tab's
    labels); here only what a box can send becomes a number, plus this tab's maxima for the budgets."""
    from finetune import FinetuneConfig

    steps = in_range(whole_number(max_steps or 0, LABELS["max_steps"]), LABELS["max_steps"], 0, MAX_STEPS)
    n_epochs = finite_number(epochs, LABELS["epochs"])
    if not steps:
        in_range(n_epochs, LABELS["epochs"], 0, MAX_EPOCHS)
    try:
        return FinetuneConfig(model=model_ref, data=dataset_path(source, upload), data_format=fmt or "auto",
                              out_dir=str(out), rank=whole_number(rank, LABELS["rank"]),
                              alpha=finite_number(alpha, LABELS["alpha"]),
                              dropout=finite_number(dropout, LABELS["dropout"]), target_modules=list(targets or []),
                              lr=finite_number(lr, LABELS["lr"]), epochs=n_epochs, max_steps=int(steps) or None,
                              batch_size=whole_number(batch_size, LABELS["batch_size"]),
                              grad_accum=whole_number(grad_accum, LABELS["grad_accum"]),
                              max_length=whole_number(max_length, LABELS["max_length"]),
                              seed=whole_number(seed, LABELS["seed"]), gradient_checkpointing=bool(low_memory),
                              patience=whole_number(patience or 0, LABELS["patience"]),
                              eval_interval=max(1, min(25, int(steps or 25) // 6 or 1)), checkpoint_interval=50)
    except ValueError as e:
        raise ValueError(in_words(str(e), LABELS)) from None


def start_finetune(source: str, upload: Any, fmt: str, model_key: str | None, name: str, rank: int, alpha: float,
                   dropout: float, targets: list[str], lr: float, epochs: float, max_steps: int, batch_size: int,
                   grad_accum: int, max_length: int, seed: int, low_memory: bool = False, patience: int = 0,
                   processes: int = 1, *, registry: ModelRegistry, jobs: JobManager) -> str:
    """Start a LoRA job; returns the line shown beside the Start button. Bad settings are refused with the
    reason (a warning and that line) before anything starts.

    Without a name the run is named after its dataset and a hash of its settings: the same settings after a
    stop resume that run; after a finished run they start a new one (``-2``). A typed name that an earlier run
    holds is refused unless that run is resumable with the same settings."""
    try:
        if safe_name(name, ""):
            jobs.check_free("finetune", safe_name(name, ""))  # a second Start of the same run: "already running"
        entry = registry.entry(model_key)
        if entry.kind == LORA:
            raise ValueError("Pick a base model or a checkpoint to fine-tune (not an adapter).")
        data = dataset_path(source, upload)
        if data != DEMO:
            if not Path(data).is_file():
                raise ValueError("The uploaded dataset file is gone; upload it again.")
            data = str(stable_copy(data))
        cfg = finetune_config(source, data, fmt, entry.ref, adapter_folder("pending"), rank, alpha, dropout, targets,
                              lr, epochs, max_steps, batch_size, grad_accum, max_length, seed, low_memory, patience)
        procs = process_count(processes)
        key = settings_key(run_config(cfg, procs))
        name, resume = run_name("finetune", name, name_stem(source, upload), key, adapter_folder, resumable)
        cfg.out_dir = str(adapter_folder(name))
    except JobBusyError as e:
        return refuse(str(e))
    except ValueError as e:
        return refuse(readable_error(e))
    return _launch(cfg, name, key, resume, entry.ref, jobs, procs)


def process_count(processes: Any) -> int:
    """The "Processes / GPUs" setting as a whole number this machine can run (one per GPU, else per CPU core)."""
    from finetune.device import max_processes

    n = whole_number(processes or 1, LABELS["processes"])
    return int(in_range(n, LABELS["processes"], 1, max(1, max_processes())))


def run_config(cfg: Any, processes: int) -> dict:
    """The settings a run is recorded and named by: the config, plus the process count when above 1."""
    return {**cfg.to_dict(), **({"processes": processes} if processes > 1 else {})}


def _launch(cfg: Any, name: str, key: str, resume: bool, model_ref: str, jobs: JobManager,
            processes: int = 1) -> str:
    """Start the job with its run record; a resumed run starts from its checkpoint's step and history."""
    old = load_record("finetune", name) if resume else None
    step = (checkpoint_step(Path(cfg.out_dir)) or 0) if resume else 0
    rec = RunRecord("finetune", name, cfg.out_dir, run_config(cfg, processes), key=key, total_steps=cfg.max_steps,
                    started_at=old.started_at if old else time.time())
    try:
        job = jobs.start("finetune", f"LoRA on {Path(model_ref).name} → {name}",
                         lambda job: run_finetune(job, cfg, processes), run=rec,
                         history=history_until(old, step) if old else [], step=step)
    except JobBusyError as e:
        return refuse(str(e))
    budget = f"{cfg.max_steps} optimizer steps" if cfg.max_steps else f"{cfg.epochs:g} epochs"
    mem = ", low memory" if cfg.gradient_checkpointing else ""
    mem += f", {processes} processes" if processes > 1 else ""
    if resume:
        started = f"Resuming **{name}** from step {step} ({budget}, batch {cfg.batch_size}{mem})."
    else:
        started = (f"Started fine-tuning ({budget}, batch {cfg.batch_size}{mem}); the adapter will be saved as "
                   f"**{name}**.")
    return jobs.started_message(job, started)


def resume_finetune(name: str | None, jobs: JobManager) -> str:
    """The Resume button: continue an earlier run from its last checkpoint with its own settings."""
    from finetune import FinetuneConfig

    try:
        rec = record_to_resume("finetune", name, resumable,
                               f"'{name}' finished; there is nothing to resume. Its adapter is in the Chat tab.",
                               f"'{name}' has no checkpoint to resume from (it stopped before its first step).")
        cfg = FinetuneConfig.from_dict({**rec.config, "resume": True})
        if cfg.data != DEMO and not Path(cfg.data).is_file():
            raise ValueError(f"The dataset of '{name}' is gone; start a new run with the file.")
    except JobBusyError as e:
        return refuse(str(e))
    except ValueError as e:
        return refuse(readable_error(e))
    return _launch(cfg, rec.name, rec.key, True, cfg.model, jobs, int(rec.config.get("processes", 1)))


def runs_update(jobs: JobManager) -> tuple[Any, Any]:
    """(table rows, dropdown choices) for the Earlier runs list."""
    cur = jobs.current()
    running = cur.run.name if cur is not None and cur.kind == "finetune" and cur.run is not None else None
    runs = list_runs("finetune")
    return table(runs, running), gr.update(choices=[r.name for r in runs])


def create_finetune_tab(registry: ModelRegistry, jobs: JobManager) -> dict[str, Any]:
    with gr.Row():
        with gr.Column(scale=2, min_width=340):
            gr.Markdown("### 1 · Data")
            source = gr.Radio(SOURCES, value=DEMO, label="Dataset", elem_id="ft-source")
            upload = gr.File(file_types=FILE_TYPES, label="Dataset file", visible=False,
                             height=120, elem_id="ft-upload")
            fmt = gr.Dropdown(FORMATS, value="auto", label="Format", visible=False)
            gr.Markdown(FORMAT_HELP)
            base = gr.Dropdown(base_model_choices(registry), value=registry.default_key, label="Base model",
                               elem_id="ft-base")
            check = gr.Button("Check and preview")
            verdict = gr.Markdown(elem_id="ft-verdict")
            gr.Markdown("### 2 · LoRA settings")
            name = gr.Textbox(label="Adapter name", placeholder="(automatic)", elem_id="ft-name")
            with gr.Row():
                rank = gr.Slider(1, 64, value=16, step=1, label="Rank r")
                alpha = gr.Slider(1, 128, value=32, step=1, label="Alpha")
            targets = gr.CheckboxGroup(TARGETS, value=TARGETS, label="Target modules",
                                       info="attention projections and MLP; missing ones are skipped")
            with gr.Accordion("Training", open=False):
                with gr.Row():
                    lr = gr.Number(2e-4, label=LABELS["lr"], elem_id="ft-lr",
                                   info="about 1e-5 to 1e-2; at most 1")
                    dropout = gr.Slider(0.0, 0.5, value=0.05, step=0.01, label="LoRA dropout")
                with gr.Row():
                    epochs = gr.Number(2, label=LABELS["epochs"], info=f"at most {MAX_EPOCHS}")
                    max_steps = gr.Number(60, label="Max steps (0 = use epochs)", precision=0,
                                          elem_id="ft-max-steps", info=f"at most {MAX_STEPS:,}")
                with gr.Row():
                    batch = gr.Slider(1, 32, value=8, step=1, label="Batch size", elem_id="ft-batch")
                    accum = gr.Slider(1, 16, value=1, step=1, label="Gradient accumulation")
                with gr.Row():
                    max_len = gr.Slider(32, 2048, value=256, step=32, label="Max length (tokens)")
                    seed = gr.Number(0, label=LABELS["seed"], precision=0, elem_id="ft-seed")
                with gr.Row():
                    patience = gr.Number(0, label=LABELS["patience"], precision=0, elem_id="ft-patience",
                                         info="stop after this many evaluations without a lower validation loss; "
                                              "the best adapter is kept (0 = off)")
                    processes = gr.Number(1, label=LABELS["processes"], precision=0, elem_id="ft-processes",
                                          info="above 1: DistributedDataParallel under torchrun, each process "
                                               "training on its share of every batch")
                low_memory = gr.Checkbox(False, label="Low memory (gradient checkpointing)",
                                         info="Recompute each block during backward and return freed memory to "
                                              "the system: LoRA on SmolLM2 at batch 8 peaks at ~1.3 GB instead "
                                              "of ~3.6 GB, each step takes ~2x longer.")
            with gr.Row():
                start = gr.Button("Start fine-tuning", variant="primary", elem_id="ft-start")
                stop = gr.Button("Stop", variant="stop", elem_id="ft-stop")
            start_msg = gr.Markdown(elem_id="ft-start-msg")
            with gr.Accordion("Earlier runs", open=False):
                runs = gr.Dataframe(lambda: runs_update(jobs)[0], headers=RUN_HEADERS, interactive=False,
                                    elem_id="ft-runs")
                with gr.Row():
                    pick = gr.Dropdown([r.name for r in list_runs("finetune")], label="Run", elem_id="ft-run-pick")
                    resume = gr.Button("Resume", elem_id="ft-resume")
                    refresh = gr.Button("↻ Refresh")
        with gr.Column(scale=3):
            panel = create_job_panel("finetune", jobs)
            preview_box = gr.HighlightedText(label="Preview: what the model sees (highlighted = learned, the rest "
                                                   "is context with label -100)",
                                             color_map={"learned": "#a5b4fc", "info": "#e5e7eb"},
                                             show_legend=False, combine_adjacent=True, elem_id="ft-preview")
            create_compare_panel(registry)  # before/after: the base model vs an adapter

    source.change(lambda s: (gr.update(visible=s == UPLOAD), gr.update(visible=s == UPLOAD)), source, [upload, fmt])
    check.click(lambda s, u, f, m, ml: check_dataset(s, u, f, m, ml, registry), [source, upload, fmt, base, max_len],
                [verdict, preview_box])
    upload.upload(lambda s, u, f, m, ml: check_dataset(s, u, f, m, ml, registry),
                  [source, upload, fmt, base, max_len], [verdict, preview_box])
    listed = dict(fn=lambda: runs_update(jobs), inputs=None, outputs=[runs, pick], queue=False)
    start.click(lambda *a: start_finetune(*a, registry=registry, jobs=jobs),
                [source, upload, fmt, base, name, rank, alpha, dropout, targets, lr, epochs, max_steps, batch,
                 accum, max_len, seed, low_memory, patience, processes], start_msg).then(**listed)
    stop.click(lambda: stop_job("finetune", jobs), None, start_msg, queue=False).then(**listed)
    resume.click(lambda n: resume_finetune(n, jobs), pick, start_msg).then(**listed)
    refresh.click(**listed)
    pick.focus(lambda: gr.update(choices=[r.name for r in list_runs("finetune")]), None, pick, queue=False)
    base.focus(lambda: gr.update(choices=base_model_choices(registry)), None, base, queue=False)
    return dict(panel=panel, start=start, runs=runs, resume=resume)
