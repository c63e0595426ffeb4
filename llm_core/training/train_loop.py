"""The one training loop: pretraining (``llm_core.training.trainer``) and LoRA fine-tuning (``finetune.trainer``) both run it.

A kind of training hands over a :class:`Task`: the model, its optimizer, the micro-batches of each step, the
learning rate, a validation loss and how to save. This module owns the rest, as nanoGPT's ``train.py`` does:
the device and process group, gradient accumulation, clipping, mixed precision, ``torch.compile``,
DistributedDataParallel, evaluation with early stopping, the progress events and when to checkpoint.

    with distributed(cfg.device) as (ddp, device):
        task = Task(model, optimizer, batches, lr, evaluate, save)
        result = run_loop(task, LoopConfig(max_steps=...), state, ddp, device, emit, stop_event)
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from llm_core.precision import native_bf16
from llm_core.training.train_events import CheckpointEvent, EvalEvent, SampleEvent, StatusEvent, StepEvent, TrainEvent
from llm_core.training.train_state import TrainState

log = logging.getLogger(__name__)
STOP_REASONS = ("max_steps", "max_time", "stopped", "early_stop")


# ---------------------------------------------------------------------------------------------
# device, processes, precision
# ---------------------------------------------------------------------------------------------
def pick_device(pref: str = "auto", allow_mps: bool = True) -> torch.device:
    """The one device picker (training, fine-tuning, the app): ``auto`` takes CUDA, then Apple MPS, then the CPU;
    a named device must exist (a clear ValueError otherwise)."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "mps" if mps and allow_mps else "cpu"
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {pref!r} requested but no CUDA GPU is available")
    if dev.type == "mps" and not mps:
        raise ValueError("device 'mps' requested but Apple MPS is not available")
    return dev


