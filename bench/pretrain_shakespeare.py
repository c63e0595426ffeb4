"""Pretraining benchmark on tinyshakespeare, character level, nanoGPT's ``shakespeare_char`` split (90% / 10%).

(a) ``--part a``: nanoGPT's documented CPU recipe (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iters,
    lr 1e-3 -> 1e-4 cosine, warmup 100, dropout 0, beta2 0.99, no bias). Our trainer + ``llm_core.model.GPT``
    run side by side with a faithful minimal copy of nanoGPT's model.py and train.py loop (below): after every
    25 of our steps the reference does 25 iterations, on the same batches, so both see the same machine load.
    ``ratio`` = our tokens/s / nanoGPT's tokens/s (training steps only; evaluations are not timed for either).
    Ours runs as the trainer would by default on this machine (``dtype=auto``: bf16 autocast where matmuls are
    native bf16, i.e. CUDA or an AMX CPU; fp32 elsewhere) and with ``torch.compile`` (``--no-compile`` for eager);
    the reference runs as nanoGPT's CPU recipe documents it: fp32, eager.
(b) ``--part b``: our default CPU recipe (``cpu-3min`` in ``llm_core.trainer.PRETRAIN_PRESETS``) with a 180 s
    training budget; validation loss on 200 batches.

``--json`` prints one JSON line per part with ``val_loss, tokens_per_s, wall_s, steps`` (+ ``nanogpt_tokens_per_s,
ratio`` for (a)).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm_core.data import TokenData  # noqa: E402
from llm_core.train_events import StepEvent  # noqa: E402
from llm_core.trainer import estimate_loss, recipe, train  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
EVAL_BATCHES = 200
SKIP = 10  # first steps of each loop not timed (allocator warm-up, torch.compile)


# ------------------------------------------------------------------------------------------------------------
# nanoGPT reference (karpathy/nanoGPT model.py, trimmed to what this recipe uses; same maths, same init)
# ------------------------------------------------------------------------------------------------------------
class LayerNorm(nn.Module):
    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0,
                                           is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


@dataclass
class GPTConfig:
    block_size: int = 64
    vocab_size: int = 65
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False


class NanoGPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd), wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout), h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias)))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay = [p for p in param_dict.values() if p.dim() >= 2]
        nodecay = [p for p in param_dict.values() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": nodecay, "weight_decay": 0.0}]
        extra = dict(fused=True) if device_type == "cuda" else dict()  # nanoGPT: fused AdamW on CUDA only
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)


class NanoGPTLoop:
    """nanoGPT train.py's inner loop (CPU: no autocast, no GradScaler), one iteration per ``step()``."""

    def __init__(self, data_dir: Path, seed: int, max_iters: int, batch_size: int = 12, block_size: int = 64):
        self.data_dir, self.batch_size, self.block_size = data_dir, batch_size, block_size
        self.max_iters, self.iter_num = max_iters, 0
        torch.manual_seed(seed)
        self.model = NanoGPT(GPTConfig(block_size=block_size))
        self.optimizer = self.model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
        self.gen = torch.Generator().manual_seed(seed)  # the offsets our trainer draws: the same batches
        self.times: list[float] = []
        self.X, self.Y = self.get_batch("train")

    def get_batch(self, split):
        data = np.memmap(self.data_dir / f"{split}.bin", dtype=np.uint16, mode="r")  # recreated per batch, as nanoGPT
        ix = torch.randint(len(data) - self.block_size, (self.batch_size,), generator=self.gen)
        x = torch.stack([torch.from_numpy(data[i:i + self.block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + self.block_size].astype(np.int64)) for i in ix])
        return x, y

    def get_lr(self, it, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000):
        if it < warmup_iters:
            return learning_rate * (it + 1) / (warmup_iters + 1)
        if it > lr_decay_iters:
            return min_lr
        decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
        coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
        return min_lr + coeff * (learning_rate - min_lr)

    def step(self) -> float:
        t0 = time.perf_counter()
        lr = self.get_lr(self.iter_num)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        logits, loss = self.model(self.X, self.Y)
        self.X, self.Y = self.get_batch("train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lossf = loss.item()  # log_interval=1 in the recipe
        self.times.append(time.perf_counter() - t0)
        self.iter_num += 1
        return lossf


# ------------------------------------------------------------------------------------------------------------
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _steady_tokens_per_s(step_times: list[float], tokens_per_step: int) -> float:
    t = step_times[SKIP:]
    return tokens_per_step * len(t) / sum(t)


def part_a(data_path: Path, work: Path, threads: int, iters: int, compile_: bool, dtype: str) -> dict:
    cfg = recipe("nanogpt-cpu", data=str(data_path), out_dir=str(work / "a"), data_cache=str(work / "cache"),
                 num_threads=threads, max_steps=iters, lr_decay_steps=2000, checkpoint_interval=0,
                 sample_interval=0, eval_interval=0, compile=compile_, dtype=dtype)
    from llm_core.data import prepare_dataset

    t0 = time.perf_counter()
    data, _ = prepare_dataset(str(data_path), "char", work / "cache", 0.1)  # cached: train() reuses these files
    ref = NanoGPTLoop(data.folder, cfg.seed, iters)
    ours_times: list[float] = []

    def on_event(ev):
        if isinstance(ev, StepEvent):
            ours_times.append(ev.step_s)
            if ev.step % 25 == 0 or ev.step == iters:  # the peer catches up: same machine load for both
                while ref.iter_num < ev.step:
                    ref.step()

    res = train(cfg, callbacks=on_event)
    wall = time.perf_counter() - t0
    ours_tps = _steady_tokens_per_s(ours_times, 12 * 64)
    ref_tps = _steady_tokens_per_s(ref.times, 12 * 64)

    from llm_core.hub import load_model

    model, _ = load_model(res.out_dir)
    val = estimate_loss(model, data, "val", EVAL_BATCHES, 12, 64, seed=0)
    ref_val = estimate_loss(ref.model, data, "val", EVAL_BATCHES, 12, 64, seed=0)
    return {"part": "a", "val_loss": round(val, 4), "tokens_per_s": round(ours_tps), "wall_s": round(wall, 1),
            "steps": res.steps, "nanogpt_tokens_per_s": round(ref_tps), "ratio": round(ours_tps / ref_tps, 3),
            "nanogpt_val_loss": round(ref_val, 4), "ours_ms_per_step": round(1000 * 768 / ours_tps, 2),
            "nanogpt_ms_per_step": round(1000 * 768 / ref_tps, 2), "compile": res.compiled,
            "amp_dtype": res.amp_dtype, "threads": threads, "cpu": _cpu_name()}


def part_b(data_path: Path, work: Path, threads: int, budget: float, overrides: dict) -> dict:
    cfg = recipe("cpu-3min", data=str(data_path), out_dir=str(work / "b"), data_cache=str(work / "cache"),
                 num_threads=threads, max_time=budget, **overrides)
    t0 = time.perf_counter()
    res = train(cfg)
    wall = time.perf_counter() - t0
    from llm_core.hub import load_model

    model, _ = load_model(res.out_dir)
    data = TokenData(json.loads((Path(res.out_dir) / "train_state" / "state.json").read_text())["state"]["dataset"])
    val = estimate_loss(model, data, "val", EVAL_BATCHES, 12, model.config.block_size, seed=0)
    return {"part": "b", "val_loss": round(val, 4), "tokens_per_s": round(res.tokens_per_s), "wall_s": round(wall, 1),
            "train_s": round(res.train_s, 1), "steps": res.steps, "params_m": round(model.num_params() / 1e6, 3),
            "recipe": {k: v for k, v in cfg.to_dict().items() if k in (
                "preset", "arch", "n_layer", "n_head", "n_embd", "block_size", "batch_size", "lr", "min_lr",
                "warmup_steps", "compile", "dropout")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["a", "b", "both"], default="both")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=2000, help="(a) iterations (2000 = the full recipe)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="(a) torch.compile our model (the reference stays eager, as nanoGPT's CPU recipe)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="(a) our precision: auto = bf16 autocast on AMX CPUs / CUDA, else fp32")
    p.add_argument("--budget", type=float, default=180.0, help="(b) training seconds")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="(b) recipe overrides, e.g. lr=2e-3")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if not args.data.is_file():
        sys.exit(f"missing {args.data}")
    torch.set_num_threads(args.threads)
    overrides = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        overrides[k] = json.loads(v) if v not in ("True", "False") else v == "True"
    def report(r: dict) -> None:
        print(json.dumps(r) if args.json else " ".join(f"{k}={v}" for k, v in r.items()), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.part in ("a", "both"):
            report(part_a(args.data, work, args.threads, args.iters, args.compile, args.dtype))
        if args.part in ("b", "both"):
            report(part_b(args.data, work, args.threads, args.budget, overrides))

if __name__ == "__main__":
    main()
