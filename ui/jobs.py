"""Every long task the UI starts (pretraining, fine-tuning, document ingest, tokenizer training) as a job owned by
the server process rather than a browser tab.

One job runs at a time (they are CPU-heavy); a job started meanwhile waits its turn in a FIFO queue ("queued, N
ahead") and can be cancelled while it waits. Each runs in a background thread and reports into a :class:`Job`; the
tabs poll the manager with a ``gr.Timer``, so closing or reloading the page loses nothing. On a shared deployment a
person sees and stops only their own jobs; of others' they learn only that one runs or how many wait ahead.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ui.errors import readable_error

TAB_NAMES = {"finetune": "Fine-tune", "pretrain": "Pretrain", "scaling": "Pretrain", "ingest": "Documents",
             "tokenizer": "Tokenizer"}
ACTIVE = ("queued", "starting", "running")
KEEP_ENDED = 50  # ended jobs remembered for the panels (the newest of each kind is what a panel shows)


class JobBusyError(RuntimeError):
    """Raised when a job cannot be started: another is running (``queue=False``), or the same run is already
    running or waiting."""


@dataclass
class Job:
    kind: str  # "finetune" | "pretrain" | "scaling" | "ingest" | "tokenizer"
    title: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    status: str = "starting"  # queued | starting | running | finished | stopped | cancelled | failed
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    step: int = 0
    total_steps: int | None = None
    fraction: float = 0.0  # 0..1, whichever budget (steps or time) is nearer its end
    eta_s: float | None = None
    tokens_per_s: float | None = None
    detail: str = ""  # what it is doing now, in words ("embedding chunks 40/120"), for jobs without a loss
    metrics: list[dict] = field(default_factory=list)  # rows {"step", "loss", "split"} for the loss plot
    samples: list[tuple[int, str]] = field(default_factory=list)  # (step, generated text)
    log: list[str] = field(default_factory=list)
    error: str | None = None
    output: str | None = None  # folder written (checkpoint or adapter)
    result: Any = None  # what the tab shows when the job ends (ingest: the per-file table; tokenizer: the table)
    run: Any = None  # ui.runs.RunRecord: the run's lasting record (status, step, loss history), or None
    owner: str | None = None  # the data folder of whoever started it (ui.users); on a shared deployment only they
    #                           see its progress and can stop it, others learn only that a job is running
    stop_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def running(self) -> bool:
        return self.status in ("starting", "running")

    @property
    def queued(self) -> bool:
        return self.status == "queued"

    @property
    def active(self) -> bool:
        """Running or waiting its turn."""
        return self.status in ACTIVE

    @property
    def elapsed_s(self) -> float:
        if self.queued:
            return 0.0
        return (self.ended_at or time.time()) - self.started_at

    # ---- reporting (called from the job's thread) -----------------------------------------------------------
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

    def progress(self, fraction: float, detail: str) -> None:
        """Progress of a job without steps or a loss (ingest, tokenizer training): a fraction and words."""
        with self.lock:
            self.status = "running" if self.status == "starting" else self.status
            self.fraction = max(0.0, min(1.0, float(fraction)))
            self.detail = detail
            self.eta_s = self.elapsed_s * (1 - self.fraction) / self.fraction if self.fraction > 0 else None

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
                        tokens_per_s=self.tokens_per_s, detail=self.detail, metrics=list(self.metrics),
                        samples=list(self.samples), log=list(self.log), error=self.error, output=self.output,
                        result=self.result, elapsed_s=self.elapsed_s)


Runner = Callable[[Job], "str | None"]


@dataclass
class _Waiting:
    job: Job
    runner: Runner
    ctx: contextvars.Context  # the starter's context: the job writes into their folder (ui.users.workspace)


class JobManager:
    """Runs one job at a time and queues the rest in order; remembers recent jobs for the status panels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Job | None = None
        self._queue: deque[_Waiting] = deque()
        self._jobs: list[Job] = []  # newest last: the active ones and the last KEEP_ENDED ended ones
        self._listeners: list[Callable[[Job], None]] = []

    def on_finish(self, fn: Callable[[Job], None]) -> None:
        """Call ``fn(job)`` after any job ends (the model registry uses it to notice new checkpoints)."""
        self._listeners.append(fn)

    def current(self) -> Job | None:
        """The running job (anyone's), or None."""
        with self._lock:
            return self._current if self._current and self._current.running else None

    def latest(self, kind: str) -> Job | None:
        """The job of ``kind`` a panel shows the requester: their newest running or waiting one, else the one
        of theirs that ended last (on a desktop everyone is the same person)."""
        with self._lock:
            mine = [j for j in self._jobs if j.kind == kind and self.mine(j)]
        active = [j for j in mine if j.active]
        if active:
            return active[-1]
        ended = [j for j in mine if j.ended_at is not None]
        return max(ended, key=lambda j: j.ended_at or 0.0) if ended else None

    def jobs(self) -> list[Job]:
        """The requester's jobs, oldest first (tests and the CLI)."""
        with self._lock:
            return [j for j in self._jobs if self.mine(j)]

    @staticmethod
    def mine(job: Job) -> bool:
        """True when the current requester started ``job``, or on a desktop (one person)."""
        from ui.users import workspace

        ws = workspace()
        return job.owner is None or not ws.shared or job.owner == str(ws.root)

    def ahead(self, job: Job) -> int:
        """How many jobs (anyone's) run or wait before ``job``; 0 when it is not waiting."""
        with self._lock:
            for i, w in enumerate(self._queue):
                if w.job is job:
                    return i + (1 if self._current is not None and self._current.running else 0)
        return 0

    def _busy(self, cur: Job) -> str:
        if not self.mine(cur):
            return ("Another person's training job is running on this server; only one runs at a time. "
                    "Try again when it has finished.")
        return (f"A {cur.kind} job ('{cur.title}') is already running; only one training job runs at a time. "
                f"Stop it in the {TAB_NAMES.get(cur.kind, cur.kind)} tab or wait for it to finish.")

    def busy_message(self) -> str | None:
        """Why a job started now would not run at once (the running job), or None."""
        cur = self.current()
        return None if cur is None else self._busy(cur)

    def _same_run(self, kind: str, run: Any) -> Job | None:
        """An active job of the requester's that trains the same run (kind and name): it must not run twice."""
        if run is None:
            return None
        for j in self._jobs:
            if j.active and j.kind == kind and j.run is not None and j.run.name == run.name and self.mine(j):
                return j
        return None

    def check_free(self, kind: str, name: str) -> None:
        """JobBusyError when the requester's run ``name`` of ``kind`` is already running or waiting (the tabs
        ask before naming a run, so a second Start says so rather than "the name is taken")."""
        from types import SimpleNamespace

        with self._lock:
            same = self._same_run(kind, SimpleNamespace(name=name))
        if same is not None:
            raise JobBusyError(self._again(kind, name, same))

    @staticmethod
    def _again(kind: str, name: str, same: Job) -> str:
        return (f"'{name}' is already {'waiting its turn' if same.queued else 'running'}; stop it in the "
                f"{TAB_NAMES.get(kind, kind)} tab or wait for it to finish.")

    def start(self, kind: str, title: str, runner: Runner, run: Any = None, history: list[dict] | None = None,
              step: int = 0, queue: bool = True) -> Job:
        """Run ``runner(job)`` in a thread now, or (``queue``) after the jobs before it when one is running; it
        returns the output folder (or None). Raises JobBusyError when the same run is already active, or when
        one is running and ``queue`` is False. ``run``: the run's record (``ui.runs.RunRecord``), kept up to
        date; ``history``/``step``: the loss rows and step of an earlier part of a resumed run, so the plot
        shows the whole run."""
        with self._lock:
            same = self._same_run(kind, run)
            if same is not None:
                raise JobBusyError(self._again(kind, run.name, same))
            cur = self._current
            busy = (cur is not None and cur.running) or bool(self._queue)
            if busy and not queue:
                raise JobBusyError(self._busy(cur) if cur is not None and cur.running else
                                   "Other jobs are waiting their turn; only one runs at a time.")
            job = Job(kind=kind, title=title, run=run, step=step, metrics=[dict(m) for m in history or []],
                      owner=str(_workspace_root()), status="queued" if busy else "starting")
            if run is not None:
                job.total_steps = run.total_steps
            self._jobs.append(job)
            self._trim()
            waiting = _Waiting(job, runner, contextvars.copy_context())
            if busy:
                self._queue.append(waiting)
            else:
                self._current = job
        if busy:
            job.add_log(f"queued: {title}")
        else:
            self._launch(waiting)
        return job

    def started_message(self, job: Job, started: str) -> str:
        """``started`` when ``job`` runs now, else that it waits and how many jobs are ahead of it."""
        if not job.queued:
            return started
        n = self.ahead(job)
        return (f"**{job.title}** is queued, {n} ahead: only one job runs at a time, so it starts when the "
                f"job{'s' * (n != 1)} before it end. **Stop** cancels it.")

    def _launch(self, w: _Waiting) -> None:
        job = w.job
        with job.lock:
            job.status, job.started_at = "starting", time.time()
        job.add_log(f"started: {job.title}")
        w.ctx.run(job.persist)
        # the thread runs in the starter's context: a job started by one user writes its records and outputs
        # into that user's folder (ui.users.workspace), wherever the thread is when it asks
        threading.Thread(target=w.ctx.run, args=(self._run, job, w.runner), name=f"job-{job.kind}-{job.id}",
                         daemon=True).start()

    def _next(self) -> None:
        """Start the first waiting job when none runs (called when a job ends)."""
        with self._lock:
            if (self._current is not None and self._current.running) or not self._queue:
                return
            w = self._queue.popleft()
            self._current = w.job
        self._launch(w)

    def _trim(self) -> None:
        ended = [j for j in self._jobs if not j.active]
        drop = {id(j) for j in ended[:-KEEP_ENDED]} if len(ended) > KEEP_ENDED else set()
        if drop:
            self._jobs = [j for j in self._jobs if id(j) not in drop]

    def cancel(self, job: Job) -> bool:
        """Take the requester's waiting ``job`` out of the queue; False when it is not waiting (or not theirs)."""
        if not self.mine(job):
            return False
        with self._lock:
            for w in self._queue:
                if w.job is job:
                    self._queue.remove(w)
                    break
            else:
                return False
            with job.lock:
                job.status, job.ended_at = "cancelled", time.time()
        job.add_log("cancelled before it started")
        return True

    def stop(self, kind: str | None = None) -> Job | None:
        """The Stop button: the requester's job of ``kind`` (any kind if None) that its panel shows: cancelled
        while it waits, else asked to stop at its next step. None when there is none."""
        if kind is not None:
            job = self.latest(kind)
        else:
            cur = self.current()
            job = cur if cur is not None and self.mine(cur) else None
        if job is None or not job.active:
            return None
        if job.queued:
            return job if self.cancel(job) else None
        job.stop_event.set()
        job.add_log("stop requested; finishing the current step")
        return job

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until ``job`` ends (tests and the CLI); True if it ended."""
        deadline = None if timeout is None else time.time() + timeout
        while job.active:
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
            self._next()


JOBS = JobManager()  # the process-wide manager the tabs share


def _workspace_root() -> Any:
    from ui.users import workspace

    return workspace().root
