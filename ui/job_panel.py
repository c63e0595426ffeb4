"""The status panel shared by the Fine-tune and Pretrain tabs: status line, progress bar with ETA, live loss plot
(train and validation) and a log; and its small sibling for jobs without a loss (document ingest, tokenizer
training): status, progress and log. Both poll the process-wide JobManager with a ``gr.Timer``, so a reloaded page
shows the running, waiting (or last) job again."""

from __future__ import annotations

import html
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pandas as pd

from ui.jobs import Job, JobManager

STATUS_ICON = {"queued": "🕒", "starting": "⏳", "running": "🏃", "finished": "✅", "stopped": "⏹️",
               "cancelled": "🚫", "failed": "❌"}
WHAT = {"finetune": "fine-tuning", "pretrain": "pretraining", "scaling": "scaling", "ingest": "document ingest",
        "tokenizer": "tokenizer training", "tokenizer-bpb": "bits-per-byte experiment"}


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "—"
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def status_markdown(snap: dict | None, kind: str, other: Job | None = None, ahead: int = 0) -> str:
    """The status line: what the job is doing (step, loss, ETA), or that it waits its turn (``ahead`` jobs
    before it), or the reason it failed and where its output went."""
    if snap is None:
        msg = f"No {WHAT.get(kind, kind)} job yet. Set it up and press **Start**."
        if other is not None:
            msg += (f"\n\n⚠️ A {other.kind} job is running ('{other.title}'); only one job runs at a time, so a job "
                    "started now waits its turn.")
        return msg
    icon = STATUS_ICON.get(snap["status"], "")
    if snap["status"] == "queued":
        return (f"{icon} **{snap['title']}**: queued, {ahead} ahead. It starts when the job{'s' * (ahead != 1)} "
                "before it end; **Stop** cancels it.")
    steps = snap.get("detail") or (f"step {snap['step']}" + (f" / {snap['total_steps']}"
                                                             if snap.get("total_steps") else ""))
    parts = [f"{icon} **{snap['title']}**: {snap['status']}", steps, f"elapsed {fmt_duration(snap['elapsed_s'])}"]
    if snap["status"] in ("starting", "running"):
        parts.append(f"ETA {fmt_duration(snap['eta_s'])}")
    if snap.get("tokens_per_s"):
        parts.append(f"{snap['tokens_per_s']:,.0f} tokens/s")
    train = [m["loss"] for m in snap["metrics"] if m["split"] == "train"]
    val = [m["loss"] for m in snap["metrics"] if m["split"] == "validation"]
    if train:
        parts.append(f"loss {train[-1]:.3f}")
    if val:
        parts.append(f"val loss {val[-1]:.3f}")
    md = " · ".join(p for p in parts if p)
    if snap.get("error"):
        md += f"\n\n**Error:** {snap['error']}"
    if snap.get("output") and snap["status"] in ("finished", "stopped"):
        what = "adapter" if kind == "finetune" else "model"
        md += (f"\n\nSaved the {what} to `{snap['output']}`. Pick it in the **Chat** tab's model list "
               "(it refreshes when you open the list).")
    return md


def progress_html(snap: dict | None) -> str:
    frac = 0.0 if snap is None else float(snap["fraction"])
    label = "" if snap is None else f"{100 * frac:.0f}%"
    if snap is not None and snap["status"] in ("starting", "running") and snap.get("eta_s") is not None:
        label += f" · ETA {fmt_duration(snap['eta_s'])}"
    return (f'<div class="studio-progress" style="background:#e5e7eb;border-radius:8px;height:18px;'
            f'position:relative;overflow:hidden"><div style="width:{100 * frac:.1f}%;height:100%;'
            f'background:linear-gradient(90deg,#6366f1,#a855f7)"></div><span style="position:absolute;left:8px;'
            f'top:0;font-size:12px;line-height:18px;color:#111">{html.escape(label)}</span></div>')


MAX_POINTS = 400  # per split: enough for a smooth curve, small enough to send every second


