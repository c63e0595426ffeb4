"""Unigram language-model tokenizer, SentencePiece-style: ``▁`` for spaces, Viterbi segmentation, byte fallback.

A Unigram vocabulary is a list of pieces with log-probabilities. Encoding picks, for each word, the
segmentation whose pieces' log-probabilities sum highest (Viterbi over the lattice of all pieces that match).
Same ids as Hugging Face ``tokenizers``' Unigram model with a ``Metaspace(prepend_scheme="always")``
pre-tokenizer: a character no piece covers is unknown; neighbouring unknowns fuse into one, which becomes
its UTF-8 bytes ``<0xNN>`` when byte fallback is on, else ``<unk>``.

Training (Kudo 2018, as SentencePiece does it):
1. seed: the most frequent substrings of the words (score = frequency x length), all characters included;
2. EM: the E-step runs forward-backward over each word's lattice to get each piece's expected count, the
   M-step sets log p = digamma(count) - digamma(total) and drops pieces expected less than half a time;
3. prune: remove the pieces whose loss (how much the likelihood drops when their uses go to the next-best
   segmentation) is smallest, keeping 75%; repeat 2-3 until the vocabulary is about 10% above its target;
4. keep the characters and the highest-scoring pieces.
The trainer lives in :mod:`.unigram_train` (it imports this module, never the reverse).
"""

from __future__ import annotations

from typing import Any

import regex

from .base import Tokenizer

SPACE = "▁"  # U+2581: a space, kept visible inside pieces
UNK = "<unk>"
DEFAULT_SPECIALS = (UNK, "<|endoftext|>")
UNK_PENALTY = 10.0  # an unknown character scores (lowest piece score - 10), as in SentencePiece and HF
_NEG_INF = float("-inf")
_BYTE_PIECE = regex.compile(r"<0x([0-9A-F]{2})>")


def metaspace_split(text: str) -> list[str]:
    """Spaces -> ``▁``, a ``▁`` put in front, then one word before each ``▁``: "a  b" -> ["▁a", "▁", "▁b"]."""
    if not text:
        return []
    s = text.replace(" ", SPACE)
    if not s.startswith(SPACE):
        s = SPACE + s
    return regex.findall(f"{SPACE}[^{SPACE}]*", s)


def byte_piece(b: int) -> str:
    return f"<0x{b:02X}>"


def viterbi(word: str, index: dict[str, int], scores: list[float], max_len: int,
            unk_score: float | None) -> list[tuple[int, int, int]] | None:
    """Best segmentation of ``word`` as (start, end, piece id), id -1 for an unknown character; None when some
    character is uncovered and ``unk_score`` is None. Ties keep the first candidate (shorter piece, earlier
    start), exactly like HF's ``encode_optimized``."""
    n = len(word)
    best = [_NEG_INF] * (n + 1)
    back: list[tuple[int, int] | None] = [None] * (n + 1)  # end -> (start, id)
    best[0] = 0.0
    for start in range(n):
        if back[start] is None and start > 0:
            continue  # unreachable (only when unknowns are not allowed)
        here = best[start]
        single = False
        for end in range(start + 1, min(n, start + max_len) + 1):
            i = index.get(word[start:end])
            if i is None:
                continue
            single |= end == start + 1
            cand = here + scores[i]
            if back[end] is None or cand > best[end]:
                best[end], back[end] = cand, (start, i)
        if not single and unk_score is not None:
            cand = here + unk_score
            if back[start + 1] is None or cand > best[start + 1]:
                best[start + 1], back[start + 1] = cand, (start, -1)
    if back[n] is None and n > 0:
        return None
    path: list[tuple[int, int, int]] = []
    end = n
    while end > 0:
        start, i = back[end]  # type: ignore[misc]
        path.append((start, end, i))
        end = start
    return path[::-1]


class UnigramTokenizer(Tokenizer):
    """``pieces``: (piece, log-probability) in id order; specials and ``<0xNN>`` byte pieces are pieces too."""

    type_name = "unigram"

    def __init__(self, pieces: list[tuple[str, float]], special_tokens: list[str] | tuple[str, ...] = (UNK,),
                 unk_token: str = UNK, byte_fallback: bool = True) -> None:
        super().__init__()
        self.pieces = [(str(p), float(s)) for p, s in pieces]
        self.index = {p: i for i, (p, _) in enumerate(self.pieces)}
        if len(self.index) != len(self.pieces):
            raise ValueError("Unigram vocabulary has duplicate pieces")
        missing = [s for s in (*special_tokens, unk_token) if s not in self.index]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the Unigram vocabulary")
        self.special_tokens = {s: self.index[s] for s in special_tokens}
        self.unk_token, self.unk_id = unk_token, self.index[unk_token]
        self.byte_fallback = byte_fallback
        self.scores = [s for _, s in self.pieces]
        self.max_len = max((len(p) for p, _ in self.pieces), default=1)
        self.unk_score = min(self.scores) - UNK_PENALTY
        self._byte_ids = [self.index.get(byte_piece(b)) for b in range(256)]
        eot = self.special_tokens.get("<|endoftext|>")
        self.bos_token_id = self.eos_token_id = self.pad_token_id = eot
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    # --- encoding ---------------------------------------------------------------------------------
    def _unknown(self, text: str) -> list[int]:
        """A run of unknown characters: its bytes as ``<0xNN>`` pieces if all exist, else one ``<unk>``."""
        i = self.index.get(text)
        if i is not None:
            return [i]
        if self.byte_fallback:
            ids = [self._byte_ids[b] for b in text.encode("utf-8")]
            if all(i is not None for i in ids):
                return ids  # type: ignore[return-value]
        return [self.unk_id]

    def encode_word(self, word: str) -> list[int]:
        path = viterbi(word, self.index, self.scores, self.max_len, self.unk_score)
        assert path is not None  # unknowns are allowed, so every word has a path
        out: list[int] = []
        run = ""  # neighbouring unknown characters fuse into one
        for start, end, i in path:
            if i < 0:
                run += word[start:end]
                continue
            if run:
                out.extend(self._unknown(run))
                run = ""
            out.append(i)
        if run:
            out.extend(self._unknown(run))
        return out

    def _encode_plain(self, text: str) -> list[int]:
        return self._encode_words(metaspace_split(text))

    def id_to_piece(self, i: int) -> bytes:
        if not 0 <= i < len(self.pieces):
            raise ValueError(f"token id {i} is out of range for a vocabulary of {len(self.pieces)}")
        p = self.pieces[i][0]
        m = _BYTE_PIECE.fullmatch(p)
        if m and self.byte_fallback:
            return bytes([int(m.group(1), 16)])
        return p.encode() if i in self.special_tokens.values() else p.replace(SPACE, " ").encode()

    def decode(self, ids: list[int]) -> str:
        return super().decode(ids).removeprefix(" ")  # the space put in front by the pre-tokenizer

    # --- save / load ------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        state = self._common_state()
        state.update(pieces=[[p, s] for p, s in self.pieces], unk_token=self.unk_token,
                     byte_fallback=self.byte_fallback)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> UnigramTokenizer:
        tok = cls([(p, s) for p, s in state["pieces"]], list(state.get("special_tokens", {})),
                  state.get("unk_token", UNK), bool(state.get("byte_fallback", True)))
        tok._load_common(state)
        return tok
