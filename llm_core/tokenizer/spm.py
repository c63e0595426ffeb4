"""SentencePiece-style BPE (Gemma, Llama 2): ``▁`` for spaces, merges over characters, byte fallback.

Unlike the byte-level BPE of :mod:`.bpe`, there is no pre-tokenizer regex and no byte -> unicode map:
1. normalize: every ``' '`` becomes ``'▁'`` (Gemma 3 adds no dummy ``▁`` in front; Llama 2 does);
2. the whole text between added tokens is one "word", cut into characters; a character the vocabulary lacks
   becomes its UTF-8 bytes as ``<0xNN>`` tokens (byte fallback), else ``<unk>`` (neighbouring unknowns fuse);
3. merges: the adjacent pair with the lowest merge rank is merged first (leftmost on ties), with a heap over a
   linked list of symbols, so a long prompt costs O(n log n) (Gemma has no pre-tokenizer to cut it short).
These are HF ``tokenizers``' BPE semantics (``byte_fallback=True``, ``fuse_unk=True``) step for step, so ids
match a Gemma ``tokenizer.json`` exactly. Readers of HF/GGUF files live in :mod:`.spm_format` (plain data in).

Speed: the text is one "word", but most of its character boundaries can never be merged across. A boundary
between a character c and a following ``▁`` is crossed only by a piece that contains ``c▁``; the vocabulary says
which c have one. The text is cut at every other such boundary into chunks (``▁the``, ``▁theory.``), each merged
alone and cached, which gives the same ids as merging the whole text (no merge can join two chunks, and merges
inside one chunk do not depend on the others) at a fraction of the cost: text repeats its words.
"""

from __future__ import annotations

import heapq
import os
import re
from pathlib import Path
from typing import Any

import regex

from .base import ByteTableTokenizer
from .patterns import clean_surrogates

SPACE = "▁"  # U+2581: SentencePiece's visible space
_BYTE_PIECE = regex.compile(r"<0x([0-9A-Fa-f]{2})>")
_CHUNK = re.compile(f"{SPACE}*[^{SPACE}]+|{SPACE}+")  # a run of ▁ (maybe none) and the characters up to the next ▁
_CACHE_MAX, _CACHE_CHUNK = 200_000, 256  # cached chunks, and the longest chunk cached
_SHORT = 32  # symbols up to which the list merge beats the heap (measured: most chunks have 3-10)
_NO_MERGE = 1 << 62  # the rank of a pair no merge joins


