"""LoRA on the demo skill (sentence -> exact JSON) with the default model, against full fine-tuning.

    python bench/finetune.py [--json] [--max-train-s 600] [--max-steps 24] [--n-test 60] [--only-memory]

Measures, in one run:
- held-out exact-match accuracy (greedy decoding, the answer's JSON object must equal the reference exactly)
  of the base model and of the LoRA-trained model; ``greedy_match_*`` is the stricter token-level check
  (greedy output == reference tokens, via teacher forcing);
- training wall time (``train_s``, capped by --max-train-s: the run stops early and keeps its adapter);
- trainable parameters (LoRA) against all parameters;
- step time and peak memory of LoRA vs full fine-tuning (AdamW on every weight) on the same batches. Each is
  measured in its own fresh subprocess, one after the other: peak = the process's ``VmHWM`` (peak resident set
  size of its own image, model weights and Python included; ``ru_maxrss`` would also count the parent's pages
  copied at fork); ``*_train_mb`` is that peak minus the RSS right after loading the model (what training
  itself added). Both modes run the training batch size (``--mem-batch-size``, default 8) twice: with gradient
  checkpointing (the headline keys; what a memory-bound user turns on) and without (``*_no_ckpt``). Without it,
  8 sequences of ~100 tokens keep ~2.4 GB of activations, which outweigh full fine-tuning's gradients + AdamW
  state (~1.6 GB), so both modes peak near the same RSS; at one sequence per step LoRA needs ~45% of full.

The machine may be shared: timings are then pessimistic; the LoRA/full ratios are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm_core.memory import peak_rss_mb, rss_mb  # noqa: E402  (VmHWM: a child's ru_maxrss would start at this process's)


@dataclass
class BenchArgs:
    json: bool = False
    max_train_s: float = 600.0
    max_steps: int = 24
    n_test: int = 60
    lr: float = 2e-3
    rank: int = 16
    batch_size: int = 8
    mem_steps: int = 3
    mem_batch_size: int = 8
    threads: int = 2
    skip_memory: bool = False
    only_memory: bool = False
    precision: str = "auto"


def memory_worker(mode: str, steps: int, batch_size: int, threads: int, ckpt: bool) -> dict:
    """One training mode in this (fresh) process: step times and peak RSS on the demo batches."""
    import torch

    from finetune.data import load_dataset
    from finetune.demo import demo_data_path
    from finetune.lora import apply_lora, trainable_summary
    from finetune.render import collate, pad_id_of, prepare
    from llm_core.hub import load_model

    torch.set_num_threads(threads)
    model, tok = load_model("smollm2-135m-instruct")
    seqs, _ = prepare(load_dataset(demo_data_path()["train"]), tok, 256)
    after_load = rss_mb() or 0.0
    if mode == "lora":
        torch.manual_seed(0)
        model = apply_lora(model, rank=16, alpha=32, dropout=0.0)
    (model.get_base_model() if mode == "lora" else model).gradient_checkpointing = ckpt
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = trainable_summary(model)[0]
    opt = torch.optim.AdamW(params, lr=1e-5)
    model.train()
    from llm_core.heap import eager_release

    times = []
    with eager_release(ckpt):  # the low-memory option, as FinetuneJob runs it
        for s in range(steps):  # the same batches in both modes
            idx, tgt = collate(seqs[s * batch_size:(s + 1) * batch_size], pad_id_of(tok))
            t0 = time.perf_counter()
            _, loss = model(idx, tgt, loss_only=True)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    return {"mode": mode, "trainable_params": n_train, "step_s": sorted(times)[len(times) // 2],
            "peak_mb": peak_rss_mb(), "after_load_mb": after_load, "train_mb": peak_rss_mb() - after_load}


def run_worker(mode: str, a: BenchArgs, ckpt: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--mem-steps", str(a.mem_steps),
           "--mem-batch-size", str(a.mem_batch_size), "--threads", str(a.threads)] + (["--ckpt"] if ckpt else [])
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def memory(a: BenchArgs) -> dict:
    res: dict = {}
    for ckpt, sfx in ((True, ""), (False, "_no_ckpt")):
        lora, full = run_worker("lora", a, ckpt), run_worker("full", a, ckpt)
        for mode, r in (("lora", lora), ("full", full)):
            res.update({f"{mode}_peak_mb{sfx}": round(r["peak_mb"], 1), f"{mode}_train_mb{sfx}": round(r["train_mb"], 1),
                        f"{mode}_step_s{sfx}": round(r["step_s"], 3)})
        res[f"peak_ratio{sfx}"] = round(lora["peak_mb"] / full["peak_mb"], 3)
        res[f"step_time_ratio{sfx}"] = round(lora["step_s"] / full["step_s"], 3)
        res["full_trainable_params"] = full["trainable_params"]
    res.update({"mem_batch_size": a.mem_batch_size, "gradient_checkpointing": True,
                "memory_method": "VmHWM of a fresh subprocess per mode, same batches, run one after the other"})
    return res


def main(a: BenchArgs) -> dict:
    import torch

    if a.only_memory:
        return {**memory(a), "load_avg_1m": os.getloadavg()[0]}

    from finetune import FinetuneConfig, FinetuneJob, resolve_device
    from finetune.demo import accuracy, demo_data_path, greedy_match_rate, load_split
    from llm_core.hub import load_model

    torch.set_num_threads(a.threads)
    log = (lambda *x: print(*x, file=sys.stderr, flush=True)) if a.json else print
    test = load_split(demo_data_path()["test"])[: a.n_test]
    model, tok = load_model("smollm2-135m-instruct")
    t0 = time.perf_counter()
    acc_before, _ = accuracy(model, tok, test)
    tf_before = greedy_match_rate(model, tok, test)
    log(f"base model exact match: {acc_before:.1%} on {len(test)} held-out examples ({time.perf_counter() - t0:.0f} s)")

    out_dir = tempfile.mkdtemp(prefix="bench-finetune-")
    cfg = FinetuneConfig(data="demo", out_dir=out_dir, rank=a.rank, alpha=2.0 * a.rank, dropout=0.0, lr=a.lr,
                         batch_size=a.batch_size, max_steps=a.max_steps, warmup_steps=3, eval_every=10**9,
                         save_every=10**9, val_fraction=0.0, resume=False, precision=a.precision)
    job = FinetuneJob(cfg, model=model, tokenizer=tok)
    t_train = time.perf_counter()

    def on_event(ev) -> None:
        if ev.kind == "step":
            log(f"step {ev.step}/{ev.total_steps} loss {ev.loss:.4f} ({time.perf_counter() - t_train:.0f} s)")
            elapsed = time.perf_counter() - t_train
            if elapsed + elapsed / ev.step > a.max_train_s:  # the next step would end past the budget
                job.stop()
        elif ev.kind == "info":
            log(ev.message)

    st = job.run(on_event)
    train_s = time.perf_counter() - t_train
    shutil.rmtree(out_dir, ignore_errors=True)
    if st.state not in ("done", "stopped"):
        raise SystemExit(f"training failed: {st.error}")
    t0 = time.perf_counter()
    acc_after, answers = accuracy(job.peft_model.get_base_model(), tok, test)
    tf_after = greedy_match_rate(job.peft_model.get_base_model(), tok, test)
    log(f"after LoRA ({st.step} steps, {train_s:.0f} s): exact match {acc_after:.1%} "
        f"({time.perf_counter() - t0:.0f} s); e.g. {answers[0]!r}")

    res = {"acc_before": acc_before, "acc_after": acc_after, "train_s": round(train_s, 1), "steps": st.step,
           "precision": resolve_device("auto", a.precision).describe(),
           "trainable_params": st.trainable_params, "total_params": st.total_params,
           "n_test": len(test), "final_train_loss": st.loss,
           "greedy_match_before": tf_before, "greedy_match_after": tf_after}
    if not a.skip_memory:
        del model, job
        res.update(memory(a))
    res["load_avg_1m"] = os.getloadavg()[0]
    return res


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON line (logs go to stderr)")
    ap.add_argument("--max-train-s", type=float, default=600.0)
    ap.add_argument("--max-steps", type=int, default=24)
    ap.add_argument("--n-test", type=int, default=60)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--mem-steps", type=int, default=3)
    ap.add_argument("--mem-batch-size", type=int, default=8,
                    help="sequences per step in the memory comparison (default: the training batch size)")
    ap.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="training precision (auto: bf16 autocast on CUDA and AMX CPUs, else fp32)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--only-memory", action="store_true")
    ap.add_argument("--worker", choices=["lora", "full"], help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.worker:
        print(json.dumps(memory_worker(ns.worker, ns.mem_steps, ns.mem_batch_size, ns.threads, ns.ckpt)))
        return
    a = BenchArgs(ns.json, ns.max_train_s, ns.max_steps, ns.n_test, ns.lr, ns.rank, ns.batch_size, ns.mem_steps,
                  ns.mem_batch_size, ns.threads, ns.skip_memory, ns.only_memory, ns.precision)
    res = main(a)
    if a.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:>22}: {v}")


if __name__ == "__main__":
    cli()
