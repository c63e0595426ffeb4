"""Where the memory goes: parameter bytes per precision, the KV cache, and training (full or LoRA), from a config.

Every figure is counted from the tensors our code keeps (``llm_core.model.gpt`` / ``block`` / ``attention``), so it
can be read next to the code and checked against this machine: :func:`measure_training` runs a few real training
steps in a fresh process and returns the estimate beside the measured peak, with the difference explained.

Training memory = weights + gradients + AdamW's two moments + the activations autograd saves for the backward pass.
Activations are counted per layer in elements of the (B, T, ...) tensors saved in our forward (fp32, dropout 0):

- llama block: the block input, the two RMSNorms' normalised values (before and after the weight), the fused q/k/v
  output (kept alive by the v view), the rotated q and k, the attention output and its (B, T, C) copy, the mid
  residual, the MLP norm's two, and four (B, T, I) tensors of SwiGLU (gate, silu(gate), up, their product).
  Full fine-tuning also keeps the concatenated q/k/v weight each layer builds for its one matmul.
- gpt2 block: the input, the LayerNorm output, the q/k/v output, attention output and copy, mid residual, the
  second norm's output, and two (B, T, I) tensors (the MLP's pre- and post-GELU).
- head: the final norm, and the log-softmax over the vocabulary (B, T, V) plus its gradient at the start of
  backward: at 49k vocabulary this is often the largest single term.
- gradient checkpointing keeps only each block's input, plus one block's activations while it is recomputed.
- AdamW's step (PyTorch's per-tensor loop on a CPU) makes two temporaries the size of the tensor it updates
  (sqrt of the second moment, then scaled): for full fine-tuning, twice the embedding table, on top of the grads.
- LoRA freezes the base: frozen weights need no gradient, so ops save less (PyTorch only saves what a needed
  gradient uses), but the input of every adapted projection is still saved for its ``lora_A``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llm_core.model.config import ModelConfig

__all__ = ["PRECISIONS", "param_breakdown", "param_count", "param_bytes", "kv_cache_bytes_per_token",
           "kv_cache_bytes", "lora_targets", "lora_trainable_params", "TrainingEstimate", "training_memory",
           "MemoryCheck", "measure_training", "memory_report", "peak_rss_mb", "rss_mb", "ru_maxrss_mb",
           "LORA_TARGETS"]

MiB = 2 ** 20
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # = finetune.lora's
# bytes per weight of a matrix; int4 is llama.cpp's q4_0 layout: blocks of 32 4-bit weights + one fp16 scale
PRECISIONS: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int4": 18 / 32}


# ---- process memory (the one copy; bench/ imports these) -------------------------------------------------------
def ru_maxrss_mb() -> float:
    """getrusage's peak; KiB on Linux (bytes on macOS). On Linux it also counts the parent's resident set copied
    at fork time (kept across exec), so a child of a big process reports at least the parent's size."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def status_mb(name: str) -> float | None:
    """A ``/proc/self/status`` memory field (VmHWM, VmRSS, RssAnon ...) in MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process image's own peak resident set: VmHWM (Linux, reset by exec), else ru_maxrss."""
    v = status_mb("VmHWM")
    return ru_maxrss_mb() if v is None else v


def rss_mb() -> float | None:
    """Resident set now (VmRSS), None off Linux."""
    return status_mb("VmRSS")


