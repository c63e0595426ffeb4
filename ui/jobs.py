"""One training job at a time, owned by the server process rather than a browser tab.

Training runs in a background thread and reports into a :class:`Job`; the tabs poll the manager with a
``gr.Timer``, so closing or reloading the page loses nothing and a second job is refused with a clear message.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ui.errors import readable_error

TAB_NAMES = {"finetune": "Fine-tune", "pretrain": "Pretrain", "scaling": "Pretrain"}


class JobBusyError(RuntimeError):
    """Raised when a job is started while another one is still running."""


@dataclass
class Job:
    kind: str  # "finetune" | "pretrain"
    title: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    status: str = "starting"  # starting | running | finished | stopped | failed
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    step: int = 0
    total_steps: int | None = None
    fraction: float = 0.0  # 0..1, whichever budget (steps or time) is nearer its end
    eta_s: float | None = None
    tokens_per_s: float | None = None
    metrics: list[dict] = field(default_factory=list)  # rows {"step", "loss", "split"} for the loss plot
    samples: list[tuple[int, str]] = field(default_factory=list)  # (step, generated text)
    log: list[str] = field(default_factory=list)
    error: str | None = None
    output: str | None = None  # folder written (checkpoint or adapter)
    run: Any = None  # ui.runs.RunRecord: the run's lasting record (status, step, loss history), or None
    owner: str | None = None  # the data folder of whoever started it (ui.users); on a shared deployment only they
    #                           see its progress and can stop it, others learn only that a job is running
    stop_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def running(self) -> bool:
        return self.status in ("starting", "running")

    @property
    def elapsed_s(self) -> float:
        return (self.ended_at or time.time()) - self.started_at

    # ---- reporting (called from the training thread) -------------------------
    def report(self, step: int, *, loss: float | None = None, val_loss: float | None = None,
               total_steps: int | None = None, fraction: float | None = None, eta_s: float | None = None,
               tokens_per_s: float | None = None) -> None:
        with self.lock:
            self.status = "running" if self.status == "starting" else self.status
            self.step = int(step)
            if total_steps:
                self.total_steps = int(total_steps)
            if fraction is not None:
                self.fraction = max(0.0, min(1.0, float(fraction)))
            elif self.total_steps:
                self.fraction = min(1.0, self.step / self.total_steps)
            if eta_s is not None:
                self.eta_s = max(0.0, float(eta_s))
            elif self.fraction > 0:
                self.eta_s = self.elapsed_s * (1 - self.fraction) / self.fraction
            if tokens_per_s is not None:
                self.tokens_per_s = float(tokens_per_s)
            if loss is not None:
                self.metrics.append({"step": int(step), "loss": float(loss), "split": "train"})
            if val_loss is not None:
                self.metrics.append({"step": int(step), "loss": float(val_loss), "split": "validation"})

    def add_sample(self, step: int, text: str) -> None:
        with self.lock:
            self.samples.append((int(step), text))
            del self.samples[:-20]

    def add_log(self, message: str) -> None:
        with self.lock:
            self.log.append(f"[{time.strftime('%H:%M:%S')}] {message}")
            del self.log[:-200]

    def persist(self, status: str | None = None) -> None:
        """Write the run's record (status, step, loss history) atomically; the runners call it at evaluations
        and checkpoints, the manager when the job ends (with its final ``status``, before the job shows it, so
        whoever sees the job ended also finds the record final)."""
        if self.run is None:
            return
        from ui.runs import save_record

        with self.lock:
            rec = self.run
            rec.status, rec.step, rec.total_steps = status or self.status, self.step, self.total_steps
            rec.metrics = [dict(m) for m in self.metrics]
        try:
            save_record(rec)
        except OSError as e:  # a full disk must not end the training itself
            self.add_log(f"could not save the run's record: {e}")

    def snapshot(self) -> dict:
        """A consistent copy for the UI thread."""
        with self.lock:
            return dict(id=self.id, kind=self.kind, title=self.title, status=self.status, step=self.step,
                        total_steps=self.total_steps, fraction=self.fraction, eta_s=self.eta_s,
                        tokens_per_s=self.tokens_per_s, metrics=list(self.metrics), samples=list(self.samples),
                        log=list(self.log), error=self.error, output=self.output, elapsed_s=self.elapsed_s)


Runner = Callable[[Job], "str | None"]


class JobManager:
    """Runs at most one job; remembers the latest job of each kind for the status panels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Job | None = None
        self._latest: dict[str, Job] = {}
        self._listeners: list[Callable[[Job], None]] = []

    def on_finish(self, fn: Callable[[Job], None]) -> None:
        """Call ``fn(job)`` after any job ends (the model registry uses it to notice new checkpoints)."""
        self._listeners.append(fn)

    def current(self) -> Job | None:
        with self._lock:
            return self._current if self._current and self._current.running else None

    def latest(self, kind: str) -> Job | None:
        """The newest job of ``kind`` that the requester may see (on a shared deployment: their own)."""
        with self._lock:
            job = self._latest.get(kind)
        return job if job is not None and self.mine(job) else None

    @staticmethod
    def mine(job: Job) -> bool:
        """True when the current requester started ``job``, or on a desktop (one person)."""
        from ui.users import workspace

        ws = workspace()
        return job.owner is None or not ws.shared or job.owner == str(ws.root)

    def _busy(self, cur: Job) -> str:
        if not self.mine(cur):
            return ("Another person's training job is running on this server; only one runs at a time. "
                    "Try again when it has finished.")
        return (f"A {cur.kind} job ('{cur.title}') is already running; only one training job runs at a time. "
                f"Stop it in the {TAB_NAMES.get(cur.kind, cur.kind)} tab or wait for it to finish.")

    def busy_message(self) -> str | None:
        """Why a new job would be refused now (the running job), or None: the tabs check it before choosing a
        run's name, so a second Start says "already running" rather than "the name is taken"."""
        cur = self.current()
        return None if cur is None else self._busy(cur)

    def start(self, kind: str, title: str, runner: Runner, run: Any = None, history: list[dict] | None = None,
              step: int = 0) -> Job:
        """Start ``runner(job)`` in a thread; it returns the output folder (or None). Raises JobBusyError.
        ``run``: the run's record (``ui.runs.RunRecord``), kept up to date; ``history``/``step``: the loss rows
        and step of an earlier part of a resumed run, so the plot shows the whole run."""
        with self._lock:
            cur = self._current
            if cur is not None and cur.running:
                raise JobBusyError(self._busy(cur))
            job = Job(kind=kind, title=title, run=run, step=step, metrics=[dict(m) for m in history or []],
                      owner=str(_workspace_root()))
            if run is not None:
                job.total_steps = run.total_steps
            self._current = job
            self._latest[kind] = job
        job.add_log(f"started: {title}")
        job.persist()
        # the thread runs in a copy of the caller's context: a job started by one user writes its records and
        # outputs into that user's folder (ui.users.workspace), wherever the thread is when it asks
        ctx = contextvars.copy_context()
        threading.Thread(target=ctx.run, args=(self._run, job, runner), name=f"job-{kind}-{job.id}",
                         daemon=True).start()
        return job

    def stop(self, kind: str | None = None) -> Job | None:
        """Ask the running job (of ``kind`` if given) to stop at its next step."""
        job = self.current()
        if job is None or (kind is not None and job.kind != kind) or not self.mine(job):
            return None
        job.stop_event.set()
        job.add_log("stop requested; finishing the current step")
        return job

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until ``job`` ends (tests and the CLI); True if it ended."""
        deadline = None if timeout is None else time.time() + timeout
        while job.running:
            if deadline is not None and time.time() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _run(self, job: Job, runner: Runner) -> None:
        try:
            out = runner(job)
            final = "stopped" if job.stop_event.is_set() else "finished"
            with job.lock:
                job.output = str(out) if out else None
            job.persist(final)
            with job.lock:
                job.status = final
                if final == "finished":
                    job.fraction = 1.0
                    job.eta_s = 0.0
            job.add_log(f"{job.status}" + (f"; saved to {job.output}" if job.output else ""))
        except Exception as e:  # surfaced in the UI in words; the traceback goes to the server log only
            traceback.print_exc(file=sys.stderr)
            job.add_log("failed: " + readable_error(e))
            job.persist("failed")
            with job.lock:
                job.error = readable_error(e)
                job.status = "failed"
        finally:
            with job.lock:
                job.ended_at = time.time()
            for fn in self._listeners:
                try:
                    fn(job)
                except Exception:  # a listener must never break the job bookkeeping
                    pass


JOBS = JobManager()  # the process-wide manager the tabs share


def _workspace_root() -> Any:
    from ui.users import workspace

    return workspace().root