def byte_of_piece(piece: str) -> int | None:
    """The byte a byte-fallback piece stands for (``<0x0A>`` -> 10), or None for any other piece."""
    m = _BYTE_PIECE.fullmatch(piece)
    return int(m.group(1), 16) if m else None


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
                b = byte_of_piece(p) if self.byte_fallback else None
                id_bytes[i] = bytes([b]) if b is not None else p.replace(SPACE, " ").encode("utf-8")
        for s, i in self.special_tokens.items():
            id_bytes[i] = s.encode("utf-8")
        self._id_bytes = id_bytes
        self._cache: dict[str, list[int]] = {}
        # characters c for which some piece holds "c▁": the text is never cut between c and a following ▁
        self._joined_before_space = {p[k - 1] for p in index if SPACE in p[1:] for k in range(1, len(p))
                                     if p[k] == SPACE and p[k - 1] != SPACE}
        self._cut_after: dict[str, bool] = {}  # character -> may the text be cut between it and a following ▁
        self._split_re: dict[Any, tuple[Any, dict[str, int], dict[str, int]]] = {}  # allowed_special -> patterns

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
        linked list; stale heap entries (a neighbour already merged away) are skipped when popped. Short symbol
        lists (most chunks) go through :meth:`_merge_short` instead: the same merges, fewer Python steps."""
        n = len(sym)
        ranks = self._ranks
        if n < 2 or not ranks:
            return sym
        if n <= _SHORT:
            return self._merge_short(sym)
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

    def _merge_short(self, sym: list[int]) -> list[int]:
        """:meth:`_merge_all` for a few symbols: the rank of every adjacent pair in a list (``_NO_MERGE`` for none);
        ``min`` and ``list.index`` (leftmost) pick the next merge, and only the merged pair's neighbours change."""
        get, none = self._ranks.get, (_NO_MERGE, -1)
        hits = [get(pair, none) for pair in zip(sym, sym[1:])]
        rank = [h[0] for h in hits]  # (n-1,) rank of pair (i, i+1)
        new = [h[1] for h in hits]  # (n-1,) its merged id
        while rank:
            best = min(rank)
            if best == _NO_MERGE:
                break
            i = rank.index(best)
            m = sym[i] = new[i]
            del sym[i + 1], rank[i], new[i]
            if i:
                rank[i - 1], new[i - 1] = get((sym[i - 1], m), none)
            if i < len(rank):
                rank[i], new[i] = get((m, sym[i + 1]), none)
        return sym

    def _may_cut_after(self, ch: str) -> bool:
        """May the text be cut between ``ch`` and a following ``▁``? Yes when ``ch`` is a piece of its own (so not
        bytes or <unk>) and no piece holds ``ch▁``: then no merge can cross that boundary."""
        ok = self._cut_after.get(ch)
        if ok is None:
            ok = self._cut_after[ch] = (ch in self._index and SPACE in self._index
                                        and ch not in self._joined_before_space)
        return ok

    def encode_word(self, word: str) -> list[int]:
        """Ids of one normalized chunk of text (no special tokens in it): cut into chunks merged alone (see the
        module docstring), or whole with ``ignore_merges`` (HF then looks the whole word up first)."""
        if not word:
            return []
        if self.ignore_merges:
            if word in self._index:
                return [self._index[word]]
            return list(self._merge_all(self._symbols(word)))
        out: list[int] = []
        cache, pending = self._cache, ""
        get = cache.get
        for chunk in _CHUNK.findall(word):
            if pending:
                chunk, pending = pending + chunk, ""
            ids = get(chunk)  # cached chunks end where the text may be cut (see below)
            if ids is None:
                if not self._may_cut_after(chunk[-1]):
                    pending = chunk  # glued to the next chunk: a piece may join them
                    continue
                ids = self._merge_all(self._symbols(chunk))
                if len(chunk) <= _CACHE_CHUNK and len(cache) < _CACHE_MAX:
                    cache[chunk] = ids
            out += ids
        if pending:  # the end of the text: not cached (a later text may go on after it)
            out += self._merge_all(self._symbols(pending))
        return out

    def _encode_plain(self, text: str) -> list[int]:
        return self.encode_word(self.normalize(text))

    @staticmethod
    def _pattern(tokens: dict[str, int]) -> Any:
        """The compiled alternation of ``tokens``, longest first (None for none)."""
        if not tokens:
            return None
        return regex.compile("(" + "|".join(regex.escape(s) for s in sorted(tokens, key=len, reverse=True)) + ")")

    @classmethod
    def _split(cls, text: str, tokens: dict[str, int], pattern: Any = None) -> list[tuple[str, int | None]]:
        """[(chunk, None) | (token, id)]: leftmost-longest matches of ``tokens`` (as HF's added vocabulary)."""
        if not tokens:
            return [(text, None)] if text else []
        if pattern is None:
            pattern = cls._pattern(tokens)
        parts: list[tuple[str, int | None]] = []
        for k, chunk in enumerate(pattern.split(text)):
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
        key = (allowed_special if isinstance(allowed_special, str) else frozenset(allowed_special),
               id(self.special_tokens), len(self.special_tokens))  # a replaced or grown table: patterns anew
        if key not in self._split_re:
            allowed = self._allowed_specials(allowed_special)
            raw = {s: i for s, i in allowed.items() if s not in self.normalized_tokens}
            # HF normalizes a ``normalized`` token's own text too before matching it against normalized text
            norm = {self.normalize(s): i for s, i in allowed.items() if s in self.normalized_tokens}
            self._split_re[key] = (self._pattern(raw), raw, norm)
        raw_re, raw, norm = self._split_re[key]
        out: list[int] = []
        for chunk, sid in self._split(clean_surrogates(text), raw, raw_re):
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
