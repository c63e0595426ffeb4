"""FinetuneConfig: every choice of a LoRA run in one typed, JSON-serialisable dataclass (CLI, UI and resume)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SCHEDULES = ("cosine", "linear", "constant")


# fields that took pretraining's names (llm_core.training.trainer.TrainConfig): old name -> new
RENAMED = {"max_grad_norm": "grad_clip", "eval_every": "eval_interval", "max_eval_batches": "eval_batches",
           "save_every": "checkpoint_interval"}


@dataclass
class FinetuneConfig:
    model: str = "smollm2-135m-instruct"  # name for llm_core.weights.hub.load_model, or a checkpoint folder
    data: str = "demo"  # dataset file (.json/.jsonl/.csv/.parquet/.txt) or "demo"
    out_dir: str | None = None  # adapter folder; None -> data_dir()/adapters/<model>-<data>
    data_format: str = "auto"  # auto | alpaca | chat | sharegpt | text
    val_data: str | None = None  # separate validation file; otherwise val_fraction of data
    val_fraction: float = 0.1
    max_length: int = 256  # tokens per sequence (longer ones are truncated and counted)
    # LoRA
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))  # missing ones skipped
    # optimisation
    lr: float = 2e-4
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    warmup_steps: int = 0  # optimizer steps; 0 -> 5% of the run
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    epochs: float = 3.0
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 8
    grad_accum: int = 1
    gradient_checkpointing: bool = False  # low memory: recompute blocks in backward (CPU: ~2x slower steps)
    seed: int = 0
    # bookkeeping
    eval_interval: int = 25  # optimizer steps between validation passes (and at the end)
    eval_at_start: bool = True  # a validation pass before the first step: the curve's starting point
    patience: int = 0  # early stopping: stop after this many evaluations without a new best; the best adapter is kept
    eval_batches: int = 8
    checkpoint_interval: int = 50  # optimizer steps between resumable checkpoints (and on stop)
    log_every: int = 1
    resume: bool = True  # continue from out_dir's latest checkpoint when there is one
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto | fp32 | bf16
    num_threads: int | None = None  # torch CPU threads (None: leave torch's default)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.lr <= 1:  # also NaN; above 1 the weights blow up (loss 21 at lr 1e6)
            raise ValueError(f"lr must be > 0 and at most 1 (useful values are about 1e-5 to 1e-2), got {self.lr:g}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_steps is None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0 (0 = no early stopping), got {self.patience}")
        if not self.target_modules:
            raise ValueError("target_modules is empty: name at least one projection to adapt")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")
        if not 0 <= self.seed < 2**63:  # torch.manual_seed overflows beyond; same rule as GenerationConfig
            raise ValueError(f"seed must be a whole number from 0 to 2^63 - 1, got {self.seed}")

    @classmethod
    def for_demo(cls, **overrides: Any) -> FinetuneConfig:
        """Settings that teach the demo skill in a few minutes on a laptop CPU (24 steps of 8 examples;
        held-out exact match goes from 0% to >80%, see bench/finetune.py)."""
        d: dict[str, Any] = dict(data="demo", rank=16, alpha=32.0, dropout=0.0, lr=2e-3, batch_size=8,
                                 max_steps=24, warmup_steps=3, eval_interval=6, checkpoint_interval=12)
        d.update(overrides)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        """Settings from a saved ``finetune.json`` (runs written before the names matched pretraining's included)."""
        d = {RENAMED.get(k, k): v for k, v in d.items()}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
