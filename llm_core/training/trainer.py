"""Pretraining loop: AdamW + warmup/cosine, clipping, accumulation, bf16 autocast, DDP, exact resume.

``train(cfg, callbacks=..., stop_event=...)`` is the one entry point (the CLI, the UI and ``torchrun`` all use
it). The output folder is a normal checkpoint (``llm_core.weights.hub.load_model(out_dir)`` chats with it) plus a
``train_state/`` subfolder holding what an exact resume needs: optimizer moments, RNG states and the step.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.tokenizer import Tokenizer
from llm_core.training.data import StopRequested, TokenData, prepare_dataset
from llm_core.training.heap import eager_release
from llm_core.training.lr_schedule import cosine_lr, cosine_lr_by_progress
from llm_core.training.train_events import StatusEvent, TrainEvent
from llm_core.training.train_loop import (
    Dist,
    LoopConfig,
    Micro,
    Task,
    autocast_for,
    compile_errors,
    distributed,
    run_loop,
    setup_distributed,
)
from llm_core.training.train_state import TrainState, has_train_state, load_train_state, restore_rng, save_run

log = logging.getLogger(__name__)

Callback = Callable[[TrainEvent], None]
MAX_WARMUP_FRACTION = 0.05  # with a time budget, warmup ends after warmup_steps or 5% of the time, if sooner
MODEL_FIELDS = ("arch", "n_layer", "n_head", "n_embd", "n_kv_head", "block_size", "intermediate_size", "bias",
                "activation")


@dataclass
class TrainConfig:
    """Everything a pretraining run needs; every field has a CLI flag of the same name."""

    data: str | list[str] = "shakespeare"  # "shakespeare" (built-in), or text files / folders
    tokenizer: str = "char"  # "char" | "bpe:N" | model name or checkpoint folder (reuse its tokenizer)
    preset: str = "nano"  # ModelConfig preset; the fields below override it
    out_dir: str = ""  # "" -> data_dir()/checkpoints/<preset>-<tokenizer>
    arch: str | None = None
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    n_kv_head: int | None = None
    block_size: int | None = None
    intermediate_size: int | None = None
    bias: bool | None = None
    activation: str | None = None  # gpt2: gelu_tanh (GPT-2) | gelu (exact, nanoGPT); llama: silu
    dropout: float = 0.0
    # optimisation
    batch_size: int = 12  # sequences per micro-step per process
    grad_accum: int = 1  # micro-steps per optimizer step
    max_steps: int | None = 2000
    max_time: float | None = None  # seconds of training; the cosine then follows the clock
    lr: float = 1e-3
    min_lr: float | None = None  # None -> lr / 10
    warmup_steps: int = 100
    lr_decay_steps: int | None = None  # None -> max_steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 = off
    # monitoring
    eval_interval: int = 250
    eval_batches: int = 20
    eval_every_s: float | None = None  # also evaluate after this many seconds of training (time budgets)
    eval_at_start: bool = False  # evaluate before the first step of a new run: the curve's starting point
    sample_at_eval: bool = False  # a text sample with every evaluation (the UI shows them side by side)
    sample_interval: int = 500  # 0 = no samples
    sample_tokens: int = 200
    sample_prompt: str = ""
    checkpoint_interval: int = 500  # 0 = only at the end (and on stop)
    patience: int = 0  # early stopping: stop after this many evaluations without a lower validation loss (0 = off)
    # system
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 autocast on CUDA with bf16 and on CPUs with AMX, else fp32) | float32 | bfloat16
    compile: bool = False
    gradient_checkpointing: bool = False  # low memory: recompute blocks in backward (CPU: ~2x slower steps)
    num_threads: int | None = None  # CPU threads (None: torch default; divided among DDP processes)
    optimizer_impl: str = "auto"  # auto | fused | foreach | for
    val_fraction: float = 0.1
    data_cache: str = ""  # "" -> data_dir()/datasets
    resume: bool = False

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_time is None:
            raise ValueError("give max_steps or max_time (or both) so the run knows when to stop")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0 (0 = no early stopping), got {self.patience}")
        for name in ("batch_size", "grad_accum", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_time is not None and self.max_time <= 0:
            raise ValueError(f"max_time must be > 0 seconds, got {self.max_time}")
        if not 0 < self.lr <= 1:  # also NaN; above 1 the weights blow up (loss 21 at lr 1e6)
            raise ValueError(f"lr must be > 0 and at most 1 (useful values are about 1e-5 to 1e-2), got {self.lr:g}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.optimizer_impl not in ("auto", "fused", "foreach", "for"):
            raise ValueError(f"optimizer_impl must be auto, fused, foreach or for, got {self.optimizer_impl!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def min_lr_value(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# Named recipes for the UI and CLI (--recipe). Values override TrainConfig defaults.
PRETRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # nanoGPT's documented CPU recipe for shakespeare_char (README "I only have a macbook")
    "nanogpt-cpu": dict(preset="nano", tokenizer="char", bias=False, activation="gelu", block_size=64,
                        batch_size=12, max_steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100, beta2=0.99,
                        dropout=0.0, eval_interval=250, eval_batches=20),
    # our default: the best validation loss we found for ~3 minutes of a 2-core CPU (bench/pretrain_shakespeare.py):
    # the Llama family (RoPE, SwiGLU, RMSNorm) learns far faster per token than GPT-2's learned positions
    # (val 1.68 vs 1.90 after the same 1.5M characters), and batch 32 with lr 2e-3 uses the cores better
    # torch.compile fuses the many small ops of so small a model: 1.3x faster steps in fp32, 2.3x with bf16 on an
    # AMX CPU; it costs ~40 s of the budget the first time (seconds once cached) and falls back if it fails
    "cpu-3min": dict(preset="nano-llama", tokenizer="char", block_size=64, batch_size=32, max_steps=None,
                     max_time=180.0, lr=2e-3, min_lr=2e-4, warmup_steps=100, beta2=0.99, eval_interval=250,
                     eval_batches=20, sample_interval=500, checkpoint_interval=500, compile=True),
    # a few seconds; for tests and smoke runs
    "tiny": dict(preset="tiny-gpt2", tokenizer="char", block_size=32, batch_size=4, max_steps=20, warmup_steps=2,
                 eval_interval=10, eval_batches=2, sample_interval=0, checkpoint_interval=0),
    # the Pretrain tab's runs and the scaling ladder (llm_core.labs.scaling): nanoGPT's CPU optimiser, a validation loss
    # and a text sample at the start and over the budget (budget_recipe spreads them), a checkpoint at the end
    "pretrain-tab": dict(preset="nano", tokenizer="char", batch_size=12, lr=1e-3, min_lr=1e-4, beta2=0.99,
                         eval_batches=10, eval_at_start=True, sample_at_eval=True, sample_interval=0,
                         sample_tokens=160, checkpoint_interval=0),
}
DEFAULT_RECIPE = "cpu-3min"


def recipe(name: str = DEFAULT_RECIPE, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a named recipe in PRETRAIN_PRESETS plus overrides."""
    if name not in PRETRAIN_PRESETS:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(PRETRAIN_PRESETS)}")
    return TrainConfig(**{**PRETRAIN_PRESETS[name], **overrides})


