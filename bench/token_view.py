"""What recording the token view costs: decode speed with and without a ``TokenRecorder`` on the bundled SmolLM2.

Both runs decode the same greedy reply from the same prompt in this process, alternating run by run so machine
noise hits both alike; ``ratio`` = tokens/s with the recorder / without. Also ``max_abs_diff`` between the
recorded log-probabilities and one teacher-forced forward pass (``score_tokens``) over the same tokens.

    python bench/token_view.py --json [--new-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from llm_core.generation.generate import GenerationConfig, stream_generate  # noqa: E402
from llm_core.labs.token_view import TokenRecorder, score_tokens  # noqa: E402
from llm_core.weights.hub import DEFAULT_MODEL, load_model  # noqa: E402


@dataclass
class BenchArgs:
    new_tokens: int = 64
    repeats: int = 3
    json: bool = False


def _run(model, tok, prompt: list[int], cfg: GenerationConfig, record: bool) -> tuple[float, list[int], object]:  # noqa: ANN001
    rec = TokenRecorder(tok, cfg) if record else None
    t0 = time.perf_counter()
    stream = stream_generate(model, tok, prompt, cfg, observe=rec)
    stream.text()
    dt = time.perf_counter() - t0
    return len(stream.token_ids) / dt, stream.token_ids, rec


def main(args: BenchArgs) -> dict:
    torch.set_num_threads(2)
    model, tok = load_model(DEFAULT_MODEL)
    prompt = tok.encode("The history of the printing press begins", allowed_special=set())
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, temperature=0.0, stop_on_eos=False)
    _run(model, tok, prompt, cfg, False)  # warm-up
    plain, recorded = [], []
    ids, rec = [], None
    for _ in range(args.repeats):
        plain.append(_run(model, tok, prompt, cfg, False)[0])
        speed, ids, rec = _run(model, tok, prompt, cfg, True)
        recorded.append(speed)
    scored = score_tokens(model, tok, prompt, ids, cfg)
    diff = max(abs(a.logprob - b.logprob) for a, b in zip(rec.steps, scored.steps))
    out = {"bench": "token_view", "model": DEFAULT_MODEL, "new_tokens": len(ids),
           "tok_s_plain": round(statistics.median(plain), 2), "tok_s_recorded": round(statistics.median(recorded), 2),
           "ratio": round(statistics.median(recorded) / statistics.median(plain), 3),
           "max_abs_diff_vs_teacher_forced": float(f"{diff:.3g}")}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return out


def parse_args(argv: list[str] | None = None) -> BenchArgs:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    return BenchArgs(a.new_tokens, a.repeats, a.json)


if __name__ == "__main__":
    main(parse_args())
