"""Pretraining loop: AdamW + warmup/cosine, clipping, accumulation, bf16 autocast, DDP, exact resume.

``train(cfg, callbacks=..., stop_event=...)`` is the one entry point (the CLI, the UI and ``torchrun`` all use
it). The output folder is a normal checkpoint (``llm_core.hub.load_model(out_dir)`` chats with it) plus a
``train_state/`` subfolder holding what an exact resume needs: optimizer moments, RNG states and the step.
"""

from __future__ import annotations

import logging
import math
import os
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

from llm_core.config import ModelConfig
from llm_core.data import StopRequested, TokenData, prepare_dataset
from llm_core.heap import eager_release
from llm_core.lr_schedule import cosine_lr, cosine_lr_by_progress
from llm_core.model import GPT
from llm_core.precision import native_bf16
from llm_core.tokenizer import Tokenizer
from llm_core.train_events import (
    CheckpointEvent,
    EvalEvent,
    SampleEvent,
    StatusEvent,
    StepEvent,
    TrainEvent,
)
from llm_core.train_state import TrainState, has_train_state, load_train_state, save_run

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
}
DEFAULT_RECIPE = "cpu-3min"


def recipe(name: str = DEFAULT_RECIPE, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a named recipe in PRETRAIN_PRESETS plus overrides."""
    if name not in PRETRAIN_PRESETS:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(PRETRAIN_PRESETS)}")
    return TrainConfig(**{**PRETRAIN_PRESETS[name], **overrides})


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
@dataclass
class _Dist:
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


def _setup_distributed(device_pref: str) -> tuple[_Dist, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): join the process group, gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = (torch.cuda.is_available() and device_pref in ("auto", "cuda")) or device_pref.startswith("cuda:")
    if world <= 1:
        if device_pref == "auto":
            dev = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        else:
            dev = device_pref
        return _Dist(), torch.device(dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return _Dist(rank, local, world, owns), device


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


def _compile_errors() -> tuple[type[BaseException], ...]:
    """What a failed torch.compile raises (no C++ compiler, unsupported platform); imported only when needed."""
    import torch._dynamo.exc
    import torch._inductor.exc

    return torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.CppCompileError


def _autocast(cfg: TrainConfig, device: torch.device):
    want_bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and native_bf16(device))
    if want_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16), "bfloat16"
    return nullcontext(), "float32"


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
    from llm_core.generate import GenerationConfig, generate

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
    so the folder is loadable whenever this returns.
    """
    t_call = time.perf_counter()
    cbs = _as_callbacks(callbacks)
    ddp, device = _setup_distributed(cfg.device)
    stop_event = stop_event or threading.Event()

    def emit(ev: TrainEvent) -> None:
        if ddp.master:
            for cb in cbs:
                cb(ev)

    heap = ExitStack()  # low-memory runs hand freed activations back to the OS (llm_core.heap)
    try:
        heap.enter_context(eager_release(cfg.gradient_checkpointing and device.type == "cpu"))
        if device.type == "cpu":
            threads = cfg.num_threads or (max(1, (os.cpu_count() or 1) // ddp.world_size) if ddp.world_size > 1
                                          else None)
            if threads:
                torch.set_num_threads(threads)
        out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg)
        from llm_core.paths import data_dir

        cache_root = Path(cfg.data_cache) if cfg.data_cache else data_dir() / "datasets"
        resume_state = load_train_state(out_dir) if cfg.resume else None
        if cfg.resume and resume_state is None:
            raise FileNotFoundError(f"--resume: no training state in {out_dir} (train without --resume first)")
        if not cfg.resume and out_dir.exists() and any(out_dir.iterdir()) and not has_train_state(out_dir):
            raise FileExistsError(f"{out_dir} exists and is not a training run; choose another output folder "
                                  "(a new run replaces the whole folder)")

        # ---- data + tokenizer (rank 0 prepares the cache, the others then read it)
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

        try:
            if ddp.master:
                data, tokenizer = prep()
            ddp.barrier()
            if not ddp.master:
                data, tokenizer = prep()
        except StopRequested:
            return TrainResult(str(out_dir), 0, 0, None, None, None, time.perf_counter() - t_call, 0.0, 0.0,
                               "stopped")

        # ---- model, optimizer, RNG
        if resume_state is not None:
            model = resume_state.model
        else:
            torch.manual_seed(cfg.seed)
            model = GPT(build_model_config(cfg, tokenizer))
        mcfg = model.config
        block_size = mcfg.block_size
        model.to(device).train()
        optimizer = build_optimizer(model, cfg, device)
        gen = torch.Generator().manual_seed(cfg.seed)  # batch sampling; identical on every rank
        state = TrainState(dataset=str(data.folder))
        if resume_state is not None:
            optimizer.load_state_dict(resume_state.optimizer_state)
            state = resume_state.state
            state.dataset = str(data.folder)
            torch.set_rng_state(resume_state.rng["torch_cpu"])
            gen.set_state(resume_state.rng["data_generator"])
            if device.type == "cuda" and "cuda" in resume_state.rng:
                torch.cuda.set_rng_state(resume_state.rng["cuda"], device)
        model.gradient_checkpointing = cfg.gradient_checkpointing
        fwd_model: nn.Module = torch.compile(model) if cfg.compile else model
        if ddp.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            fwd_model = DDP(fwd_model, device_ids=[device.index] if device.type == "cuda" else None)
        autocast, amp_dtype = _autocast(cfg, device)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        tokens_per_step = cfg.batch_size * block_size * cfg.grad_accum * ddp.world_size
        decay_steps = cfg.lr_decay_steps or cfg.max_steps
        time_schedule = cfg.max_time is not None and cfg.lr_decay_steps is None
        emit(StatusEvent(f"training {model.num_params() / 1e6:.2f}M parameters on {device} ({amp_dtype}), "
                         f"{ddp.world_size} process(es), {tokens_per_step} tokens/step"))

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

        def save(reason: str) -> None:
            if ddp.master:
                save_run(out_dir, model, tokenizer, optimizer, gen, state, cfg)
                emit(CheckpointEvent(state.step, str(out_dir), reason))
            ddp.barrier()

        last_eval_s = [state.elapsed_s]  # training seconds at the last evaluation (for eval_every_s)

        def evaluate() -> float:
            vl = estimate_loss(model, data, "val", cfg.eval_batches, cfg.batch_size, block_size, device,
                               seed=cfg.seed + 1, autocast=autocast, rank=ddp.rank, world_size=ddp.world_size)
            state.last_val_loss, state.last_val_step = vl, state.step
            last_eval_s[0] = state.elapsed_s
            if state.best_val_loss is None or vl < state.best_val_loss:
                state.best_val_loss = vl
            emit(EvalEvent(state.step, vl, math.exp(min(vl, 50.0)), losses[-1] if losses else None))
            if cfg.sample_at_eval and cfg.sample_tokens > 0 and ddp.master:
                emit(SampleEvent(state.step, _sample(model, tokenizer, cfg, state.step)))
            return vl

        def eval_due() -> bool:
            due = bool(cfg.eval_interval) and state.step % cfg.eval_interval == 0
            if cfg.eval_every_s:
                late = state.elapsed_s - last_eval_s[0] >= cfg.eval_every_s
                if ddp.world_size > 1:  # clocks differ between ranks; every rank must run the same all-reduce
                    t = torch.tensor([float(late)], device=device)
                    dist.all_reduce(t, op=dist.ReduceOp.MAX)
                    late = bool(t.item())
                due = due or late
            return due

        def micro_step(x: torch.Tensor, y: torch.Tensor, micro: int) -> torch.Tensor:
            """Forward + backward of one micro-batch; DDP syncs gradients on the last micro-step only."""
            sync = nullcontext()
            if ddp.world_size > 1 and micro < cfg.grad_accum - 1:
                sync = fwd_model.no_sync()  # type: ignore[operator]
            with sync:
                with autocast:
                    _, loss = fwd_model(x, y)
                    if cfg.grad_accum > 1:
                        loss = loss / cfg.grad_accum
                loss.backward()
            return loss

        # ---- loop
        compiled = cfg.compile
        compile_pending = compiled and ddp.world_size == 1  # (under DDP every rank must agree: no fallback)
        if cfg.compile:
            emit(StatusEvent("compiling the model with torch.compile: the first step takes a while (~40 s on 2 "
                             "CPU cores, seconds once cached)"))
        losses: list[float] = []
        if cfg.eval_at_start and state.step == 0 and resume_state is None:
            evaluate()
        t_loop = time.perf_counter()
        elapsed0 = state.elapsed_s
        step_time = 0.0  # seconds spent in optimizer steps this call
        ema_dt: float | None = None
        stop_reason = ""
        start_step = state.step
        while True:
            elapsed = elapsed0 + time.perf_counter() - t_loop
            flags = [cfg.max_steps is not None and state.step >= cfg.max_steps,
                     cfg.max_time is not None and elapsed >= cfg.max_time, stop_event.is_set()]
            if ddp.world_size > 1:  # all ranks must agree, or one would wait forever in all-reduce
                t = torch.tensor([float(f) for f in flags], device=device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                flags = [bool(v) for v in t.tolist()]
            if any(flags):
                stop_reason = ["max_steps", "max_time", "stopped"][flags.index(True)]
                break

            t0 = time.perf_counter()
            lr = lr_for(state.step, elapsed)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                x, y = data.get_batch("train", cfg.batch_size, block_size, gen, ddp.rank, ddp.world_size, device)
                if compile_pending:  # the first call compiles; without a working compiler, go on without it
                    compile_pending = False
                    rng = torch.get_rng_state()
                    try:
                        loss = micro_step(x, y, micro)
                    except _compile_errors() as e:
                        log.warning("torch.compile failed, training without it: %s", e)
                        emit(StatusEvent(f"torch.compile failed ({type(e).__name__}); training without it"))
                        torch.set_rng_state(rng)
                        optimizer.zero_grad(set_to_none=True)
                        fwd_model, compiled = model, False
                        loss = micro_step(x, y, micro)
                else:
                    loss = micro_step(x, y, micro)
                loss_sum += loss.detach()
            grad_norm = None
            if cfg.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_val = float(loss_sum)
            dt = time.perf_counter() - t0
            step_time += dt
            state.step += 1
            state.tokens_seen += tokens_per_step
            losses.append(loss_val)
            ema_dt = dt if ema_dt is None or state.step - start_step <= 3 else 0.9 * ema_dt + 0.1 * dt
            elapsed = elapsed0 + time.perf_counter() - t_loop
            state.elapsed_s = elapsed
            eta = None
            if cfg.max_steps is not None:
                eta = (cfg.max_steps - state.step) * ema_dt
            if cfg.max_time is not None:
                eta = min(eta if eta is not None else math.inf, max(0.0, cfg.max_time - elapsed))
            emit(StepEvent(state.step, cfg.max_steps, loss_val, lr, tokens_per_step / ema_dt, state.tokens_seen,
                           elapsed, eta, grad_norm, dt))
            if not math.isfinite(loss_val):
                raise FloatingPointError(f"training diverged at step {state.step} (loss {loss_val}); "
                                         "lower the learning rate")

            sampled = False
            if eval_due():
                evaluate()
                sampled = cfg.sample_at_eval
            if cfg.sample_interval and state.step % cfg.sample_interval == 0 and ddp.master and not sampled:
                emit(SampleEvent(state.step, _sample(model, tokenizer, cfg, state.step)))
            if cfg.checkpoint_interval and state.step % cfg.checkpoint_interval == 0:
                save("interval")

        train_s = time.perf_counter() - t_loop
        state.elapsed_s = elapsed0 + train_s
        val = state.last_val_loss if state.last_val_step == state.step else None
        if val is None and state.step > 0:
            val = evaluate()
        save(stop_reason)
        return TrainResult(
            out_dir=str(out_dir), steps=state.step, tokens_seen=state.tokens_seen,
            train_loss=losses[-1] if losses else None, val_loss=val,
            val_ppl=math.exp(min(val, 50.0)) if val is not None else None,
            wall_s=time.perf_counter() - t_call, train_s=train_s,
            tokens_per_s=(len(losses) * tokens_per_step / step_time) if step_time > 0 else 0.0,
            stop_reason=stop_reason, losses=losses, model_config=mcfg.to_dict(), amp_dtype=amp_dtype,
            compiled=compiled)
    finally:
        heap.close()
        if ddp.owns_group and dist.is_initialized():
            dist.destroy_process_group()