def budget_recipe(name: str, max_steps: int | None, max_time: float | None, evals: int = 12,
                  **overrides: Any) -> TrainConfig:
    """A named recipe fitted to a step and/or time budget: warmup a tenth of the steps (at most 100) and about
    ``evals`` evaluations over the budget, by steps or by the clock, whichever the budget is (a step count
    guessed for a time budget left a slow machine with no sample in its first minutes)."""
    horizon = max_steps or 3000  # warmup only: a time budget on a CPU runs a few thousand steps of the nano model
    fitted = dict(max_steps=max_steps, max_time=max_time, warmup_steps=min(100, max(1, horizon // 10)),
                  eval_interval=max(5, max_steps // evals) if max_steps and evals else 0,
                  eval_every_s=max(5.0, max_time / evals) if max_time and evals else None)
    return recipe(name, **{**fitted, **overrides})


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    tokens_seen: int
    train_loss: float | None
    val_loss: float | None
    val_ppl: float | None
    wall_s: float  # the whole call, including data preparation
    train_s: float  # the training loop of this call
    tokens_per_s: float  # training tokens / time spent in optimizer steps (this call)
    stop_reason: str  # max_steps | max_time | stopped
    losses: list[float] = field(default_factory=list)  # train loss of each step run in this call
    model_config: dict[str, Any] = field(default_factory=dict)
    amp_dtype: str = "float32"  # what the matmuls ran in: "bfloat16" (autocast) or "float32"
    compiled: bool = False  # torch.compile ran (False when it was off or fell back to eager)


# ---------------------------------------------------------------------------------------------
# setup helpers
# ---------------------------------------------------------------------------------------------
_Dist = Dist  # (their old names)
_setup_distributed = setup_distributed
_compile_errors = compile_errors


def build_model_config(cfg: TrainConfig, tokenizer: Any) -> ModelConfig:
    overrides = {k: getattr(cfg, k) for k in MODEL_FIELDS if getattr(cfg, k) is not None}
    overrides.update(vocab_size=tokenizer.vocab_size, dropout=cfg.dropout, bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id)
    return ModelConfig.from_preset(cfg.preset, **overrides)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (linear weights, embeddings); none on biases and norm gains (1-D)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # tied weights are yielded once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    impl = cfg.optimizer_impl
    if impl == "auto":  # one fused kernel per tensor on CUDA and CPU; foreach elsewhere (mps)
        impl = "fused" if device.type in ("cuda", "cpu") else "foreach"
    kw = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **kw)


def _autocast(cfg: TrainConfig, device: torch.device):
    return autocast_for(device, cfg.dtype)


@torch.no_grad()
def estimate_loss(model: nn.Module, data: TokenData, split: str, batches: int, batch_size: int, block_size: int,
                  device: torch.device | str = "cpu", seed: int = 0, autocast=None, rank: int = 0,
                  world_size: int = 1, stop_event: threading.Event | None = None) -> float:
    """Mean cross-entropy over ``batches`` random blocks drawn with a fixed seed (comparable across evals;
    leaves the training RNG untouched)."""
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    for _ in range(batches):
        if stop_event is not None and stop_event.is_set() and n > 0 and world_size == 1:
            break  # (with several ranks every one must run the same all-reduce, so no early exit)
        x, y = data.get_batch(split, batch_size, block_size, g, rank, world_size, device)
        with autocast or nullcontext():
            _, loss = model(x, y)
        total += loss.double()
        n += 1
    if world_size > 1:
        dist.all_reduce(total)
        total /= world_size
    model.train(was_training)
    return float(total / n)


def _sample(model: GPT, tokenizer: Any, cfg: TrainConfig, step: int) -> str:
    """Sample a few tokens without touching the training RNG (so resumed runs stay exact)."""
    from llm_core.generation.generate import GenerationConfig, generate

    prompt = cfg.sample_prompt
    ids = tokenizer.encode(prompt, allowed_special=set()) if prompt else []
    if not ids:
        start = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else None
        ids = [start] if start is not None else tokenizer.encode("\n", allowed_special=set())[:1] or [0]
    ids = ids[-(model.config.block_size // 2):]
    gen = GenerationConfig(max_new_tokens=min(cfg.sample_tokens, model.config.block_size - len(ids)),
                           temperature=0.8, top_k=50, seed=cfg.seed + step, stop_on_eos=False)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            out = generate(model, tokenizer, ids, gen)
    finally:
        model.train(was_training)
    return prompt + tokenizer.decode(out)


def _as_callbacks(callbacks: Callback | Sequence[Callback] | None) -> list[Callback]:
    if callbacks is None:
        return []
    return [callbacks] if callable(callbacks) else list(callbacks)


def default_out_dir(cfg: TrainConfig) -> Path:
    from llm_core.paths import checkpoints_dir

    tok = cfg.tokenizer.replace(":", "").replace("/", "_").replace("\\", "_")
    return checkpoints_dir() / f"{cfg.preset}-{tok}"


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, callbacks: Callback | Sequence[Callback] | None = None,
          stop_event: threading.Event | None = None) -> TrainResult:
    """Run (or resume) pretraining; returns when max_steps/max_time is reached or ``stop_event`` is set.

    A checkpoint is written every ``checkpoint_interval`` steps and always at the end (also when stopped),
    so the folder is loadable whenever this returns. The loop itself is ``llm_core.training.train_loop``'s, shared with
    LoRA fine-tuning; this function only sets up what pretraining trains on.
    """
    t_call = time.perf_counter()
    cbs = _as_callbacks(callbacks)
    stop_event = stop_event or threading.Event()

    def emit(ev: TrainEvent) -> None:
        for cb in cbs:
            cb(ev)

    with ExitStack() as stack:
        ddp, device = stack.enter_context(distributed(cfg.device, cfg.num_threads))
        # low-memory runs hand freed activations back to the OS (llm_core.training.heap)
        stack.enter_context(eager_release(cfg.gradient_checkpointing and device.type == "cpu"))
        master_emit = emit if ddp.master else (lambda ev: None)
        out_dir, resume_state = _open_run(cfg)
        try:
            data, tokenizer = _prepare_data(cfg, resume_state, ddp, master_emit, stop_event)
        except StopRequested:
            return TrainResult(str(out_dir), 0, 0, None, None, None, time.perf_counter() - t_call, 0.0, 0.0,
                               "stopped")
        model, optimizer, gen, state = _build_model(cfg, tokenizer, data, resume_state, device)
        task = _pretrain_task(cfg, model, tokenizer, optimizer, gen, state, data, out_dir, ddp, device,
                              stop_event)
        tokens_per_step = cfg.batch_size * model.config.block_size * cfg.grad_accum * ddp.world_size
        loop_cfg = LoopConfig(max_steps=cfg.max_steps, max_time=cfg.max_time, grad_clip=cfg.grad_clip,
                              eval_interval=cfg.eval_interval, eval_every_s=cfg.eval_every_s,
                              eval_at_start=cfg.eval_at_start, sample_interval=cfg.sample_interval,
                              sample_at_eval=cfg.sample_at_eval and cfg.sample_tokens > 0,
                              checkpoint_interval=cfg.checkpoint_interval, patience=cfg.patience,
                              compile=cfg.compile, dtype=cfg.dtype)
        master_emit(StatusEvent(f"training {model.num_params() / 1e6:.2f}M parameters on {device} "
                                f"({autocast_for(device, cfg.dtype)[1]}), {ddp.world_size} process(es), "
                                f"{tokens_per_step} tokens/step"))
        res = run_loop(task, loop_cfg, state, ddp, device, emit, stop_event)
        val = res.val_loss
        return TrainResult(
            out_dir=str(out_dir), steps=state.step, tokens_seen=state.tokens_seen,
            train_loss=res.losses[-1] if res.losses else None, val_loss=val,
            val_ppl=math.exp(min(val, 50.0)) if val is not None else None,
            wall_s=time.perf_counter() - t_call, train_s=res.train_s,
            tokens_per_s=res.tokens / res.step_s if res.step_s > 0 else 0.0,
            stop_reason=res.stop_reason, losses=res.losses, model_config=model.config.to_dict(),
            amp_dtype=res.amp_dtype, compiled=res.compiled)


# ---------------------------------------------------------------------------------------------
# setup: the run folder, data, model, and the task the shared loop trains
# ---------------------------------------------------------------------------------------------
def _open_run(cfg: TrainConfig) -> tuple[Path, Any]:
    """(output folder, what --resume continues from or None); refuses to overwrite a folder that is no run."""
    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg)
    resume_state = load_train_state(out_dir) if cfg.resume else None
    if cfg.resume and resume_state is None:
        raise FileNotFoundError(f"--resume: no training state in {out_dir} (train without --resume first)")
    if not cfg.resume and out_dir.exists() and any(out_dir.iterdir()) and not has_train_state(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a training run; choose another output folder "
                              "(a new run replaces the whole folder)")
    return out_dir, resume_state


def _prepare_data(cfg: TrainConfig, resume_state: Any, ddp: Dist, emit: Callback,
                  stop_event: threading.Event) -> tuple[TokenData, Any]:
    """Token files + tokenizer; rank 0 prepares the cache, the others then read it."""
    from llm_core.paths import data_dir

    cache_root = Path(cfg.data_cache) if cfg.data_cache else data_dir() / "datasets"
    saved_tok = resume_state.tokenizer if resume_state is not None else None
    emit(StatusEvent("preparing data"))

    def progress(stage: str, done: int, total: int) -> None:
        emit(StatusEvent(f"{stage}: {done}/{total}", done=done, total=total))

    def prep() -> tuple[TokenData, Any]:
        if resume_state is not None and resume_state.state.dataset:  # the run's own token files, if intact
            try:
                folder = Path(resume_state.state.dataset)
                if Tokenizer.load(folder).to_state() == saved_tok.to_state():
                    return TokenData(folder), saved_tok
            except (OSError, ValueError):
                pass
        return prepare_dataset(cfg.data, cfg.tokenizer, cache_root, cfg.val_fraction, tokenizer=saved_tok,
                               progress=progress, should_stop=stop_event.is_set)

    if ddp.master:
        prepared = prep()
    ddp.barrier()
    if not ddp.master:
        prepared = prep()
    return prepared


def _build_model(cfg: TrainConfig, tokenizer: Any, data: TokenData, resume_state: Any, device: torch.device
                 ) -> tuple[GPT, torch.optim.AdamW, torch.Generator, TrainState]:
    """A fresh model (seeded) or the resumed one, its optimizer, the batch sampler's generator and the counters."""
    if resume_state is not None:
        model = resume_state.model
    else:
        torch.manual_seed(cfg.seed)
        model = GPT(build_model_config(cfg, tokenizer))
    model.to(device).train()
    optimizer = build_optimizer(model, cfg, device)
    gen = torch.Generator().manual_seed(cfg.seed)  # batch sampling; identical on every rank
    state = TrainState(dataset=str(data.folder))
    if resume_state is not None:
        optimizer.load_state_dict(resume_state.optimizer_state)
        state = resume_state.state
        state.dataset = str(data.folder)
        restore_rng(resume_state.rng, device, gen)
    model.gradient_checkpointing = cfg.gradient_checkpointing
    return model, optimizer, gen, state


def _pretrain_task(cfg: TrainConfig, model: GPT, tokenizer: Any, optimizer: torch.optim.Optimizer,
                   gen: torch.Generator, state: TrainState, data: TokenData, out_dir: Path, ddp: Dist,
                   device: torch.device, stop_event: threading.Event) -> Task:
    """Pretraining as a Task: random blocks of the token file, nanoGPT's schedule (or the clock's), full
    checkpoints with the training state."""
    block_size = model.config.block_size
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    time_schedule = cfg.max_time is not None and cfg.lr_decay_steps is None
    autocast = autocast_for(device, cfg.dtype)[0]

    def batches(step: int) -> list[Micro]:
        out = []
        for _ in range(cfg.grad_accum):
            x, y = data.get_batch("train", cfg.batch_size, block_size, gen, ddp.rank, ddp.world_size, device)
            out.append(Micro(x, y, 1.0 / cfg.grad_accum, cfg.batch_size * block_size))
        return out

    def lr_for(step: int, elapsed: float) -> float:
        if not time_schedule:
            return cosine_lr(step, cfg.lr, cfg.min_lr_value, cfg.warmup_steps, decay_steps or 1)
        progress_ = elapsed / cfg.max_time  # type: ignore[operator]
        if cfg.max_steps is not None:
            progress_ = max(progress_, step / cfg.max_steps)
        if state.warmup_end_progress is None:
            if step < cfg.warmup_steps and progress_ < MAX_WARMUP_FRACTION:  # a slow machine still warms up
                return cfg.lr * max((step + 1) / (cfg.warmup_steps + 1), progress_ / MAX_WARMUP_FRACTION)
            state.warmup_end_progress = progress_
        return cosine_lr_by_progress(step, progress_, cfg.lr, cfg.min_lr_value, 0, state.warmup_end_progress)

    def evaluate() -> float:
        return estimate_loss(model, data, "val", cfg.eval_batches, cfg.batch_size, block_size, device,
                             seed=cfg.seed + 1, autocast=autocast, rank=ddp.rank, world_size=ddp.world_size)

    def save(reason: str) -> str:
        save_run(out_dir, model, tokenizer, optimizer, gen, state, cfg)
        return str(out_dir)

    return Task(model, optimizer, batches, lr_for, evaluate, save,
                sample=lambda step: _sample(model, tokenizer, cfg, step))
