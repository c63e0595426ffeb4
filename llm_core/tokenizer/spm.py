"""SentencePiece-style BPE (Gemma, Llama 2): ``▁`` for spaces, merges over characters, byte fallback.

Unlike the byte-level BPE of :mod:`.bpe`, there is no pre-tokenizer regex and no byte -> unicode map:
1. normalize: every ``' '`` becomes ``'▁'`` (Gemma 3 adds no dummy ``▁`` in front; Llama 2 does);
2. the whole text between added tokens is one "word", cut into characters; a character the vocabulary lacks
   becomes its UTF-8 bytes as ``<0xNN>`` tokens (byte fallback), else ``<unk>`` (neighbouring unknowns fuse);
3. merges: the adjacent pair with the lowest merge rank is merged first (leftmost on ties), with a heap over a
   linked list of symbols, so a long prompt costs O(n log n) (Gemma has no pre-tokenizer to cut it short).
These are HF ``tokenizers``' BPE semantics (``byte_fallback=True``, ``fuse_unk=True``) step for step, so ids
match a Gemma ``tokenizer.json`` exactly. Readers of HF/GGUF files live in :mod:`.spm_format` (plain data in).
"""

from __future__ import annotations

import heapq
import os
from pathlib import Path
from typing import Any

import regex

from .base import ByteTableTokenizer
from .patterns import clean_surrogates

SPACE = "▁"  # U+2581: SentencePiece's visible space
_BYTE_PIECE = regex.compile(r"<0x([0-9A-Fa-f]{2})>")


