"""Progress events the trainer sends to callbacks (the UI plots them; the CLI feeds tqdm)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StatusEvent:
    """A phase change or data-preparation progress ("training tokenizer", "encode: 3/5")."""

    message: str
    done: int | None = None
    total: int | None = None


@dataclass
class StepEvent:
    """After every optimizer step."""

    step: int  # optimizer steps completed
    max_steps: int | None
    loss: float  # training loss of this step (mean over its micro-batches)
    lr: float
    tokens_per_s: float  # smoothed
    tokens_seen: int
    elapsed_s: float  # training time so far, including earlier sessions of a resumed run
    eta_s: float | None  # until max_steps / max_time, whichever comes first
    grad_norm: float | None  # before clipping
    step_s: float = 0.0  # wall time of this optimizer step (forward, backward, update)


@dataclass
class EvalEvent:
    step: int
    val_loss: float
    val_ppl: float
    train_loss: float | None  # the last step's training loss, for the plot


@dataclass
class SampleEvent:
    step: int
    text: str


@dataclass
class CheckpointEvent:
    step: int
    path: str
    reason: str  # interval | max_steps | max_time | stopped


TrainEvent = StatusEvent | StepEvent | EvalEvent | SampleEvent | CheckpointEvent