@dataclass
class Dist:
    """This process's place in a ``torchrun`` group (rank 0 of 1 without one)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def master(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def reduce(self, values: list[float], device: torch.device, op: str = "sum") -> list[float]:
        """The same numbers on every rank: summed (or their maximum) over all processes."""
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t.tolist()


def setup_distributed(device_pref: str = "auto") -> tuple[Dist, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): join the process group, gloo on CPU, nccl on CUDA (one GPU per rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), pick_device(device_pref)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    use_cuda = pick_device(device_pref, allow_mps=False).type == "cuda"
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(local)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return Dist(rank, local, world, owns), device


@contextmanager
def distributed(device_pref: str = "auto", num_threads: int | None = None) -> Iterator[tuple[Dist, torch.device]]:
    """:func:`setup_distributed` plus CPU threads (shared out among the processes), torn down on exit."""
    ddp, device = setup_distributed(device_pref)
    try:
        if device.type == "cpu":
            threads = num_threads or (max(1, (os.cpu_count() or 1) // ddp.world_size) if ddp.world_size > 1 else None)
            if threads:
                torch.set_num_threads(threads)
        yield ddp, device
    finally:
        if ddp.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def autocast_for(device: torch.device, dtype: str = "auto") -> tuple[AbstractContextManager, str]:
    """(autocast context, "bfloat16" | "float32"): bf16 matmuls when asked, or with ``auto`` where they are native
    (CUDA with bf16, AMX CPUs); the weights stay fp32 either way."""
    if dtype in ("bfloat16", "bf16") or (dtype == "auto" and native_bf16(device)):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16), "bfloat16"
    return nullcontext(), "float32"


def compile_errors() -> tuple[type[BaseException], ...]:
    """What a failed torch.compile raises (no C++ compiler, unsupported platform); imported only when needed."""
    import torch._dynamo.exc
    import torch._inductor.exc

    return torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.CppCompileError


# ---------------------------------------------------------------------------------------------
# what a kind of training supplies
# ---------------------------------------------------------------------------------------------
@dataclass
class Micro:
    """One micro-batch of this process: inputs, targets, its share of the step's loss and its token count.

    The weights of a step's micro-batches sum to 1 on each process for a plain mean (``1 / grad_accum`` each);
    a token-weighted mean over all processes gives each ``its tokens * world_size / all tokens of the step``
    (DDP averages the processes' gradients)."""

    x: torch.Tensor
    y: torch.Tensor
    weight: float = 1.0
    tokens: int = 0


@dataclass
class Task:
    model: nn.Module  # the module being trained (a GPT, or a PEFT-wrapped GPT); the loop may compile/DDP-wrap it
    optimizer: torch.optim.Optimizer
    batches: Callable[[int], list[Micro]]  # this process's micro-batches of optimizer step ``step`` (0-based)
    lr: Callable[[int, float], float]  # learning rate of ``step`` after ``elapsed`` seconds of training
    evaluate: Callable[[], float | None]  # validation loss (None: nothing to validate on, or stopped midway)
    save: Callable[[str], str | None]  # resumable checkpoint (rank 0 only); returns the folder it wrote, if any
    keep_best: Callable[[], None] | None = None  # early stopping: keep the current weights as the best (rank 0)
    sample: Callable[[int], str] | None = None  # a text sample at step ``step`` (rank 0)
    forward_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. loss_only=True


@dataclass
class LoopConfig:
    max_steps: int | None
    max_time: float | None = None  # seconds of training (including earlier sessions of a resumed run)
    grad_clip: float = 1.0  # 0 = off
    eval_interval: int = 0  # steps between evaluations (0 = only at the end)
    eval_every_s: float | None = None  # also evaluate after this many seconds of training
    eval_at_start: bool = False
    sample_interval: int = 0
    sample_at_eval: bool = False
    checkpoint_interval: int = 0  # 0 = only at the end (and on stop)
    patience: int = 0  # early stopping: stop after this many evaluations without a new best (0 = off)
    compile: bool = False
    dtype: str = "auto"  # auto | float32 | bfloat16


@dataclass
class LoopResult:
    stop_reason: str  # max_steps | max_time | stopped | early_stop
    losses: list[float]  # train loss of each step of this call
    val_loss: float | None
    train_s: float  # the loop of this call
    step_s: float  # of which in optimizer steps
    tokens: int  # trained in this call (all processes)
    amp_dtype: str
    compiled: bool


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
class Loop:
    """Setup in ``__init__``, one optimizer step in :meth:`step`, and the loop itself in :meth:`run`."""

    def __init__(self, task: Task, cfg: LoopConfig, state: TrainState, ddp: Dist, device: torch.device,
                 emit: Callable[[TrainEvent], None], stop_event: threading.Event | None = None) -> None:
        self.task, self.cfg, self.state, self.ddp, self.device = task, cfg, state, ddp, device
        self.emit = emit if ddp.master else (lambda ev: None)  # only rank 0 logs
        self.stop_event = stop_event or threading.Event()
        self.autocast, self.amp_dtype = autocast_for(device, cfg.dtype)
        self.params = [p for g in task.optimizer.param_groups for p in g["params"]]
        self.fwd: nn.Module = torch.compile(task.model) if cfg.compile else task.model
        self.compiled = cfg.compile
        self.compile_pending = cfg.compile and ddp.world_size == 1  # (under DDP every rank must agree: no fallback)
        if ddp.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.fwd = DDP(self.fwd, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            self.emit(StatusEvent("compiling the model with torch.compile: the first step takes a while (~40 s on 2 "
                                  "CPU cores, seconds once cached)"))
        self.losses: list[float] = []
        self.last_eval_s = state.elapsed_s

    def micro_step(self, m: Micro, last: bool) -> torch.Tensor:
        """Forward + backward of one micro-batch; DDP syncs gradients on the last micro-step only."""
        sync = self.fwd.no_sync() if self.ddp.world_size > 1 and not last else nullcontext()  # type: ignore[operator]
        with sync:
            with self.autocast:
                _, loss = self.fwd(m.x, m.y, **self.task.forward_kwargs)
                if m.weight != 1.0:
                    loss = loss * m.weight
            loss.backward()
        return loss.detach()

    def first_micro_step(self, m: Micro, last: bool) -> torch.Tensor:
        """The first call compiles; without a working compiler, go on without it from the same RNG state."""
        self.compile_pending = False
        rng = torch.get_rng_state()
        try:
            return self.micro_step(m, last)
        except compile_errors() as e:
            log.warning("torch.compile failed, training without it: %s", e)
            self.emit(StatusEvent(f"torch.compile failed ({type(e).__name__}); training without it"))
            torch.set_rng_state(rng)
            self.task.optimizer.zero_grad(set_to_none=True)
            self.fwd, self.compiled = self.task.model, False
            return self.micro_step(m, last)

    def step(self, lr: float) -> tuple[float, int, float | None]:
        """One optimizer step: (mean loss over all processes, tokens over all processes, grad norm before clip)."""
        for group in self.task.optimizer.param_groups:
            group["lr"] = lr
        micros = self.task.batches(self.state.step)
        loss_sum, tokens = torch.zeros((), device=self.device), 0
        for i, m in enumerate(micros):
            run = self.first_micro_step if self.compile_pending else self.micro_step
            loss_sum += run(m, i == len(micros) - 1)
            tokens += m.tokens
        grad_norm = None
        if self.cfg.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip, foreach=True))
        self.task.optimizer.step()
        self.task.optimizer.zero_grad(set_to_none=True)
        loss, n = self.ddp.reduce([float(loss_sum), float(tokens)], self.device)
        return loss / self.ddp.world_size, int(n), grad_norm

    def evaluate(self) -> float | None:
        """Validation loss; tracks the best one and how many evaluations since (early stopping)."""
        vl = self.task.evaluate()
        if vl is None:
            return None
        st = self.state
        st.last_val_loss, st.last_val_step, self.last_eval_s = vl, st.step, st.elapsed_s
        best = st.best_val_loss is None or vl < st.best_val_loss
        if best:
            st.best_val_loss, st.best_step, st.evals_since_best = vl, st.step, 0
            if self.cfg.patience and self.task.keep_best is not None and self.ddp.master:
                self.task.keep_best()
        else:
            st.evals_since_best += 1
        self.emit(EvalEvent(st.step, vl, math.exp(min(vl, 50.0)), self.losses[-1] if self.losses else None,
                            self.cfg.max_steps, best))
        if self.cfg.sample_at_eval and self.task.sample is not None and self.ddp.master:
            self.emit(SampleEvent(st.step, self.task.sample(st.step)))
        return vl

    def eval_due(self) -> bool:
        due = bool(self.cfg.eval_interval) and self.state.step % self.cfg.eval_interval == 0
        if self.cfg.eval_every_s:  # clocks differ between ranks; every rank must run the same evaluation
            late = self.state.elapsed_s - self.last_eval_s >= self.cfg.eval_every_s
            due = due or bool(self.ddp.reduce([float(late)], self.device, "max")[0])
        return due

    def stop_reason(self, elapsed: float) -> str:
        """Why to stop now ("" to go on); all ranks agree, or one would wait forever in an all-reduce."""
        cfg, st = self.cfg, self.state
        flags = [cfg.max_steps is not None and st.step >= cfg.max_steps,
                 cfg.max_time is not None and elapsed >= cfg.max_time, self.stop_event.is_set(),
                 bool(cfg.patience) and st.evals_since_best >= cfg.patience]
        flags = [bool(v) for v in self.ddp.reduce([float(f) for f in flags], self.device, "max")]
        return STOP_REASONS[flags.index(True)] if any(flags) else ""

    def save(self, reason: str) -> None:
        if self.ddp.master:
            path = self.task.save(reason)
            if path is not None:
                self.emit(CheckpointEvent(self.state.step, str(path), reason))
        self.ddp.barrier()

    def run(self) -> LoopResult:
        cfg, st = self.cfg, self.state
        if cfg.eval_at_start and st.step == 0:
            self.evaluate()
        t_loop, elapsed0, start_step = time.perf_counter(), st.elapsed_s, st.step
        step_time, tokens_run, ema_dt = 0.0, 0, None
        while True:
            elapsed = elapsed0 + time.perf_counter() - t_loop
            reason = self.stop_reason(elapsed)
            if reason:
                break

            t0 = time.perf_counter()
            lr = self.task.lr(st.step, elapsed)
            loss, tokens, grad_norm = self.step(lr)
            dt = time.perf_counter() - t0
            step_time += dt
            st.step += 1
            st.tokens_seen += tokens
            tokens_run += tokens
            self.losses.append(loss)
            ema_dt = dt if ema_dt is None or st.step - start_step <= 3 else 0.9 * ema_dt + 0.1 * dt
            st.elapsed_s = elapsed = elapsed0 + time.perf_counter() - t_loop
            eta = (cfg.max_steps - st.step) * ema_dt if cfg.max_steps is not None else None
            if cfg.max_time is not None:
                eta = min(eta if eta is not None else math.inf, max(0.0, cfg.max_time - elapsed))
            self.emit(StepEvent(st.step, cfg.max_steps, loss, lr, tokens / ema_dt, st.tokens_seen, elapsed, eta,
                                grad_norm, dt))
            if not math.isfinite(loss):
                raise FloatingPointError(f"training diverged at step {st.step} (loss {loss}); "
                                         "lower the learning rate")

            sampled = False
            if self.eval_due():
                self.evaluate()
                sampled = cfg.sample_at_eval
            if (cfg.sample_interval and st.step % cfg.sample_interval == 0 and self.ddp.master and not sampled
                    and self.task.sample is not None):
                self.emit(SampleEvent(st.step, self.task.sample(st.step)))
            last = cfg.max_steps is not None and st.step >= cfg.max_steps
            if cfg.checkpoint_interval and st.step % cfg.checkpoint_interval == 0 and not last:
                self.save("interval")

        train_s = time.perf_counter() - t_loop
        st.elapsed_s = elapsed0 + train_s
        val = st.last_val_loss if st.last_val_step == st.step else None
        if val is None and st.step > 0:
            val = self.evaluate()
        self.save(reason)
        return LoopResult(reason, self.losses, val, train_s, step_time, tokens_run, self.amp_dtype, self.compiled)


def run_loop(task: Task, cfg: LoopConfig, state: TrainState, ddp: Dist, device: torch.device,
             emit: Callable[[TrainEvent], None], stop_event: threading.Event | None = None) -> LoopResult:
    """Train ``task`` from ``state`` until a budget, a stop request or early stopping ends it (see module doc)."""
    return Loop(task, cfg, state, ddp, device, emit, stop_event).run()