# ---- parameters ------------------------------------------------------------------------------------------------
def _linears(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) of each projection in one block, by LoRA target name."""
    C, hs, hidden = cfg.n_embd, cfg.head_dim, cfg.intermediate_size
    assert cfg.n_kv_head is not None and hidden is not None
    out = {"q_proj": (C, cfg.n_head * hs), "k_proj": (C, cfg.n_kv_head * hs), "v_proj": (C, cfg.n_kv_head * hs),
           "o_proj": (cfg.n_head * hs, C), "up_proj": (C, hidden), "down_proj": (hidden, C)}
    if cfg.arch == "llama":
        out["gate_proj"] = (C, hidden)
    return out


def param_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Parameter count per part (tied lm_head counted once, in ``embedding``)."""
    C, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    lin = _linears(cfg)
    bias = bool(cfg.bias)
    qkv_bias = bool(getattr(cfg, "qkv_bias", bias))  # Qwen2: biases on q/k/v only
    attn = sum(i * o + (o if (qkv_bias if n != "o_proj" else bias) else 0) for n, (i, o) in lin.items()
               if n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    if getattr(cfg, "qk_norm", False):  # Qwen3: one (hs,) RMSNorm weight for q's heads, one for k's
        attn += 2 * cfg.head_dim
    mlp = sum(i * o + (o if bias else 0) for n, (i, o) in lin.items() if n in ("gate_proj", "up_proj", "down_proj"))
    norm = C * (2 if cfg.arch == "gpt2" and bias else 1)  # LayerNorm weight (+ bias) / RMSNorm weight
    return {"embedding": V * C, "position": cfg.block_size * C if cfg.arch == "gpt2" else 0,
            "attention": L * attn, "mlp": L * mlp, "norms": (2 * L + 1) * norm,
            "lm_head": 0 if cfg.tie_embeddings else V * C}


def param_count(cfg: ModelConfig) -> int:
    """Total parameters, as ``sum(p.numel() for p in GPT(cfg).parameters())``."""
    return sum(param_breakdown(cfg).values())


def param_bytes(cfg: ModelConfig) -> dict[str, int]:
    """Weight bytes per precision. fp32/bf16: every parameter at 4/2 bytes. int8: our ``quantize_model`` scheme
    (int8 matrices with a float32 + a bf16 scale per row; the tied lm_head shares the embedding's table; norms,
    biases and position table stay float32). int4: q4_0-style matrices (4.5 bits a weight), the rest float32."""
    n = param_count(cfg)
    V = cfg.vocab_size
    block_rows = cfg.n_layer * sum(o for _, o in _linears(cfg).values())
    block_mat = cfg.n_layer * sum(i * o for i, o in _linears(cfg).values())
    tables = 1 if cfg.tie_embeddings else 2  # token embedding (+ an untied lm_head)
    n_mat = block_mat + tables * V * cfg.n_embd
    floats = n - n_mat  # norms, biases, position table: float32 in every quantized form
    linear_rows = block_rows + V  # Int8Linear rows (the lm_head's too) carry a float32 and a bf16 scale
    emb_rows = 0 if cfg.tie_embeddings else V  # an untied Int8Embedding: a float32 scale per row
    out = {"fp32": 4 * n, "bf16": 2 * n}
    out["int8"] = n_mat + 6 * linear_rows + 4 * emb_rows + 4 * floats
    out["int4"] = int(round(n_mat * PRECISIONS["int4"])) + 4 * floats
    return out


# ---- KV cache --------------------------------------------------------------------------------------------------
def kv_cache_bytes_per_token(cfg: ModelConfig, bytes_per_value: float = 4) -> int:
    """Keys + values of every layer for one position, batch 1: 2 * n_layer * n_kv_head * head_dim values."""
    return int(2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * bytes_per_value)  # type: ignore[operator]


def kv_cache_bytes(cfg: ModelConfig, tokens: int | None = None, batch: int = 1, bytes_per_value: float = 4) -> int:
    """The cache for ``tokens`` positions (default: the full context) and ``batch`` sequences."""
    return batch * (cfg.block_size if tokens is None else tokens) * kv_cache_bytes_per_token(cfg, bytes_per_value)


# ---- LoRA ------------------------------------------------------------------------------------------------------
def lora_targets(cfg: ModelConfig, targets: tuple[str, ...] | list[str] = LORA_TARGETS) -> list[str]:
    """The requested projections this family has (gpt2 has no gate_proj)."""
    have = _linears(cfg)
    return [t for t in targets if t in have]


def lora_trainable_params(cfg: ModelConfig, rank: int = 16, targets: tuple[str, ...] | list[str] = LORA_TARGETS
                          ) -> int:
    """lora_A (r, in) + lora_B (out, r) on each targeted projection of every layer (what peft counts)."""
    lin = _linears(cfg)
    return cfg.n_layer * sum(rank * (lin[t][0] + lin[t][1]) for t in lora_targets(cfg, targets))


# ---- training --------------------------------------------------------------------------------------------------
def _activation_elems(cfg: ModelConfig, tokens: int, lora: bool, checkpointing: bool, rank: int,
                      n_targets: int) -> int:
    """Activation elements alive at the peak of the backward pass, for ``tokens`` = batch * seq."""
    C, hidden, V, L = cfg.n_embd, int(cfg.intermediate_size or 0), cfg.vocab_size, cfg.n_layer
    kv = cfg.n_kv_head * cfg.head_dim  # type: ignore[operator]
    qd = cfg.n_head * cfg.head_dim  # type: ignore[operator]  # = C unless head_dim is set apart (Qwen3)
    if cfg.arch == "llama":
        if lora:  # separate projections; frozen norm weights: the pre-weight values are not saved
            per = 2 * C + kv + (qd + kv) + 2 * qd + C + C  # x, normed, v, rotated q/k, attn out + copy, mid, normed2
        else:  # x, 2 norm values, fused q/k/v out, rotated q/k, attn out + copy, mid, 2 norm values
            per = 3 * C + (qd + 2 * kv) + (qd + kv) + 2 * qd + 3 * C
        per += 4 * hidden  # gate, silu(gate), up, product
        head_c = C if lora else 3 * C
    else:
        per = 2 * C + 3 * C + 2 * C + 2 * C + 2 * hidden  # x, ln1, q/k/v, attn out + copy, mid, ln2, pre/post-GELU
        head_c = C if lora else 2 * C
    layer = tokens * per
    if lora:  # each adapter's (tokens, r) intermediate, saved by lora_B
        layer += tokens * rank * n_targets
    else:  # the fused q/k/v weight (C, nq + 2 nkv) built each step and saved by its matmul
        layer += C * (qd + 2 * kv)
    head = tokens * (head_c + 3 * V)  # final norm; log-probs (B, T, V) and, in their backward, two gradients
    if checkpointing:  # block inputs kept; the head's backward and one recomputed block come one after the other
        return L * tokens * C + max(head, layer)
    return L * layer + head


@dataclass
class TrainingEstimate:
    mode: str  # "full" | "lora"
    checkpointing: bool
    batch: int
    seq: int
    trainable_params: int
    weights: int  # bytes (fp32)
    grads: int
    optimizer: int  # AdamW exp_avg + exp_avg_sq
    activations: int  # alive at the start of the backward pass
    optimizer_temp: int  # AdamW's step (one tensor at a time): sqrt(v) and its scaled copy of the largest one
    sum: int  # weights + grads + optimizer + activations: the usual back-of-the-envelope figure
    peak: int  # weights + optimizer + max(grads + optimizer_temp, activations): grads appear as activations go
    rank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_memory(cfg: ModelConfig, mode: str = "full", batch: int = 1, seq: int | None = None,
                    checkpointing: bool = False, rank: int = 16,
                    targets: tuple[str, ...] | list[str] = LORA_TARGETS) -> TrainingEstimate:
    """Estimated bytes for an fp32 AdamW training step (``mode`` "full" or "lora") on batch x seq tokens."""
    if mode not in ("full", "lora"):
        raise ValueError(f"unknown training mode {mode!r}: choose 'full' or 'lora'")
    seq = cfg.block_size if seq is None else int(seq)
    if batch < 1 or seq < 1 or rank < 1:
        raise ValueError(f"batch, sequence length and rank must be at least 1, got {batch}, {seq}, {rank}")
    if seq > cfg.block_size:
        raise ValueError(f"sequence length {seq} exceeds the model's context of {cfg.block_size} tokens")
    n = param_count(cfg)
    lora = mode == "lora"
    n_targets = len(lora_targets(cfg, targets))
    if lora and not n_targets:
        raise ValueError(f"none of the LoRA targets {list(targets)} exist in a {cfg.arch} model")
    trainable = lora_trainable_params(cfg, rank, targets) if lora else n
    weights = 4 * (n + (trainable if lora else 0))
    grads, opt = 4 * trainable, 8 * trainable
    acts = 4 * _activation_elems(cfg, batch * seq, lora, checkpointing, rank, n_targets)
    lin = _linears(cfg)
    if lora:
        largest = max(rank * max(lin[t]) for t in lora_targets(cfg, targets))
    else:
        largest = max([cfg.vocab_size * cfg.n_embd, *(i * o for i, o in lin.values())]
                      + ([cfg.block_size * cfg.n_embd] if cfg.arch == "gpt2" else []))
    tmp = 2 * 4 * largest
    return TrainingEstimate(mode, checkpointing, batch, seq, trainable, weights, grads, opt, acts, tmp,
                            weights + grads + opt + acts, weights + opt + max(grads + tmp, acts),
                            rank if lora else None)


# ---- measured --------------------------------------------------------------------------------------------------
@dataclass
class MemoryCheck:
    """An estimate beside the peak measured on this machine, with the difference in one line.

    ``measured_bytes``: the peak with freed memory handed back to the OS at once (``llm_core.training.heap.eager_release``),
    i.e. the tensors alive together. ``measured_default_heap_bytes``: the same run with glibc's default heap (how
    a run without the low-memory option holds it), which keeps freed blocks resident."""

    estimate: TrainingEstimate
    measured_bytes: int  # peak resident set during the steps minus the resident set before the model existed
    steps: int
    explanation: str
    measured_default_heap_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["estimate_mb"] = round(self.estimate.peak / MiB, 1)
        d["measured_mb"] = round(self.measured_bytes / MiB, 1)
        return d


def explain(est: TrainingEstimate, measured: int, default_heap: int | None = None) -> str:
    """Why the measured peak differs from the estimate, in one line."""
    pct = 100 * (measured / est.peak - 1)
    if abs(pct) <= 10:
        line = f"measured within {abs(pct):.0f}% of the estimate"
    elif pct < 0:
        line = (f"measured {-pct:.0f}% below the estimate: PyTorch kept fewer activations alive at once than "
                f"counted (it frees a saved tensor as soon as its gradient is computed)")
    else:
        line = (f"measured {pct:.0f}% above the estimate: short-lived temporaries of the backward pass (gradients "
                f"of activations, attention and matmul buffers) that the estimate does not count")
    if est.sum > max(measured, est.peak) * 1.05:
        line += (f"; the plain sum of the four parts ({est.sum / MiB:,.0f} MiB) overstates it, as gradients "
                 f"appear while activations are freed")
    if default_heap is not None and default_heap > measured * 1.05:
        line += (f"; with the default heap the process holds {default_heap / MiB:,.0f} MiB, as freed blocks stay "
                 f"resident (the low-memory option returns them)")
    return line


def _worker(spec: dict[str, Any]) -> dict[str, float]:
    """In a fresh process: a few training steps of a randomly initialised model of ``spec['config']``."""
    import torch

    from llm_core.model.gpt import GPT
    from llm_core.training.heap import eager_release

    torch.set_num_threads(int(spec.get("threads") or 2))
    cfg = ModelConfig.from_dict(spec["config"])
    B, T, lora, ckpt = spec["batch"], spec["seq"], spec["mode"] == "lora", spec["checkpointing"]
    if lora:
        from peft import LoraConfig, get_peft_model  # imported before the baseline
    # warm up PyTorch's kernels and thread pools on a throwaway model so their buffers count in the baseline
    tiny = GPT(ModelConfig.from_preset("tiny-llama" if cfg.arch == "llama" else "tiny-gpt2"))
    tiny.train()
    tiny(torch.randint(0, 128, (2, 16)), torch.randint(0, 128, (2, 16)))[1].backward()
    torch.optim.AdamW(tiny.parameters()).step()
    del tiny
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, cfg.vocab_size, (B, T), generator=g),
                torch.randint(0, cfg.vocab_size, (B, T), generator=g)) for _ in range(spec["steps"])]
    base = rss_mb() or 0.0
    torch.manual_seed(0)
    model: Any = GPT(cfg)
    model.gradient_checkpointing = ckpt
    if lora:
        model = get_peft_model(model, LoraConfig(r=spec["rank"], lora_alpha=2 * spec["rank"], lora_dropout=0.0,
                                                 target_modules=lora_targets(cfg, spec["targets"]), bias="none"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    with eager_release(bool(spec["eager_release"])):
        for x, y in batches:  # step 1 creates AdamW's moments; the later steps reach the peak
            loss = model(x, y)[1]  # the logits are dropped, as a training loop does
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return {"base_mb": base, "peak_mb": peak_rss_mb()}


def _run_worker(spec: dict[str, Any], timeout: float) -> int:
    """Peak bytes above the baseline, measured in a fresh Python process (nothing else in it inflates the peak)."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    code = "import json,sys; from llm_core.labs.memory import _worker; print(json.dumps(_worker(json.loads(sys.argv[1]))))"
    r = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env,
                       timeout=timeout)
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit status {r.returncode}"
        raise RuntimeError(f"the measuring run failed: {tail}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return int((out["peak_mb"] - out["base_mb"]) * MiB)


def measure_training(cfg: ModelConfig, mode: str = "full", batch: int = 1, seq: int = 128, steps: int = 3,
                     checkpointing: bool = False, rank: int = 16,
                     targets: tuple[str, ...] | list[str] = LORA_TARGETS, threads: int = 2,
                     default_heap: bool = False, timeout: float = 900) -> MemoryCheck:
    """Run ``steps`` AdamW steps (fp32, random weights: the memory is the same) in a fresh Python process and
    return its peak resident set above the one before the model was built, beside :func:`training_memory`.

    Freed memory goes back to the OS at once during the run, so the peak is the tensors alive together;
    ``default_heap`` adds a second run with glibc's default heap, which is what a plain run holds."""
    est = training_memory(cfg, mode, batch, seq, checkpointing, rank, targets)
    spec = {"config": cfg.to_dict(), "mode": mode, "batch": batch, "seq": seq, "steps": max(2, int(steps)),
            "checkpointing": checkpointing, "rank": rank, "targets": list(targets), "threads": threads,
            "eager_release": True}
    measured = _run_worker(spec, timeout)
    plain = _run_worker({**spec, "eager_release": False}, timeout) if default_heap else None
    return MemoryCheck(est, measured, spec["steps"], explain(est, measured, plain), plain)


# ---- one report for the CLI and the UI ---------------------------------------------------------------------------
def memory_report(cfg: ModelConfig, batch: int = 1, seq: int | None = None, rank: int = 16, measure: bool = False,
                  steps: int = 3, threads: int = 2, default_heap: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Every estimate for ``cfg`` as plain numbers (JSON-ready); ``measure`` adds the four training runs (each in a
    fresh process; ``progress(done, 4)`` after each), ``default_heap`` a plain-heap run for the two without
    gradient checkpointing."""
    seq = min(cfg.block_size, 512) if seq is None else seq
    rep: dict[str, Any] = {
        "model": cfg.name, "params": param_count(cfg), "param_breakdown": param_breakdown(cfg),
        "param_bytes": param_bytes(cfg),
        "kv_cache": {"bytes_per_token_fp32": kv_cache_bytes_per_token(cfg, 4),
                     "bytes_per_token_bf16": kv_cache_bytes_per_token(cfg, 2), "context": cfg.block_size,
                     "full_context_bytes_fp32": kv_cache_bytes(cfg, None, 1, 4),
                     "full_context_bytes_bf16": kv_cache_bytes(cfg, None, 1, 2)},
        "training": {"batch": batch, "seq": seq, "rank": rank, "precision": "fp32", "optimizer": "AdamW"},
    }
    done = 0
    for mode in ("full", "lora"):
        for ckpt in (False, True):
            key = f"{mode}{'_checkpointing' if ckpt else ''}"
            est = training_memory(cfg, mode, batch, seq, ckpt, rank)
            rep["training"][key] = est.to_dict()
            if measure:
                chk = measure_training(cfg, mode, batch, seq, steps, ckpt, rank, threads=threads,
                                       default_heap=default_heap and not ckpt)
                rep["training"][key].update(measured=chk.measured_bytes, explanation=chk.explanation,
                                            measured_default_heap=chk.measured_default_heap_bytes)
                done += 1
                if progress is not None:
                    progress(done, 4)
    return rep


REPORT_HEADERS = ["What", "Estimate", "Measured here", "Note"]
_TRAIN_LABELS = {"full": "Full fine-tuning", "full_checkpointing": "Full fine-tuning + gradient checkpointing",
                 "lora": "LoRA", "lora_checkpointing": "LoRA + gradient checkpointing"}


def _mib(b: float) -> str:
    if b < MiB:
        return f"{b / 1024:,.1f} KiB"
    return f"{b / MiB:,.1f} MiB" if b < 10 * 2**30 else f"{b / 2**30:,.1f} GiB"


def report_rows(rep: dict[str, Any]) -> list[list[str]]:
    """:func:`memory_report` as table rows (REPORT_HEADERS) for a person: the CLI's text output and the UI."""
    n = rep["params"]
    rows = [["Parameters", f"{n / 1e6:,.2f} M" if n >= 1e5 else f"{n:,}", "", "tied lm_head counted once"]]
    notes = {"fp32": "training / reference", "bf16": "half the bytes", "int8": "our quantize_model (per-row scales)",
             "int4": "q4_0-style, 4.5 bits a weight"}
    for prec, b in rep["param_bytes"].items():
        rows.append([f"Weights {prec}", _mib(b), "", notes.get(prec, "")])
    kv = rep["kv_cache"]
    rows.append(["KV cache per token (fp32)", f"{kv['bytes_per_token_fp32'] / 1024:,.1f} KiB", "",
                 "2 × layers × kv heads × head size × 4 bytes"])
    rows.append([f"KV cache at full context ({kv['context']:,} tokens, fp32)", _mib(kv["full_context_bytes_fp32"]),
                 "", f"bf16: {_mib(kv['full_context_bytes_bf16'])}"])
    t = rep["training"]
    for key, label in _TRAIN_LABELS.items():
        e = t[key]
        what = f"{label} (batch {t['batch']} × {t['seq']} tokens" + (f", rank {t['rank']})" if e["rank"] else ")")
        measured = _mib(e["measured"]) if e.get("measured") is not None else ""
        note = e.get("explanation") or (f"weights {_mib(e['weights'])} + grads {_mib(e['grads'])} + AdamW "
                                         f"{_mib(e['optimizer'])} + activations {_mib(e['activations'])}")
        rows.append([what, _mib(e["peak"]), measured, note])
    return rows
