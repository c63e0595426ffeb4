"""Peak resident memory of one process that loads the default model and decodes with it.

Run on its own so nothing else inflates the figure; ``bench/generate.py`` starts it as a subprocess per precision.
The default workload is issue 19's: load, then greedily decode 128 tokens after a 134-token prompt (held-out
Shakespeare). ``--workload chat`` runs three chat turns instead (the previous workload of this script).
``--loader lean`` (default) is ``llm_core.generation.quantize.load_quantized`` (the quantized model is built straight from
the checkpoint file); ``--loader inplace`` is ``load_model`` + ``quantize_model``, the CLI's path before it.

    python bench/memory.py --dtype int8 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm_core.labs.memory import peak_rss_mb, rss_mb, ru_maxrss_mb  # noqa: E402  (the one copy of these helpers)
from llm_core.labs.memory import status_mb as _status_mb  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Tell me a short story about a lighthouse keeper.",
             "Summarize that story in one sentence."]


@dataclass
class MemoryArgs:
    model: str = "smollm2-135m-instruct"
    dtype: str = "fp32"
    workload: str = "decode"  # "decode": prompt_tokens then new_tokens greedy; "chat": three chat turns
    prompt_tokens: int = 134
    new_tokens: int = 128
    loader: str = "lean"  # "lean": load_quantized; "inplace": load_model + quantize_model
    max_new_tokens: int = 96  # per chat turn
    threads: int | None = None
    json: bool = False


def main(args: MemoryArgs) -> dict:
    import torch

    from llm_core.generation.generate import GenerationConfig, generate

    if args.threads:
        torch.set_num_threads(args.threads)
    stages = {"import_torch": round(peak_rss_mb(), 1)}
    t0 = time.perf_counter()
    if args.loader == "lean":
        from llm_core.generation.quantize import load_quantized

        model, tok = load_quantized(args.model, args.dtype)
    else:
        from llm_core.generation.quantize import quantize_model
        from llm_core.weights.hub import load_model

        model, tok = load_model(args.model)
        model = quantize_model(model, args.dtype)
    load_s = time.perf_counter() - t0
    stages["loaded"] = round(peak_rss_mb(), 1)
    anon_file = (_status_mb("RssAnon"), _status_mb("RssFile"))
    tokens = 0
    if args.workload == "chat":
        from llm_core.generation.chat import ChatSession

        session = ChatSession(model, tok, config=GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=0))
        for q in QUESTIONS:
            session.send(q)
            tokens += session.last_stats.new_tokens
    else:
        from bench.generate import prompt_ids

        ids = prompt_ids(tok, args.prompt_tokens)
        cfg = GenerationConfig(max_new_tokens=args.new_tokens, temperature=0, stop_on_eos=False)
        tokens = len(generate(model, tok, ids, cfg))
    try:
        from llm_core.generation.quantize import weight_bytes

        weights_mb = round(sum(weight_bytes(model).values()) / 2**20, 1)
    except ImportError:  # an older tree (before/after comparisons)
        weights_mb = None
    out = {"dtype": args.dtype, "peak_rss_mb": round(peak_rss_mb(), 1), "ru_maxrss_mb": round(ru_maxrss_mb(), 1),
           "rss_end_mb": round(rss_mb() or 0.0, 1), "peak_rss_after_load_mb": stages["loaded"],
           "peak_rss_import_torch_mb": stages["import_torch"], "weights_mb": weights_mb,
           "loaded_anon_file_mb": anon_file,
           "load_s": round(load_s, 2), "workload": args.workload, "loader": args.loader,
           "generated_tokens": tokens, "pid": os.getpid()}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()), flush=True)
    return out


def parse_args(argv: list[str] | None = None) -> MemoryArgs:
    d = MemoryArgs()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=d.model)
    p.add_argument("--dtype", default=d.dtype, choices=["fp32", "bf16", "int8", "int4"])
    p.add_argument("--workload", default=d.workload, choices=["decode", "chat"])
    p.add_argument("--prompt-tokens", type=int, default=d.prompt_tokens)
    p.add_argument("--new-tokens", type=int, default=d.new_tokens)
    p.add_argument("--loader", default=d.loader, choices=["lean", "inplace"])
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="per chat turn")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    return MemoryArgs(**vars(p.parse_args(argv)))


if __name__ == "__main__":
    main(parse_args())