class SentencePieceTokenizer(ByteTableTokenizer):
    """SentencePiece-style BPE over pieces.

    ``pieces[i]``: the model vocabulary's piece for id ``i`` (None for a hole). ``merges``: ``(left, right)``
    piece pairs in priority order; ``left + right`` must be a piece. ``special_tokens``: HF added tokens, split out
    of the raw text before anything else; those named in ``normalized_tokens`` are matched after normalization
    instead (HF's ``normalized=True``). ``add_dummy_prefix``: a ``▁`` in front of each normalized chunk (HF's
    ``Prepend("▁")`` normalizer, Llama 2); Gemma 3 has none.
    """

    type_name = "sentencepiece_bpe"

    def __init__(
        self,
        pieces: list[str | None],
        merges: list[tuple[str, str]],
        special_tokens: dict[str, int] | None = None,
        unk_token_id: int | None = None,
        byte_fallback: bool = True,
        fuse_unk: bool = True,
        add_dummy_prefix: bool = False,
        ignore_merges: bool = False,
        normalized_tokens: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.pieces: list[str | None] = list(pieces)
        self.merges: list[tuple[str, str]] = [(str(a), str(b)) for a, b in merges]
        self.special_tokens = {str(k): int(v) for k, v in (special_tokens or {}).items()}
        self.unk_token_id = unk_token_id
        self.byte_fallback = byte_fallback
        self.fuse_unk = fuse_unk
        self.add_dummy_prefix = add_dummy_prefix
        self.ignore_merges = ignore_merges
        self.normalized_tokens: set[str] = set(normalized_tokens or ())
        unknown = self.normalized_tokens - set(self.special_tokens)
        if unknown:
            raise ValueError(f"normalized_tokens names tokens that are not special tokens: {sorted(unknown)}")
        self._build()

    # --- vocabulary -------------------------------------------------------------------------------
    def _build(self) -> None:
        """Lookup tables: piece -> id, the 256 byte-fallback ids, (left id, right id) -> (rank, merged id)."""
        index: dict[str, int] = {}
        for i, p in enumerate(self.pieces):
            if p is not None:
                index.setdefault(p, i)  # HF's vocab maps a string to one id
        self._index = index
        if self.unk_token_id is not None and not 0 <= self.unk_token_id < len(self.pieces):
            raise ValueError(f"unk_token_id {self.unk_token_id} is outside the vocabulary of {len(self.pieces)}")
        self._byte_ids: list[int | None] = [index.get(f"<0x{b:02X}>") for b in range(256)]
        ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(self.merges):
            try:
                ranks[(index[a], index[b])] = (rank, index[a + b])  # a repeated pair keeps its last rank (as HF)
            except KeyError as e:
                raise ValueError(f"merge #{rank} ({a!r}, {b!r}): {e.args[0]!r} is not in the vocabulary") from None
        self._ranks = ranks
        size = max([len(self.pieces)] + [i + 1 for i in self.special_tokens.values()])
        id_bytes: list[bytes | None] = [None] * size
        for i, p in enumerate(self.pieces):
            if p is not None:
                m = _BYTE_PIECE.fullmatch(p) if self.byte_fallback else None
                id_bytes[i] = bytes([int(m.group(1), 16)]) if m else p.replace(SPACE, " ").encode("utf-8")
        for s, i in self.special_tokens.items():
            id_bytes[i] = s.encode("utf-8")
        self._id_bytes = id_bytes
        self._cache: dict[str, list[int]] = {}

    def piece(self, i: int) -> str:
        """The vocabulary string of id ``i`` (``'▁the'``, ``'<0x0A>'``, ``'<start_of_turn>'``)."""
        for s, j in self.special_tokens.items():
            if j == i:
                return s
        p = self.pieces[i] if 0 <= i < len(self.pieces) else None
        if p is None:
            raise ValueError(f"token id {i} is not in this vocabulary (size {self.vocab_size})")
        return p

    # --- encoding ---------------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """Spaces -> ``▁`` (and a leading ``▁`` with ``add_dummy_prefix``, on non-empty text only)."""
        s = text.replace(" ", SPACE)
        return SPACE + s if self.add_dummy_prefix and s else s

    def _symbols(self, word: str) -> list[int]:
        """Characters -> ids; unknown ones -> ``<0xNN>`` bytes, else one (fused) unk. Mirrors HF ``merge_word``,
        including its order quirk: a pending unk is emitted after byte-fallback tokens that follow it."""
        index, byte_ids, unk = self._index, self._byte_ids, self.unk_token_id
        out: list[int] = []
        pending = False  # an unk waiting to be emitted (HF keeps it until the next known character)
        for ch in word:
            i = index.get(ch)
            if i is not None:
                if pending:
                    out.append(unk)  # type: ignore[arg-type]
                    pending = False
                out.append(i)
                continue
            if self.byte_fallback:
                ids = [byte_ids[b] for b in ch.encode("utf-8")]
                if None not in ids:
                    out.extend(ids)  # type: ignore[arg-type]
                    continue
            if unk is not None:
                if pending and not self.fuse_unk:
                    out.append(unk)
                pending = True
            # no unk token: the character is dropped (HF does the same)
        if pending:
            out.append(unk)  # type: ignore[arg-type]
        return out

    def _merge_all(self, sym: list[int]) -> list[int]:
        """Apply merges lowest rank first (leftmost on ties): a heap of (rank, position, merged id) over a doubly
        linked list; stale heap entries (a neighbour already merged away) are skipped when popped."""
        n = len(sym)
        ranks = self._ranks
        if n < 2 or not ranks:
            return sym
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prev = list(range(-1, n - 1))
        alive = [True] * n
        heap = [(r[0], k, r[1]) for k, pair in enumerate(zip(sym, sym[1:])) if (r := ranks.get(pair))]
        heapq.heapify(heap)
        while heap:
            _, pos, new = heapq.heappop(heap)
            j = nxt[pos]
            if not alive[pos] or j == -1:
                continue
            hit = ranks.get((sym[pos], sym[j]))
            if hit is None or hit[1] != new:
                continue  # stale: this pair no longer stands here
            sym[pos] = new
            alive[j] = False
            k = nxt[j]
            nxt[pos] = k
            if k != -1:
                prev[k] = pos
            p = prev[pos]
            if p != -1 and (h := ranks.get((sym[p], new))):
                heapq.heappush(heap, (h[0], p, h[1]))
            if k != -1 and (h := ranks.get((new, sym[k]))):
                heapq.heappush(heap, (h[0], pos, h[1]))
        return [s for s, a in zip(sym, alive) if a]

    def encode_word(self, word: str) -> list[int]:
        """Ids of one normalized chunk (no special tokens in it)."""
        if not word:
            return []
        if self.ignore_merges and word in self._index:
            return [self._index[word]]
        cached = self._cache.get(word)
        if cached is not None:
            return list(cached)
        ids = self._merge_all(self._symbols(word))
        if len(word) <= 256 and len(self._cache) < 100_000:
            self._cache[word] = ids
        return list(ids)

    def _encode_plain(self, text: str) -> list[int]:
        return self.encode_word(self.normalize(text))

    @staticmethod
    def _split(text: str, tokens: dict[str, int]) -> list[tuple[str, int | None]]:
        """[(chunk, None) | (token, id)]: leftmost-longest matches of ``tokens`` (as HF's added vocabulary)."""
        if not tokens:
            return [(text, None)] if text else []
        alts = "|".join(regex.escape(s) for s in sorted(tokens, key=len, reverse=True))
        parts: list[tuple[str, int | None]] = []
        for k, chunk in enumerate(regex.split(f"({alts})", text)):
            if k % 2:
                parts.append((chunk, tokens[chunk]))
            elif chunk:
                parts.append((chunk, None))
        return parts

    def encode(self, text: str, allowed_special: str | set[str] = "all") -> list[int]:
        """Text -> ids. Added tokens are cut out of the raw text first; each chunk between them is normalized,
        ``normalized`` added tokens are cut out of that, and the rest goes through the BPE merges."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        allowed = self._allowed_specials(allowed_special)
        raw = {s: i for s, i in allowed.items() if s not in self.normalized_tokens}
        # HF normalizes a ``normalized`` token's own text too before matching it against normalized text
        norm = {self.normalize(s): i for s, i in allowed.items() if s in self.normalized_tokens}
        out: list[int] = []
        for chunk, sid in self._split(clean_surrogates(text), raw):
            if sid is not None:
                out.append(sid)
                continue
            for piece, nid in self._split(self.normalize(chunk), norm):
                out.extend([nid] if nid is not None else self.encode_word(piece))
        return out

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode(text, allowed_special="none")

    # --- save / load ------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        state = self._common_state()
        state.update(
            pieces=self.pieces,
            merges=[[a, b] for a, b in self.merges],
            unk_token_id=self.unk_token_id,
            byte_fallback=self.byte_fallback,
            fuse_unk=self.fuse_unk,
            add_dummy_prefix=self.add_dummy_prefix,
            ignore_merges=self.ignore_merges,
            normalized_tokens=sorted(self.normalized_tokens),
        )
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SentencePieceTokenizer:
        tok = cls(
            pieces=state["pieces"],
            merges=[(a, b) for a, b in state["merges"]],
            special_tokens=state.get("special_tokens", {}),
            unk_token_id=state.get("unk_token_id"),
            byte_fallback=bool(state.get("byte_fallback", True)),
            fuse_unk=bool(state.get("fuse_unk", True)),
            add_dummy_prefix=bool(state.get("add_dummy_prefix", False)),
            ignore_merges=bool(state.get("ignore_merges", False)),
            normalized_tokens=state.get("normalized_tokens"),
        )
        tok._load_common(state)
        return tok

    # --- constructors (the readers give plain data) -------------------------------------------------
    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        """A SentencePiece-style HF ``tokenizer.json`` (file or folder; Gemma's), with ``tokenizer_config.json``."""
        from . import spm_format

        kwargs, attrs = spm_format.read_tokenizer_json(path)
        return cls._with(kwargs, attrs)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike | Any) -> SentencePieceTokenizer:
        """From GGUF metadata with ``tokenizer.ggml.model == "llama"`` (tokens, scores, token types), as Gemma's
        GGUFs carry it; an open ``gguf.GGUFReader`` is accepted too."""
        from . import spm_format

        kwargs, attrs = spm_format.read_gguf(path)
        return cls._with(kwargs, attrs)

    @classmethod
    def _with(cls, kwargs: dict[str, Any], attrs: dict[str, Any]) -> SentencePieceTokenizer:
        tok = cls(**kwargs)
        for name, value in attrs.items():
            setattr(tok, name, value)
        return tok

    @classmethod
    def from_foreign_folder(cls, folder: Path) -> SentencePieceTokenizer | None:
        from . import spm_format

        path = folder / "tokenizer.json"
        if path.is_file() and spm_format.is_sentencepiece_json(path):
            return cls.from_tokenizer_json(path)
        return None

    def save_hf(self, folder: str | os.PathLike) -> None:
        """Write HF ``tokenizer.json`` + ``tokenizer_config.json`` (``tokenizers`` gives identical ids)."""
        from . import spm_format

        spm_format.save_hf(self, folder)
