"""WordPiece, BERT-style: ``##`` continuation pieces, greedy longest-match encoding, likelihood-scored merges.

Encoding (same ids as Hugging Face ``tokenizers``' WordPiece model with the BERT normalizer and pre-tokenizer):
1. normalize: drop control characters, every whitespace -> " ", spaces around CJK ideographs (optionally
   lowercase + strip accents, as BERT "uncased");
2. pre-tokenize: split on whitespace, every punctuation character is its own word;
3. each word: take the longest vocabulary piece from the left ("un"), then the longest "##" piece from there
   ("##believ", "##able"), ...; a word that cannot be covered, or longer than 100 characters, becomes [UNK].

Training (Schuster & Nakajima's WordPiece): start from single characters ("h", "##e", ...) and repeatedly merge
the pair whose merge raises the training text's likelihood under a unigram model of the current pieces the most.
With counts c (N pieces in all) and f(x) = x log x, merging a, b that occur together c_ab times changes the
log-likelihood sum_s c_s log(c_s / N) by

    gain = f(c_a - c_ab) + f(c_b - c_ab) + f(c_ab) - f(c_a) - f(c_b) + f(N) - f(N - c_ab)

which is about ``c_ab * log(c_ab * N / (c_a * c_b))``: pointwise mutual information (the HF course's
``c_ab / (c_a * c_b)`` score) weighted by how often the pair occurs. The bare ratio favours rare pairs whose
parts are rare ("Anth" + "##o"); weighting by c_ab keeps the merges that make the text short, as BPE's are.
"""

from __future__ import annotations

import heapq
import math
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import Any

from .base import Tokenizer

PREFIX = "##"
UNK = "[UNK]"
DEFAULT_SPECIALS = ("[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]", "<|endoftext|>")
MAX_WORD_CHARS = 100  # HF's max_input_chars_per_word
# Rust's char::is_whitespace (the White_Space property), which HF's BERT pre-tokenizer uses
_WHITESPACE = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {chr(c) for c in range(0x2000, 0x200B)}
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(c: str) -> bool:
    o = ord(c)
    return any(a <= o <= b for a, b in _CJK)


def _is_punct(c: str) -> bool:
    return (c.isascii() and not c.isalnum() and c.isprintable() and c != " ") or unicodedata.category(c)[0] == "P"


def bert_normalize(text: str, lowercase: bool = False) -> str:
    """HF ``BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase)``."""
    out = []
    for c in text:
        if c in "\t\n\r" or c in _WHITESPACE:
            out.append(" ")
        elif c == "\x00" or c == "\ufffd" or unicodedata.category(c)[0] == "C":
            continue  # control, format, private-use, unassigned
        elif _is_cjk(c):
            out.append(f" {c} ")
        else:
            out.append(c)
    text = "".join(out)
    if lowercase:
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn").lower()
    return text


def bert_pre_tokenize(text: str) -> list[str]:
    """HF ``BertPreTokenizer``: whitespace separates words, each punctuation character is a word of its own."""
    words: list[str] = []
    cur: list[str] = []
    for c in text:
        if c in _WHITESPACE:
            if cur:
                words.append("".join(cur))
                cur = []
        elif _is_punct(c):
            if cur:
                words.append("".join(cur))
                cur = []
            words.append(c)
        else:
            cur.append(c)
    if cur:
        words.append("".join(cur))
    return words


