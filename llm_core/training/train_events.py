"""Progress events the training loop sends to callbacks (the UI plots them; the CLIs feed tqdm).

One family for pretraining and LoRA fine-tuning alike. Each event has a ``kind`` (``info``, ``step``, ``eval``,
``sample``, ``checkpoint``, or ``done``/``stopped``/``error`` at the end) and a ``message`` in words, so a simple
consumer can log ``ev.message`` and branch on ``ev.kind`` without importing the classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass
class StatusEvent:
    """A phase change or data-preparation progress ("training tokenizer", "encode: 3/5")."""

    message: str
    done: int | None = None
    total: int | None = None
    kind: ClassVar[str] = "info"


@dataclass
class StepEvent:
    """After every optimizer step."""

    step: int  # optimizer steps completed
    max_steps: int | None
    loss: float  # training loss of this step (mean over its micro-batches, and over all processes)
    lr: float
    tokens_per_s: float  # smoothed
    tokens_seen: int
    elapsed_s: float  # training time so far, including earlier sessions of a resumed run
    eta_s: float | None  # until max_steps / max_time, whichever comes first
    grad_norm: float | None  # before clipping
    step_s: float = 0.0  # wall time of this optimizer step (forward, backward, update)
    kind: ClassVar[str] = "step"

    @property
    def total_steps(self) -> int | None:
        return self.max_steps

    @property
    def message(self) -> str:
        return f"step {self.step}: loss {self.loss:.4f}, lr {self.lr:.2e}"


@dataclass
class EvalEvent:
    step: int
    val_loss: float
    val_ppl: float
    train_loss: float | None  # the last step's training loss, for the plot (None: before the first step)
    max_steps: int | None = None
    best: bool = False  # the lowest validation loss of the run so far
    kind: ClassVar[str] = "eval"

    @property
    def eval_loss(self) -> float:
        return self.val_loss

    @property
    def total_steps(self) -> int | None:
        return self.max_steps

    @property
    def message(self) -> str:
        train = f" (train {self.train_loss:.4f})" if self.train_loss is not None else " (before training)"
        return f"step {self.step}: validation loss {self.val_loss:.4f}{train}" + (", best so far" if self.best else "")


@dataclass
class SampleEvent:
    step: int
    text: str
    kind: ClassVar[str] = "sample"

    @property
    def message(self) -> str:
        return f"sample at step {self.step}: {self.text}"


@dataclass
class CheckpointEvent:
    step: int
    path: str
    reason: str  # interval | max_steps | max_time | early_stop | stopped
    kind: ClassVar[str] = "checkpoint"

    @property
    def message(self) -> str:
        return self.path


@dataclass
class EndEvent:
    """The run is over: ``kind`` is done, stopped or error; ``message`` says where the result is (or what failed)."""

    kind: str
    step: int = 0
    max_steps: int | None = None
    loss: float | None = None
    eval_loss: float | None = None
    message: str = ""

    @property
    def total_steps(self) -> int | None:
        return self.max_steps


TrainEvent = StatusEvent | StepEvent | EvalEvent | SampleEvent | CheckpointEvent | EndEvent
