"""Throughput of the OpenAI-compatible API under concurrent streams, against 127.0.0.1 only.

    python bench/serve.py [--json] [--max-tokens 48] [--threads 2] [--no-batching] [--dtype fp32|bf16|int8|int4]

Starts `python -m llm_core serve` on a free loopback port (the bundled model), then streams completions: one at a
time, then 4 and 8 at once (each stream greedy, a counting prompt so it does not stop early). Prints:
- single_tok_s: tokens/s of one stream;
- agg_tok_s_4, agg_tok_s_8: all streams' tokens / wall time with 4 and 8 streams;
- ratio_4: agg_tok_s_4 / single_tok_s (the issue's target: >= 2.5, which needs streams to share decode steps);
- p95_ttft_s_4: 95th percentile time to the first token with 4 streams;
- errors: failed streams (must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ServeBenchArgs:
    json: bool = False
    max_tokens: int = 48
    threads: int = 2
    repeats: int = 1
    no_batching: bool = False  # STUDIO_BATCHING=0: every stream decodes on its own (the old path), to compare
    dtype: str | None = None  # the server's precision ($STUDIO_PRECISION); None: the bundled model's chosen one


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(threads: int, batching: bool = True, dtype: str | None = None) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", STUDIO_BATCHING="1" if batching else "0")
    if dtype:
        env["STUDIO_PRECISION"] = dtype
    env.pop("STUDIO_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "llm_core", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit("the API server exited during start-up")
        try:
            httpx.get(f"{url}/models", timeout=2)
            return proc, url
        except httpx.TransportError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the API server did not answer within 120 s") from None
            time.sleep(0.3)


def one_stream(url: str, max_tokens: int, i: int) -> dict:
    """Stream one completion; returns tokens, time to first token, total time (or the error)."""
    import httpx

    body = {"prompt": f"{i + 1}, {i + 2}, {i + 3}, {i + 4},", "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    try:
        with httpx.stream("POST", f"{url}/completions", json=body, timeout=600) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                elif ttft is None and event["choices"] and event["choices"][0]["text"]:
                    ttft = time.perf_counter() - t0
        return {"tokens": tokens, "ttft_s": ttft or 0.0, "total_s": time.perf_counter() - t0, "error": None}
    except Exception as e:  # noqa: BLE001 - counted, not raised: the bench reports errors
        return {"tokens": 0, "ttft_s": 0.0, "total_s": time.perf_counter() - t0, "error": str(e)}


def concurrent(url: str, n: int, max_tokens: int) -> tuple[list[dict], float]:
    out: list[dict] = [{}] * n
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, one_stream(url, max_tokens, i)))
               for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, time.perf_counter() - t0


def main(args: ServeBenchArgs) -> dict:
    proc, url = start_server(args.threads, not args.no_batching, args.dtype)
    try:
        one_stream(url, 4, 0)  # warm up: the model loads on first use
        singles = [one_stream(url, args.max_tokens, i) for i in range(max(1, args.repeats))]
        single = float(np.mean([s["tokens"] / s["total_s"] for s in singles if s["tokens"]]))
        res: dict = {"max_tokens": args.max_tokens, "threads": args.threads, "cpus": os.cpu_count(),
                     "batching": not args.no_batching, "dtype": args.dtype or "auto", "single_tok_s": round(single, 2)}
        errors = sum(s["error"] is not None for s in singles)
        for n in (4, 8):
            rows, wall = concurrent(url, n, args.max_tokens)
            errors += sum(r["error"] is not None for r in rows)
            res[f"agg_tok_s_{n}"] = round(sum(r["tokens"] for r in rows) / wall, 2)
            if n == 4:
                res["p95_ttft_s_4"] = round(float(np.percentile([r["ttft_s"] for r in rows], 95)), 3)
        res["ratio_4"] = round(res["agg_tok_s_4"] / single, 3) if single else None
        res["errors"] = errors
        return res
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def parse_args(argv: list[str] | None = None) -> ServeBenchArgs:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    p.add_argument("--repeats", type=int, default=1, help="single-stream runs averaged")
    p.add_argument("--no-batching", action="store_true", help="serve without dynamic batching (to compare)")
    p.add_argument("--dtype", default=None, help="the server's precision, e.g. fp32 or bf16 (default: the bundled "
                   "model's measured choice)")
    return ServeBenchArgs(**vars(p.parse_args(argv)))


if __name__ == "__main__":
    a = parse_args()
    r = main(a)
    print(json.dumps(r) if a.json else json.dumps(r, indent=2))