class WordPieceTokenizer(Tokenizer):
    """``vocab``: token strings in id order; continuation pieces start with ``##``; specials are in ``vocab``."""

    type_name = "wordpiece"

    def __init__(self, vocab: list[str], special_tokens: list[str] | tuple[str, ...] = (UNK,),
                 unk_token: str = UNK, lowercase: bool = False) -> None:
        super().__init__()
        if len(set(vocab)) != len(vocab):
            raise ValueError("WordPiece vocabulary has duplicate tokens")
        self.vocab = list(vocab)
        self.stoi = {t: i for i, t in enumerate(self.vocab)}
        missing = [s for s in (*special_tokens, unk_token) if s not in self.stoi]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the WordPiece vocabulary")
        self.special_tokens = {s: self.stoi[s] for s in special_tokens}
        self.unk_token, self.unk_id = unk_token, self.stoi[unk_token]
        self.lowercase = lowercase
        eot = self.special_tokens.get("<|endoftext|>")
        self.bos_token_id = self.eos_token_id = self.pad_token_id = eot
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # --- encoding ---------------------------------------------------------------------------------
    def encode_word(self, word: str) -> list[int]:
        """Greedy longest-match-first; one [UNK] for the whole word when some part has no piece."""
        if len(word) > MAX_WORD_CHARS:
            return [self.unk_id]
        ids: list[int] = []
        start = 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else PREFIX + word[start:end]
                i = self.stoi.get(piece)
                if i is not None:
                    ids.append(i)
                    start = end
                    break
            else:
                return [self.unk_id]
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        return self._encode_words(bert_pre_tokenize(bert_normalize(text, self.lowercase)))

    def id_to_piece(self, i: int) -> bytes:
        """A continuation piece without its ``##``; a word-start piece with a space before it (whitespace is
        not kept by WordPiece, so decoding is approximate: one space between words)."""
        if not 0 <= i < len(self.vocab):
            raise ValueError(f"token id {i} is out of range for a vocabulary of {len(self.vocab)}")
        t = self.vocab[i]
        if i in self.special_tokens.values():
            return t.encode()
        return t[len(PREFIX):].encode() if t.startswith(PREFIX) and len(t) > len(PREFIX) else b" " + t.encode()

    def decode(self, ids: list[int]) -> str:
        return super().decode(ids).removeprefix(" ")

    # --- save / load ------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        state = self._common_state()
        state.update(vocab=self.vocab, unk_token=self.unk_token, lowercase=self.lowercase)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> WordPieceTokenizer:
        tok = cls(state["vocab"], list(state.get("special_tokens", {})), state.get("unk_token", UNK),
                  bool(state.get("lowercase", False)))
        tok._load_common(state)
        return tok

    @classmethod
    def train(cls, text: str, vocab_size: int, **kwargs: Any) -> WordPieceTokenizer:
        return train_wordpiece(text, vocab_size, **kwargs)


# --- training ---------------------------------------------------------------------------------------
def wordpiece_alphabet(words: dict[str, int]) -> list[str]:
    """Every first character, and every later character as a ``##`` piece, sorted."""
    chars = {w[0] for w in words} | {PREFIX + c for w in words for c in w[1:]}
    return sorted(chars)


def _merged(a: str, b: str) -> str:
    return a + b[len(PREFIX):]


def _xlogx(x: int) -> float:
    return x * math.log(x) if x > 0 else 0.0


