"""LoRA on the demo skill (sentence -> exact JSON) with the default model, against full fine-tuning and against
peft on transformers' ``LlamaForCausalLM`` (the peer).

    python bench/finetune.py [--json] [--max-train-s 600] [--max-steps 24] [--n-test 60] [--only-memory]
                             [--only-peer] [--peer-steps 6] [--skip-peer]

Measures, in one run:
- held-out exact-match accuracy (greedy decoding, the answer's JSON object must equal the reference exactly) of
  the base model and of the LoRA-trained model, with ``finetune.compare`` (what the Fine-tune tab's before/after
  panel shows); ``greedy_match_*`` is the stricter token-level check (greedy output == reference tokens, via
  teacher forcing);
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

- our LoRA step against peft LoRA on ``LlamaForCausalLM`` holding the same weights (checked: ``hf_logit_max_diff``),
  same LoRA config, batches, batch size, optimizer and threads, no gradient checkpointing: ``hf_peft_step_s``,
  ``step_ratio_vs_hf`` (ours / HF, target <= 1), ``hf_peft_peak_mb``, ``peak_ratio_vs_hf`` (target <= 1). Time:
  one process alternates a step of each on the same batch (the median per-batch ratio), since a shared machine's
  load drifts over minutes; memory: a fresh process per mode, VmHWM restarted after the model is loaded (both
  then hold fp32 weights), so it is the training phase's peak and a conversion spike at load time does not count.

The machine may be shared: timings are then pessimistic; the ratios are measured side by side.
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

from llm_core.labs.memory import peak_rss_mb, rss_mb  # noqa: E402  (VmHWM: a child's ru_maxrss would start at this process's)


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
    peer_steps: int = 6
    skip_peer: bool = False
    only_peer: bool = False


def reset_peak() -> bool:
    """Restart this process's VmHWM from its current RSS (Linux >= 4.0: write 5 to clear_refs), so the peak that
    follows is the training phase's own, not a load-time spike (conversions, a GGUF read)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``): the HF mode frees our model after copying
    its weights, and that free space would otherwise stay in its RSS."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def hf_peer(model, rank: int, alpha: float):  # noqa: ANN001, ANN201 - GPT in, peft-wrapped LlamaForCausalLM out
    """transformers' ``LlamaForCausalLM`` holding our model's weights (``llm_core.weights`` export mapping), with
    peft LoRA on the same projections, rank, alpha and init seed as ``finetune.apply_lora``; and the largest
    |logit| difference to our model on one batch (the weights really are the same)."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetune.lora import available_targets
    from llm_core.weights.hf import hf_config_and_state_dict

    cfg, sd = hf_config_and_state_dict(model)
    hf = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("dtype", "torch_dtype")}))
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"weights do not map onto LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    hf.eval()
    model.eval()
    idx = torch.arange(1, 65).view(2, 32) * 37 % cfg["vocab_size"]  # (2, 32)
    with torch.no_grad():
        diff = (hf(input_ids=idx).logits - model(idx)[0]).abs().max().item()
    torch.manual_seed(0)
    lcfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=available_targets(model),
                      bias="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(hf, lcfg), diff


def memory_worker(mode: str, steps: int, batch_size: int, threads: int, ckpt: bool) -> dict:
    """One training mode in this (fresh) process: step times and peak RSS on the demo batches. ``mode``: lora
    (ours), full (ours, every weight) or hf (peft on transformers' LlamaForCausalLM, same weights and batches)."""
    import gc

    import torch

    from finetune.data import load_dataset
    from finetune.demo import demo_data_path
    from finetune.lora import apply_lora, trainable_summary
    from finetune.render import collate, pad_id_of, prepare
    from llm_core.weights.hub import load_model

    torch.set_num_threads(threads)
    model, tok = load_model("smollm2-135m-instruct")
    seqs, _ = prepare(load_dataset(demo_data_path()["train"]), tok, 256)
    parity = None
    if mode == "hf":
        model, parity = hf_peer(model, rank=16, alpha=32)  # our GPT is freed here: only HF's copy stays
        if ckpt:
            model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    gc.collect()
    trim_heap()  # both modes start training from the memory they hold, not from what loading left free in the heap
    after_load = rss_mb() or 0.0
    load_peak = peak_rss_mb()
    phase = reset_peak()
    if mode == "lora":
        torch.manual_seed(0)
        model = apply_lora(model, rank=16, alpha=32, dropout=0.0)
    if mode != "hf":
        (model.get_base_model() if mode == "lora" else model).gradient_checkpointing = ckpt
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = trainable_summary(model)[0]
    opt = torch.optim.AdamW(params, lr=1e-5)
    model.train()
    from llm_core.training.heap import eager_release

    times = []
    with eager_release(ckpt):  # the low-memory option, as FinetuneJob runs it
        for s in range(steps):  # the same batches in every mode
            idx, tgt = collate(seqs[s * batch_size:(s + 1) * batch_size], pad_id_of(tok))  # (B, T) each
            t0 = time.perf_counter()
            if mode == "hf":  # HF's own loss path; shift_labels: our targets are already shifted by collate
                loss = model(input_ids=idx, labels=tgt, shift_labels=tgt).loss
            else:
                _, loss = model(idx, tgt, loss_only=True)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    train_peak = peak_rss_mb()
    timed = times[1:] if len(times) > 2 else times  # the first step also warms up allocator and kernels
    return {"mode": mode, "trainable_params": n_train, "step_s": sorted(timed)[len(timed) // 2],
            "peak_mb": max(load_peak, train_peak), "phase_peak_mb": train_peak if phase else max(load_peak, train_peak),
            "after_load_mb": after_load, "train_mb": train_peak - after_load, "logit_max_diff": parity}


def run_worker(mode: str, a: BenchArgs, ckpt: bool, steps: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--mem-steps", str(steps or a.mem_steps),
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


def pair_worker(steps: int, batch_size: int, threads: int) -> dict:
    """Step times of our LoRA and of peft on LlamaForCausalLM in one process, one step of each in turn on the same
    batch: on a shared machine the load changes over minutes, so neighbouring steps see the same machine."""
    import torch

    from finetune.data import load_dataset
    from finetune.demo import demo_data_path
    from finetune.lora import apply_lora
    from finetune.render import collate, pad_id_of, prepare
    from llm_core.weights.hub import load_model

    torch.set_num_threads(threads)
    model, tok = load_model("smollm2-135m-instruct")
    seqs, _ = prepare(load_dataset(demo_data_path()["train"]), tok, 256)
    hf, _ = hf_peer(model, rank=16, alpha=32)  # its own copy of the weights
    torch.manual_seed(0)
    ours = apply_lora(model, rank=16, alpha=32, dropout=0.0)
    opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
            for k, m in (("lora", ours), ("hf", hf))}
    ours.train(), hf.train()
    times: dict[str, list[float]] = {"lora": [], "hf": []}
    for s in range(steps):
        idx, tgt = collate(seqs[s * batch_size:(s + 1) * batch_size], pad_id_of(tok))  # (B, T) each
        for k in (("lora", "hf") if s % 2 == 0 else ("hf", "lora")):  # neither always goes first
            t0 = time.perf_counter()
            if k == "hf":  # HF's own loss path; shift_labels: our targets are already shifted by collate
                loss = hf(input_ids=idx, labels=tgt, shift_labels=tgt).loss
            else:
                _, loss = ours(idx, tgt, loss_only=True)
            loss.backward()
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
            times[k].append(time.perf_counter() - t0)
    ratios = sorted(a / b for a, b in zip(times["lora"][1:], times["hf"][1:]))  # first pair: warm-up
    med = {k: sorted(v[1:])[(len(v) - 1) // 2] for k, v in times.items()}
    return {"lora_step_s": med["lora"], "hf_step_s": med["hf"], "step_ratio": ratios[len(ratios) // 2],
            "times": times}


def peer(a: BenchArgs) -> dict:
    """Our LoRA step against peft on transformers' LlamaForCausalLM: same weights, demo batches, LoRA config
    (rank 16, alpha 32, all seven projections, dropout 0), batch size, AdamW and thread count; no gradient
    checkpointing (FinetuneConfig's default).

    Time: one fresh process holds both and alternates one step of each (``pair_worker``); the ratio is the median
    of the per-batch ratios after a warm-up pair. Memory: a fresh process per mode, peak = VmHWM restarted once the
    model is loaded, so both count the training phase on top of fp32 weights. The three processes run at the same
    time: a peak of resident memory does not depend on how busy the CPU is, and the timing compares neighbours."""
    from concurrent.futures import ThreadPoolExecutor

    pair_cmd = [sys.executable, __file__, "--worker", "pair", "--mem-steps", str(a.peer_steps), "--mem-batch-size",
                str(a.mem_batch_size), "--threads", str(a.threads)]
    with ThreadPoolExecutor(3) as pool:
        jobs = [pool.submit(run_worker, "lora", a, False), pool.submit(run_worker, "hf", a, False),
                pool.submit(subprocess.run, pair_cmd, capture_output=True, text=True, cwd=ROOT, check=True)]
        ours, hf, done = (j.result() for j in jobs)
    pair = json.loads(done.stdout.strip().splitlines()[-1])
    return {"hf_peft_step_s": round(pair["hf_step_s"], 3), "lora_peer_step_s": round(pair["lora_step_s"], 3),
            "step_ratio_vs_hf": round(pair["step_ratio"], 3),
            "hf_peft_peak_mb": round(hf["phase_peak_mb"], 1), "lora_peer_peak_mb": round(ours["phase_peak_mb"], 1),
            "peak_ratio_vs_hf": round(ours["phase_peak_mb"] / hf["phase_peak_mb"], 3),
            "hf_peft_train_mb": round(hf["train_mb"], 1), "lora_peer_train_mb": round(ours["train_mb"], 1),
            "hf_trainable_params": hf["trainable_params"], "lora_peer_trainable_params": ours["trainable_params"],
            "hf_logit_max_diff": hf["logit_max_diff"],
            "peer_step_times_s": {k: [round(t, 2) for t in v] for k, v in pair["times"].items()},
            "peer_method": (f"time: one process alternating a step of each on the same batch, {a.peer_steps} "
                            f"batches, ratio = median per-batch ratio after a warm-up pair; memory: a fresh "
                            f"process per mode (run alongside), VmHWM restarted after loading (fp32 weights held); batch "
                            f"{a.mem_batch_size}, {a.threads} threads, fp32, no checkpointing")}


def main(a: BenchArgs) -> dict:
    import torch

    if a.only_peer:
        return {**peer(a), "load_avg_1m": os.getloadavg()[0]}
    if a.only_memory:
        return {**memory(a), "load_avg_1m": os.getloadavg()[0]}

    from finetune import FinetuneConfig, FinetuneJob, resolve_device
    from finetune.compare import demo_test_examples, generate_answers, score, split_example
    from finetune.demo import demo_data_path, greedy_match_rate, load_split
    from llm_core.weights.hub import load_model

    torch.set_num_threads(a.threads)
    log = (lambda *x: print(*x, file=sys.stderr, flush=True)) if a.json else print
    test = load_split(demo_data_path()["test"])[: a.n_test]
    examples = demo_test_examples(a.n_test)  # the same rows, as the Fine-tune tab's before/after panel sees them
    refs = [split_example(ex)[1] for ex in examples]

    def accuracy(m) -> tuple[float, list[str]]:  # noqa: ANN001 - the panel's answers and exact-match metric
        answers = generate_answers(m, tok, examples)
        return score(answers, refs)[0] or 0.0, answers

    model, tok = load_model("smollm2-135m-instruct")
    t0 = time.perf_counter()
    acc_before, _ = accuracy(model)
    tf_before = greedy_match_rate(model, tok, test)
    log(f"base model exact match: {acc_before:.1%} on {len(test)} held-out examples ({time.perf_counter() - t0:.0f} s)")

    out_dir = tempfile.mkdtemp(prefix="bench-finetune-")
    cfg = FinetuneConfig(data="demo", out_dir=out_dir, rank=a.rank, alpha=2.0 * a.rank, dropout=0.0, lr=a.lr,
                         batch_size=a.batch_size, max_steps=a.max_steps, warmup_steps=3, eval_interval=10**9,
                         checkpoint_interval=10**9, val_fraction=0.0, resume=False, precision=a.precision)
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
    acc_after, answers = accuracy(job.peft_model.get_base_model())
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
    if not a.skip_peer:
        res.update(peer(a))
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
    ap.add_argument("--peer-steps", type=int, default=6, help="steps per mode in the peft/transformers comparison")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--only-peer", action="store_true", help="only the comparison with peft on LlamaForCausalLM")
    ap.add_argument("--worker", choices=["lora", "full", "hf", "pair"], help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.worker == "pair":
        print(json.dumps(pair_worker(ns.mem_steps, ns.mem_batch_size, ns.threads)))
    elif ns.worker:
        print(json.dumps(memory_worker(ns.worker, ns.mem_steps, ns.mem_batch_size, ns.threads, ns.ckpt)))
    if ns.worker:
        return
    a = BenchArgs(ns.json, ns.max_train_s, ns.max_steps, ns.n_test, ns.lr, ns.rank, ns.batch_size, ns.mem_steps,
                  ns.mem_batch_size, ns.threads, ns.skip_memory, ns.only_memory, ns.precision, ns.peer_steps,
                  ns.skip_peer, ns.only_peer)
    res = main(a)
    if a.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:>22}: {v}")


if __name__ == "__main__":
    cli()
