"""The llama.cpp side of ``bench/generate.py``: a worker that runs in the peers venv (``make bench-peers``).

It imports only ``llama_cpp`` (no torch), reads one JSON request per line on stdin and answers one JSON line on
stdout, so the parent can alternate ours and llama.cpp run by run in the same measurement:

    {"op": "quantize", "src": IN.gguf, "dst": OUT.gguf, "ftype": "f32" | "f16" | "q8_0" | "q4_1"}  -> {"ok": true}
    {"op": "run", "gguf": PATH, "prompt": [ids], "n": 128, "threads": 2}
        -> {"ttft_s", "tok_s", "tokens"}: greedy, batch 1; ttft = prompt + first token, tok/s after the first

    .venv-peers/bin/python bench/llamacpp_peer.py      # then JSON lines on stdin
"""

from __future__ import annotations

import json
import sys
import time

import llama_cpp
import numpy as np

FTYPES = {"f32": 0, "f16": 1, "q4_1": 3, "q8_0": 7}  # llama_ftype: LLAMA_FTYPE_ALL_F32, MOSTLY_F16, ...
_models: dict[tuple[str, int, int], llama_cpp.Llama] = {}


def quantize(src: str, dst: str, ftype: str) -> dict:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.allow_requantize = True  # the bundled file is Q4_1: dequantized, then written in ftype
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    return {"ok": rc == 0, "rc": rc}


def model(path: str, n_ctx: int, threads: int) -> llama_cpp.Llama:
    key = (path, n_ctx, threads)
    if key not in _models:
        _models.clear()  # one model at a time: memory stays that of one precision
        _models[key] = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads,
                                       n_threads_batch=threads, verbose=False)
    return _models[key]


def run(path: str, prompt: list[int], n: int, threads: int) -> dict:
    llm = model(path, 2048 * ((len(prompt) + n) // 2048 + 1), threads)
    vocab = llm.n_vocab()

    def next_token() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(vocab,))
        return int(logits.argmax())

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    tokens = [next_token()]
    t1 = time.perf_counter()
    for _ in range(n - 1):
        llm.eval([tokens[-1]])
        tokens.append(next_token())
    t2 = time.perf_counter()
    return {"ttft_s": t1 - t0, "tok_s": (n - 1) / (t2 - t1) if n > 1 else 0.0, "tokens": tokens}


def main() -> None:
    llama_cpp.llama_backend_init()
    print(json.dumps({"ready": True, "version": llama_cpp.__version__}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "quantize":
                out = quantize(req["src"], req["dst"], req["ftype"])
            else:
                out = run(req["gguf"], req["prompt"], int(req["n"]), int(req.get("threads", 2)))
        except Exception as e:  # noqa: BLE001 - reported to the parent as one line
            out = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
