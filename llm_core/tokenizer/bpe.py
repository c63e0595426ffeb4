"""Byte-level BPE tokenizer: regex pre-tokenization, merges by priority, special tokens.

Two encoders give identical ids: tiktoken's Rust engine (default, fast) and a pure-Python reference
(:meth:`BPETokenizer.encode_python`, minbpe-style). Vocabularies whose ids are not in merge order get a
rank -> id table so tiktoken (which merges by rank) can still be used.

The readers (:mod:`.hf_format`, :mod:`.gguf_vocab`) and the trainer (:mod:`.train`) return plain data and this
module builds the tokenizer from it: the imports point one way (bpe -> them), with no cycle.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any

import regex

from . import gguf_vocab, hf_format, spm_format
from .base import ByteTableTokenizer, merge
from .patterns import clean_surrogates, pattern_name, python_pattern, resolve_pattern
from .train import DEFAULT_SPECIALS, learn_bpe

_INF = float("inf")


class BPETokenizer(ByteTableTokenizer):
    """Byte-level BPE.

    ``byte_ids[b]``: id of the single byte ``b`` (None if the vocabulary lacks it; such bytes are dropped on
    encode, exactly like HF tokenizers without an unk token). ``merges``: ``(a, b, new_id)`` in priority
    order; the vocabulary is rebuilt from bytes + merges (+ ``extra_tokens`` that no merge produces).
    """

    type_name = "bpe"

    def __init__(
        self,
        pattern: str = "gpt2",
        byte_ids: list[int | None] | None = None,
        merges: list[tuple[int, int, int]] | None = None,
        special_tokens: dict[str, int] | None = None,
        extra_tokens: dict[int, bytes] | None = None,
        ignore_merges: bool = False,
        normalizer: str | None = None,
    ) -> None:
        super().__init__()
        if normalizer not in (None, "NFC"):
            raise ValueError(f"normalizer {normalizer!r} is not supported (None or 'NFC')")
        self.normalizer = normalizer  # "NFC" (Qwen): text is NFC-normalized before splitting, like HF's normalizer
        self.pattern = resolve_pattern(pattern)
        self.byte_ids: list[int | None] = list(range(256)) if byte_ids is None else list(byte_ids)
        if len(self.byte_ids) != 256:
            raise ValueError(f"byte_ids must have 256 entries, got {len(self.byte_ids)}")
        self.merges: list[tuple[int, int, int]] = [tuple(m) for m in (merges or [])]  # type: ignore[misc]
        self.special_tokens = dict(special_tokens or {})
        self.extra_tokens = dict(extra_tokens or {})
        self.ignore_merges = ignore_merges  # HF BPE option: a piece that is itself a token is not merged
        self._build()

    # --- vocabulary -------------------------------------------------------------------------------
    def _build(self) -> None:
        """Rebuild vocab (id -> bytes) from bytes + merges, plus the lookup tables the encoders use."""
        vocab: dict[int, bytes] = {}
        for b, i in enumerate(self.byte_ids):
            if i is not None:
                if i in vocab:
                    raise ValueError(f"id {i} is given to two bytes")
                vocab[i] = bytes([b])
        self.merge_ranks: dict[tuple[int, int], tuple[int, int]] = {}  # (a, b) -> (rank, new id)
        for rank, (a, b, new) in enumerate(self.merges):
            if a not in vocab or b not in vocab:
                raise ValueError(f"merge #{rank} ({a}, {b}) uses an id that no earlier byte or merge defines")
            piece = vocab[a] + vocab[b]
            if new in vocab and vocab[new] != piece:
                raise ValueError(f"merge #{rank} gives id {new} a second meaning")
            vocab[new] = piece
            self.merge_ranks.setdefault((a, b), (rank, new))
        for i, piece in self.extra_tokens.items():
            if i in vocab:
                raise ValueError(f"extra token id {i} clashes with a byte or merge token")
            vocab[i] = piece
        for s, i in self.special_tokens.items():
            if i in vocab:
                raise ValueError(f"special token {s!r} id {i} clashes with a regular token")
            vocab[i] = s.encode("utf-8")
        self.vocab = vocab
        size = max(vocab) + 1 if vocab else 0
        self._id_bytes: list[bytes | None] = [None] * size
        for i, piece in vocab.items():
            self._id_bytes[i] = piece
        skip = set(self.extra_tokens) | set(self.special_tokens.values())
        self._regular: dict[bytes, int] = {}  # bytes -> id for byte and merge tokens
        for i, piece in vocab.items():
            if i not in skip and piece not in self._regular:
                self._regular[piece] = i
        self._present = bytes(b for b in range(256) if self.byte_ids[b] is not None)
        self._missing = len(self._present) < 256
        self._py_re = python_pattern(self.pattern)
        self._cache: dict[str, list[int]] = {}
        self._enc = None
        self._rank_to_id: list[int] | None = None

    # --- pure-Python encoder (reference) ----------------------------------------------------------
    def _bpe(self, piece: bytes) -> list[int]:
        """Merge the bytes of one pre-tokenized piece, lowest-rank pair first (HF BPE semantics)."""
        if self.ignore_merges and piece in self._regular:
            return [self._regular[piece]]
        byte_ids = self.byte_ids
        ids = [byte_ids[b] for b in piece if byte_ids[b] is not None]
        ranks = self.merge_ranks
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, (_INF,))[0])
            hit = ranks.get(pair)
            if hit is None:
                break
            ids = merge(ids, pair, hit[1])
        return ids  # type: ignore[return-value]

    def _encode_ordinary_python(self, text: str) -> list[int]:
        out: list[int] = []
        cache = self._cache
        for piece in self._py_re.findall(text):
            ids = cache.get(piece)
            if ids is None:
                ids = self._bpe(piece.encode("utf-8"))
                if len(cache) < 200_000:
                    cache[piece] = ids
            out.extend(ids)
        return out

    def _split_special(self, text: str, specials: dict[str, int]) -> list[tuple[str, int | None]]:
        """[(text, None) | (special, id)]; longest special first at each position (like HF added tokens)."""
        if not specials:
            return [(text, None)]
        alts = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
        parts: list[tuple[str, int | None]] = []
        for chunk in regex.split(f"({alts})", text):
            if chunk in specials:
                parts.append((chunk, specials[chunk]))
            elif chunk:
                parts.append((chunk, None))
        return parts

    def _normalize(self, text: str) -> str:
        return unicodedata.normalize("NFC", text) if self.normalizer == "NFC" else text

    def encode_python(self, text: str, allowed_special: str | set[str] = "all") -> list[int]:
        """Pure-Python encode (the reference the tiktoken path must equal)."""
        text = self._normalize(clean_surrogates(text))
        out: list[int] = []
        for chunk, sid in self._split_special(text, self._allowed_specials(allowed_special)):
            if sid is not None:
                out.append(sid)
            else:
                out.extend(self._encode_ordinary_python(chunk))
        return out

    # --- tiktoken encoder -------------------------------------------------------------------------
    def _tiktoken(self) -> Any:
        """Build (once) a tiktoken Encoding. Ranks = our ids when merge ids grow in merge order, else a table."""
        if self._enc is not None:
            return self._enc
        import tiktoken

        byte_toks = {bytes([b]): i for b, i in enumerate(self.byte_ids) if i is not None}
        merge_ids = [new for _, _, new in self.merges]
        seen: set[int] = set()
        unique_merges = [m for m in merge_ids if not (m in seen or seen.add(m))]
        in_order = all(x < y for x, y in zip(unique_merges, unique_merges[1:]))
        if in_order:
            ranks = dict(byte_toks)
            ranks.update({self.vocab[m]: m for m in unique_merges})
            specials = dict(self.special_tokens)
            self._rank_to_id = None
        else:
            # tiktoken merges the adjacent pair whose concatenation has the lowest rank: rank = merge priority.
            ordered = [i for _, i in sorted(byte_toks.items())] + unique_merges
            ranks = {self.vocab[i]: r for r, i in enumerate(ordered)}
            specials = {s: len(ordered) + k for k, s in enumerate(self.special_tokens)}
            self._rank_to_id = ordered + list(self.special_tokens.values())
        self._enc = tiktoken.Encoding(
            name=f"scratch-bpe-{id(self)}", pat_str=self.pattern, mergeable_ranks=ranks, special_tokens=specials
        )
        return self._enc

    def _needs_python(self, text: str) -> bool:
        if self.ignore_merges:
            return True
        if not self._missing:
            return False
        # bytes absent from the vocabulary are dropped (HF semantics); tiktoken cannot do that -> Python path
        return bool(clean_surrogates(text).encode("utf-8").translate(None, self._present))

    def encode(self, text: str, allowed_special: str | set[str] = "all") -> list[int]:
        """Text -> ids (tiktoken engine). ``allowed_special``: "all", "none"/empty set, or a set of specials;
        special-token text that is not allowed is encoded as ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        text = self._normalize(text)
        if self._needs_python(text):
            return self.encode_python(text, allowed_special)
        specials = self._allowed_specials(allowed_special)
        enc = self._tiktoken()
        ids = enc.encode(text, allowed_special=set(specials), disallowed_special=())
        if self._rank_to_id is not None:
            table = self._rank_to_id
            ids = [table[r] for r in ids]
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode(text, allowed_special="none")

    # --- save / load ------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        state = self._common_state()
        name = pattern_name(self.pattern)
        state.update(
            pattern=name or self.pattern,
            byte_ids=self.byte_ids,
            merges=[list(m) for m in self.merges],
            extra_tokens={str(i): p.hex() for i, p in self.extra_tokens.items()},
            ignore_merges=self.ignore_merges,
        )
        if self.normalizer is not None:
            state["normalizer"] = self.normalizer
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BPETokenizer:
        tok = cls(
            pattern=state["pattern"],
            byte_ids=state["byte_ids"],
            merges=[tuple(m) for m in state["merges"]],
            special_tokens=state.get("special_tokens", {}),
            extra_tokens={int(i): bytes.fromhex(h) for i, h in state.get("extra_tokens", {}).items()},
            ignore_merges=bool(state.get("ignore_merges", False)),
            normalizer=state.get("normalizer"),
        )
        tok._load_common(state)
        return tok

    # --- constructors (the readers and the trainer give plain data) --------------------------------
    @classmethod
    def from_gguf(cls, path: str | os.PathLike | Any | None = None, pattern: str | None = None) -> BPETokenizer:
        """SmolLM2's (or any GPT-2-style) vocab + merges from GGUF metadata; None = the bundled SmolLM2 file;
        an open ``gguf.GGUFReader`` is accepted too."""
        kwargs, attrs = gguf_vocab.read_gguf_tokenizer(path, pattern=pattern)
        tok = cls(**kwargs)
        for name, value in attrs.items():
            setattr(tok, name, value)
        return tok

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike, pattern: str | None = None) -> BPETokenizer:
        kwargs, cfg = hf_format.read_tokenizer_json(path, pattern=pattern)
        tok = cls(**kwargs)
        hf_format.apply_config(tok, cfg)
        return tok

    @classmethod
    def from_gpt2_files(cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike) -> BPETokenizer:
        """OpenAI/HF GPT-2 ``vocab.json`` + ``merges.txt``; ``<|endoftext|>`` becomes the special bos/eos token."""
        tok = cls(**hf_format.read_gpt2_files(vocab_json, merges_txt))
        tok.bos_token_id = tok.eos_token_id = tok.special_tokens.get("<|endoftext|>")
        return tok

    @classmethod
    def from_foreign_folder(cls, folder: Path) -> BPETokenizer | None:
        """A folder with a HF byte-level ``tokenizer.json`` (or GPT-2 ``vocab.json`` + ``merges.txt``), else None."""
        if (folder / "tokenizer.json").is_file():
            if spm_format.is_sentencepiece_json(folder / "tokenizer.json"):
                return None  # SentencePieceTokenizer reads it
            return cls.from_tokenizer_json(folder)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return cls.from_gpt2_files(folder / "vocab.json", folder / "merges.txt")
        return None

    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = "gpt4", special_tokens: list[str] | None = None,
              **kwargs: Any) -> BPETokenizer:
        return train_bpe(text, vocab_size, pattern=pattern, special_tokens=special_tokens, **kwargs)

    def save_hf(self, folder: str | os.PathLike) -> None:
        """Write HF ``tokenizer.json`` + ``tokenizer_config.json`` (AutoTokenizer gives identical ids)."""
        hf_format.save_hf(self, folder)