def loss_frame(snap: dict | None) -> pd.DataFrame:
    rows = [] if snap is None else snap["metrics"]
    out = []
    for split in ("train", "validation"):
        part = [r for r in rows if r["split"] == split]
        if len(part) > MAX_POINTS:
            stride = -(-len(part) // MAX_POINTS)
            part = part[::stride] + ([part[-1]] if (len(part) - 1) % stride else [])
        out += part
    # explicit dtypes: an empty frame must still say "numbers" or the plot keeps treating the axes as categories
    return pd.DataFrame({"step": pd.Series([r["step"] for r in out], dtype="int64"),
                         "loss": pd.Series([r["loss"] for r in out], dtype="float64"),
                         "split": pd.Series([r["split"] for r in out], dtype="object")})


def nice_ceiling(x: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at or above ``x``."""
    top, k = 1, 0
    while top < x:
        k += 1
        top = (1, 2, 5)[k % 3] * 10 ** (k // 3)
    return top


def x_range(snap: dict | None) -> list[int] | None:
    """The step axis: 0 to the run's total steps when known (the curve grows across a fixed axis), else to a
    round number above the last step, so the axis moves rarely (each change redraws the chart) and never spans
    less than the whole run's history (a resumed run starts at its earlier steps)."""
    if snap is None or not snap["metrics"]:
        return None
    last = max(m["step"] for m in snap["metrics"])
    total = snap.get("total_steps") or 0
    return [0, total if total >= max(last, 1) else nice_ceiling(max(last, 1))]


def log_text(snap: dict | None) -> str:
    return "" if snap is None else "\n".join(snap["log"][-40:])


def samples_text(snap: dict | None) -> str:
    if snap is None or not snap["samples"]:
        return ""
    return "\n\n".join(f"── step {s} ──\n{t}" for s, t in reversed(snap["samples"][-5:]))


def job_state(kind: str, jobs: JobManager) -> tuple[Job | None, dict | None, str]:
    """(the job the requester's panel shows, its snapshot, the status line)."""
    job = jobs.latest(kind)
    snap = job.snapshot() if job else None
    other = jobs.current()
    other = other if other is not None and other.kind != kind else None
    if other is not None and not jobs.mine(other):  # another person's job: that one runs, not what it is
        other = SimpleNamespace(kind=other.kind, title="started by another person")
    ahead = jobs.ahead(job) if job is not None and job.queued else 0
    return job, snap, status_markdown(snap, kind, other, ahead)


def plot_title(splits: tuple[str, ...]) -> str:
    return "Loss" + (f" ({' and '.join(splits)})" if splits else "")


def poll(kind: str, jobs: JobManager, seen: tuple | None) -> tuple:
    """(status, progress, plot, log, samples, seen); unchanged outputs are skipped so the plot does not flicker.

    Gradio's LinePlot fixes its colour legend when its chart is (re)built, and rebuilds it only when a setting
    (title, ``x_lim``) changes, from the data it had before. So the title names the series of the previous
    update: when validation points first appear, the next poll changes the title and the chart is rebuilt
    with both series. The step axis is ``x_range``: fixed to the run's length (else a round number above the
    last step), so ticks stay whole steps and a resumed run's earlier part stays in view. A rebuild may draw
    the data from before its update (seen in a browser: the curve stopped at the step of the rebuild), so
    after every settings change the next poll sends the data once more. ``seen`` = (signature, splits,
    settings) sent last.
    """
    job, snap, status = job_state(kind, jobs)
    xlim = x_range(snap)
    sig = None if snap is None else (snap["id"], len(snap["metrics"]), len(snap["samples"]), len(snap["log"]))
    prog = progress_html(snap)
    prev_sig, prev_splits, prev_settings = seen if seen is not None and len(seen) == 3 else ("never", (), None)
    frame = loss_frame(snap)
    splits = tuple(sorted(set(frame["split"])))
    title = plot_title(prev_splits)
    settings = (title, tuple(xlim or ()))
    if sig == prev_sig and splits == prev_splits and settings == prev_settings:
        return status, prog, gr.skip(), gr.skip(), gr.skip(), seen
    plot = gr.update(value=frame if len(frame) else None, title=title, x_lim=xlim)
    rebuilt = splits != prev_splits or settings != prev_settings
    new_seen = ("resend" if rebuilt else sig, splits, settings)
    return status, prog, plot, log_text(snap), samples_text(snap), new_seen


def stop_job(kind: str, jobs: JobManager,
             stopping: str = "Stopping after the current step (the progress so far is saved)…") -> str:
    """The Stop button: cancel this kind's waiting job, or ask the running one to stop (``stopping`` says how)."""
    job = jobs.stop(kind)
    if job is None:
        return f"No {WHAT.get(kind, kind)} job is running or waiting."
    if job.status == "cancelled":
        return f"Cancelled **{job.title}** before it started."
    return stopping


def task_poll(kind: str, jobs: JobManager, seen: tuple | None) -> tuple[str, str, Any, dict | None, tuple]:
    """The small panel (jobs without a loss): (status, progress, log, snapshot, seen). The snapshot is given
    when the job shown changed or ended since ``seen`` (the tab then shows its result once); else None, and the
    log is skipped when unchanged."""
    _, snap, status = job_state(kind, jobs)
    sig = None if snap is None else (snap["id"], snap["status"], len(snap["log"]))
    if seen is not None and sig == seen:
        return status, progress_html(snap), gr.skip(), None, seen
    changed = snap is not None and (seen is None or seen[:2] != sig[:2])
    return status, progress_html(snap), log_text(snap), snap if changed else None, sig


def create_task_panel(kind: str) -> dict[str, Any]:
    """Status, progress bar and log of a job without a loss; the tab wires the timer (it also shows results)."""
    status = gr.Markdown(status_markdown(None, kind), elem_classes=["job-status"], elem_id=f"{kind}-status")
    progress = gr.HTML(progress_html(None), elem_id=f"{kind}-progress")
    log = gr.Textbox(label="Log", lines=3, max_lines=8, interactive=False, elem_id=f"{kind}-log")
    return dict(status=status, progress=progress, log=log, seen=gr.State(None), timer=gr.Timer(1.0))


def create_job_panel(kind: str, jobs: JobManager, with_samples: bool = False) -> dict[str, Any]:
    status = gr.Markdown(status_markdown(None, kind), elem_classes=["job-status"], elem_id=f"{kind}-status")
    progress = gr.HTML(progress_html(None), elem_id=f"{kind}-progress")
    plot = gr.LinePlot(None, x="step", y="loss", color="split", title=plot_title(()),
                       color_map={"train": "#6366f1", "validation": "#f59e0b"}, height=300, x_axis_format="d",
                       elem_id=f"{kind}-loss-plot", x_title="step", y_title="cross-entropy loss")
    samples = gr.Textbox(label="Text samples during training (newest first)", lines=8, max_lines=16,
                         interactive=False, visible=with_samples, elem_id=f"{kind}-samples")
    log = gr.Textbox(label="Log", lines=6, max_lines=12, interactive=False, elem_id=f"{kind}-log")
    seen = gr.State(None)
    timer = gr.Timer(1.0)
    outs = [status, progress, plot, log, samples, seen]
    timer.tick(lambda s: poll(kind, jobs, s), seen, outs, show_progress="hidden", concurrency_limit=None)
    return dict(status=status, progress=progress, plot=plot, log=log, samples=samples, seen=seen, timer=timer,
                outputs=outs)
