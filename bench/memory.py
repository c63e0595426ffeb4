"""Peak resident memory of a process that loads the default model and chats with it (a few turns).

Run on its own so nothing else inflates the figure; ``bench/generate.py`` starts it as a subprocess.

    python bench/memory.py --dtype fp32 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTIONS = ["What is the capital of France?", "Tell me a short story about a lighthouse keeper.",
             "Summarize that story in one sentence."]


@dataclass
class MemoryArgs:
    model: str = "smollm2-135m-instruct"
    dtype: str = "fp32"
    max_new_tokens: int = 96
    threads: int | None = None
    json: bool = False


def ru_maxrss_mb() -> float:
    """getrusage's peak; KiB on Linux (bytes on macOS). On Linux it also counts the parent's resident set copied
    at fork time (kept across exec), so a child of a big process reports at least the parent's size."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def peak_rss_mb() -> float:
    """This process image's own peak resident set: VmHWM (Linux, reset by exec), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return ru_maxrss_mb()


def main(args: MemoryArgs) -> dict:
    import torch

    from llm_core.chat import ChatSession
    from llm_core.generate import GenerationConfig
    from llm_core.hub import load_model
    from llm_core.quantize import quantize_model

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    model = quantize_model(model, args.dtype)
    load_s = time.perf_counter() - t0
    after_load = peak_rss_mb()
    session = ChatSession(model, tok, config=GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=0))
    tokens = 0
    for q in QUESTIONS:
        session.send(q)
        tokens += session.last_stats.new_tokens
    out = {"dtype": args.dtype, "peak_rss_mb": round(peak_rss_mb(), 1), "ru_maxrss_mb": round(ru_maxrss_mb(), 1),
           "peak_rss_after_load_mb": round(after_load, 1),
           "load_s": round(load_s, 2), "chat_turns": len(QUESTIONS), "generated_tokens": tokens, "pid": os.getpid()}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()), flush=True)
    return out


def parse_args(argv: list[str] | None = None) -> MemoryArgs:
    d = MemoryArgs()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=d.model)
    p.add_argument("--dtype", default=d.dtype, choices=["fp32", "bf16", "int8"])
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    return MemoryArgs(**vars(p.parse_args(argv)))


if __name__ == "__main__":
    main(parse_args())