def train_bpe(text: str, vocab_size: int, pattern: str = "gpt4",
              special_tokens: list[str] | tuple[str, ...] | None = None, **kwargs: Any) -> BPETokenizer:
    """Train a byte-level BPE whose vocabulary (256 bytes + merges + specials) has ``vocab_size`` ids
    (:func:`llm_core.tokenizer.train.learn_bpe`; ``min_frequency``, ``progress``, ``should_stop``, ``verbose``).
    ``<|endoftext|>`` is bos/eos/pad; ``<|im_start|>``/``<|im_end|>`` enable ChatML."""
    specials = DEFAULT_SPECIALS if special_tokens is None else special_tokens
    merges, special_ids = learn_bpe(text, vocab_size, pattern=pattern, special_tokens=specials, **kwargs)
    tok = BPETokenizer(pattern=pattern, merges=merges, special_tokens=special_ids)
    tok.bos_token_id = tok.eos_token_id = tok.pad_token_id = tok.special_tokens.get("<|endoftext|>")
    if "<|im_start|>" in tok.special_tokens and "<|im_end|>" in tok.special_tokens:
        tok.chat_template = "chatml"
    return tok


def load_tokenizer_json(path: str | os.PathLike, pattern: str | None = None) -> BPETokenizer:
    """:meth:`BPETokenizer.from_tokenizer_json` as a function."""
    return BPETokenizer.from_tokenizer_json(path, pattern=pattern)


def load_gpt2_files(vocab_json: str | os.PathLike, merges_txt: str | os.PathLike) -> BPETokenizer:
    """:meth:`BPETokenizer.from_gpt2_files` as a function."""
    return BPETokenizer.from_gpt2_files(vocab_json, merges_txt)


def load_gguf_tokenizer(path: str | os.PathLike | Any | None = None, pattern: str | None = None) -> BPETokenizer:
    """:meth:`BPETokenizer.from_gguf` as a function."""
    return BPETokenizer.from_gguf(path, pattern=pattern)