class _Counts:
    """Words as symbol lists with the counts a merge step needs: each symbol's count (``unit``), each adjacent
    pair's count, pair -> words holding it, and symbol -> pairs it is part of; ``total`` = N."""

    def __init__(self, words: dict[str, int]) -> None:
        self.seqs = [[w[0]] + [PREFIX + c for c in w[1:]] for w in words]
        self.freqs = list(words.values())
        self.unit: Counter[str] = Counter()
        self.pair: dict[tuple[str, str], int] = {}
        self.where: dict[tuple[str, str], set[int]] = {}
        self.pairs_of: dict[str, set[tuple[str, str]]] = {}
        for wi, (seq, f) in enumerate(zip(self.seqs, self.freqs)):
            for s in seq:
                self.unit[s] += f
            self._add_pairs(wi, seq, f, set())
        self.total = sum(self.unit.values())

    def _add_pairs(self, wi: int, seq: list[str], f: int, touched: set[tuple[str, str]]) -> None:
        for p in zip(seq, seq[1:]):
            self.pair[p] = self.pair.get(p, 0) + f
            touched.add(p)
            self.where.setdefault(p, set()).add(wi)
            self.pairs_of.setdefault(p[0], set()).add(p)
            self.pairs_of.setdefault(p[1], set()).add(p)

    def gain(self, p: tuple[str, str]) -> float:
        """Log-likelihood gain of merging ``p`` (module docstring)."""
        a, b, c = self.unit[p[0]], self.unit[p[1]], self.pair[p]
        if p[0] == p[1]:
            parts = _xlogx(a - 2 * c) - _xlogx(a)
        else:
            parts = _xlogx(a - c) + _xlogx(b - c) - _xlogx(a) - _xlogx(b)
        return parts + _xlogx(c) + _xlogx(self.total) - _xlogx(self.total - c)

    def key(self, p: tuple[str, str]) -> tuple[int, int, int]:
        """What a pair's gain depends on, N aside: a heap entry with another key is stale."""
        return self.pair.get(p, 0), self.unit[p[0]], self.unit[p[1]]

    def merge(self, a: str, b: str, new: str) -> set[tuple[str, str]]:
        """Rewrite every word holding (a, b); returns the pairs whose gain changed."""
        self.total -= self.pair[(a, b)]
        touched: set[tuple[str, str]] = set()
        for wi in self.where.pop((a, b), ()):
            seq, f = self.seqs[wi], self.freqs[wi]
            out: list[str] = []
            i = 0
            while i < len(seq):
                if i < len(seq) - 1 and seq[i] == a and seq[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            if len(out) == len(seq):
                continue  # stale index entry
            for p in zip(seq, seq[1:]):
                self.pair[p] -= f
                touched.add(p)
            for s in seq:
                self.unit[s] -= f
            for s in out:
                self.unit[s] += f
            self._add_pairs(wi, out, f, touched)
            self.seqs[wi] = out
        return touched | self.pairs_of.get(a, set()) | self.pairs_of.get(b, set())


def learn_wordpiece(words: dict[str, int], num_merges: int, min_frequency: int = 2,
                    progress: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> list[str]:
    """New tokens, in merge order, from word counts. Each step merges the pair with the highest likelihood
    gain (module docstring) among pairs seen ``min_frequency`` times (ties: smallest strings).

    Kept fast like :func:`.train.learn_merges`: a max-heap whose entries are re-pushed whenever a pair's counts
    change (its own, or one of its parts'); stale ones are skipped. N shrinks by c_ab at each merge, which moves
    every gain a little: the top entry is re-scored with today's N and taken only if it still beats the next one
    (lazy greedy)."""
    st = _Counts(words)
    heap = [(-st.gain(p), p, st.key(p)) for p, c in st.pair.items() if c >= min_frequency]
    heapq.heapify(heap)
    new_tokens: list[str] = []
    for k in range(num_merges):
        if should_stop is not None and k % 16 == 0 and should_stop():
            break
        best = None
        while heap:
            _, p, key = heapq.heappop(heap)
            if key != st.key(p) or key[0] < min_frequency:
                continue  # stale: a fresh entry was pushed when its counts changed
            now = st.gain(p)
            if heap and now < -heap[0][0]:
                heapq.heappush(heap, (-now, p, key))  # N moved: re-queue with today's gain
                continue
            best = p
            break
        if best is None:
            break
        new = _merged(*best)
        for p in st.merge(best[0], best[1], new):
            c = st.pair.get(p, 0)
            if c <= 0:
                st.pair.pop(p, None)
            elif c >= min_frequency:
                heapq.heappush(heap, (-st.gain(p), p, st.key(p)))
        new_tokens.append(new)
        if progress is not None:
            progress(k + 1, num_merges)
    return new_tokens


def train_wordpiece(text: str, vocab_size: int, special_tokens: list[str] | tuple[str, ...] = DEFAULT_SPECIALS,
                    lowercase: bool = False, min_frequency: int = 2,
                    progress: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> WordPieceTokenizer:
    """A WordPiece vocabulary of ``vocab_size`` tokens: specials, the alphabet, then learned merges."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("training text is empty")
    specials = list(special_tokens)
    if UNK not in specials:
        specials.insert(0, UNK)
    words = Counter(bert_pre_tokenize(bert_normalize(text, lowercase)))
    alphabet = [c for c in wordpiece_alphabet(words) if c not in specials]
    base = len(specials) + len(alphabet)
    if vocab_size < base:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the {len(specials)} special tokens + "
                         f"{len(alphabet)} characters of this text ({base})")
    learned = learn_wordpiece(words, vocab_size - base, min_frequency, progress, should_stop)
    seen = set(specials) | set(alphabet)
    vocab = specials + alphabet + [t for t in learned if not (t in seen or seen.add(t))]
    return WordPieceTokenizer(vocab, specials, UNK, lowercase)
