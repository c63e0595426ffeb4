"""Training a Unigram vocabulary: seed, EM, prune (see :mod:`.unigram` for the idea in four steps).

Follows SentencePiece's ``unigram_model_trainer.cc`` (and HF's port of it) in plain Python: words are the
``▁``-prefixed pieces of :func:`.unigram.metaspace_split`, counted once each, so a few hundred KB of text
is a few thousand distinct words and each EM step is a loop over them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

from .unigram import DEFAULT_SPECIALS, UNK, UnigramTokenizer, byte_piece, metaspace_split, viterbi

Pieces = dict[str, float]  # piece -> log-probability


def _digamma(x: float) -> float:
    """psi(x) by recurrence up to 7 and the asymptotic series (SentencePiece's Digamma)."""
    r = 0.0
    while x < 7:
        r -= 1 / x
        x += 1
    x -= 0.5
    xx = 1 / x
    xx2 = xx * xx
    xx4 = xx2 * xx2
    return r + math.log(x) + xx2 / 24 - 7 * xx4 / 960 + 31 * xx4 * xx2 / 8064 - 127 * xx4 * xx4 / 30720


def seed_pieces(words: Counter[str], chars: Counter[str], max_piece_length: int, seed_size: int) -> Pieces:
    """All characters plus the ``seed_size`` substrings (2..max_piece_length characters, seen at least twice,
    not crossing a ``▁``) with the highest frequency x length; log-probabilities from frequencies."""
    subs: Counter[str] = Counter()
    for w, f in words.items():
        n = len(w)
        for i in range(n):
            for j in range(i + 2, min(n, i + max_piece_length) + 1):
                subs[w[i:j]] += f
    ranked = sorted(((f * len(s), s) for s, f in subs.items() if f >= 2), reverse=True)[:seed_size]
    freq = dict(chars)
    freq.update({s: subs[s] for _, s in ranked})
    total = sum(freq.values())
    return {s: math.log(f / total) for s, f in freq.items()}


class Lattices:
    """Every word's lattice over the seed pieces, built once: (start, end, piece id) edges by start, and the
    same by end (descending) for the backward pass. A pruned piece keeps its id with score None."""

    def __init__(self, words: list[str], freqs: list[int], names: list[str]) -> None:
        self.words, self.freqs, self.names = words, freqs, names
        index = {p: i for i, p in enumerate(names)}
        max_len = max(len(p) for p in names)
        self.edges: list[list[tuple[int, int, int]]] = []
        for w in words:
            e = []
            for s in range(len(w)):
                for t in range(s + 1, min(len(w), s + max_len) + 1):
                    i = index.get(w[s:t])
                    if i is not None:
                        e.append((s, t, i))
            self.edges.append(e)
        self.back_edges = [sorted(e, key=lambda x: -x[1]) for e in self.edges]

    def expected_counts(self, scores: list[float | None]) -> tuple[list[float], float]:
        """E-step: each piece's expected count over all segmentations (forward-backward), and the
        log-likelihood of the text."""
        counts = [0.0] * len(scores)
        loglik = 0.0
        exp, log1p, inf = math.exp, math.log1p, -math.inf
        for w, f, e, be in zip(self.words, self.freqs, self.edges, self.back_edges):
            n = len(w)
            alpha = [inf] * (n + 1)
            alpha[0] = 0.0
            for s, t, i in e:  # by start: alpha[s] is complete when read
                sc = scores[i]
                if sc is None or alpha[s] == inf:
                    continue
                x, y = alpha[t], alpha[s] + sc  # log(exp(x) + exp(y))
                alpha[t] = y if x == inf else (x + log1p(exp(y - x)) if x > y else y + log1p(exp(x - y)))
            beta = [inf] * (n + 1)
            beta[n] = 0.0
            for s, t, i in be:  # by end, descending
                sc = scores[i]
                if sc is None or beta[t] == inf:
                    continue
                x, y = beta[s], beta[t] + sc
                beta[s] = y if x == inf else (x + log1p(exp(y - x)) if x > y else y + log1p(exp(x - y)))
            z = alpha[n]
            loglik += f * z
            for s, t, i in e:
                sc = scores[i]
                if sc is not None:
                    counts[i] += f * exp(alpha[s] + sc + beta[t] - z)
        return counts, loglik

    def best_paths(self, scores: list[float | None]) -> list[list[int]]:
        """Viterbi piece ids of every word."""
        paths = []
        for w, e in zip(self.words, self.edges):
            n = len(w)
            best = [-math.inf] * (n + 1)
            back = [(-1, -1)] * (n + 1)
            best[0] = 0.0
            for s, t, i in e:
                sc = scores[i]
                if sc is not None and best[s] + sc > best[t]:
                    best[t], back[t] = best[s] + sc, (s, i)
            path, t = [], n
            while t > 0:
                t, i = back[t]
                path.append(i)
            paths.append(path)
        return paths


def maximize(counts: list[float], scores: list[float | None], keep: list[bool]) -> list[float | None]:
    """M-step: log p = digamma(count) - digamma(total); pieces expected under half a time go (not ``keep``)."""
    alive = [i for i, sc in enumerate(scores) if sc is not None and (counts[i] >= 0.5 or keep[i])]
    total = _digamma(sum(counts[i] for i in alive))
    out: list[float | None] = [None] * len(scores)
    for i in alive:
        out[i] = _digamma(max(counts[i], 1e-6)) - total
    return out


def prune(lat: Lattices, scores: list[float | None], keep: list[bool], target: int,
          shrinking_factor: float) -> list[float | None]:
    """Keep the pieces whose removal would cost the most likelihood (SentencePiece's PruneSentencePieces)."""
    names = lat.names
    alive = [i for i, sc in enumerate(scores) if sc is not None]
    freq = [0.0] * len(scores)  # uses in the best segmentations
    share = [0.0] * len(scores)  # weight of the words that use it
    for path, f in zip(lat.best_paths(scores), lat.freqs):
        for i in path:
            freq[i] += f
        for i in set(path):
            share[i] += f
    total, n_words = sum(freq), sum(lat.freqs)
    index = {names[i]: i for i in alive}
    max_len = max(len(names[i]) for i in alive)
    dense = [s if s is not None else 0.0 for s in scores]
    kept: list[int] = []
    candidates: list[tuple[float, str, int]] = []
    for i in alive:
        p = names[i]
        if keep[i]:
            kept.append(i)
            continue
        if freq[i] == 0:
            continue  # no best segmentation uses it
        best = viterbi(p, index, dense, max_len, None)
        if best is None or len(best) > 1:
            continue  # its own string is better split: it is never chosen
        del index[p]
        alt = viterbi(p, index, dense, max_len, None)
        index[p] = i
        if not alt:
            kept.append(i)  # nothing can replace it
            continue
        # removing p hands its uses to the alternative pieces
        logsum_alt = math.log(total + freq[i] * (len(alt) - 1))
        logprob_alt = sum(math.log(freq[j] + freq[i]) - logsum_alt for _, _, j in alt)
        loss = share[i] / n_words * (math.log(freq[i]) - math.log(total) - logprob_alt)
        candidates.append((-loss, p, i))
    size = max(target, int(shrinking_factor * len(alive)))
    candidates.sort()
    kept += [i for _, _, i in candidates[: max(0, size - len(kept))]]
    out: list[float | None] = [None] * len(scores)
    for i in kept:
        out[i] = scores[i]
    return out


def train_unigram(text: str, vocab_size: int, special_tokens: list[str] | tuple[str, ...] = DEFAULT_SPECIALS,
                  byte_fallback: bool = True, max_piece_length: int = 16, shrinking_factor: float = 0.75,
                  n_sub_iterations: int = 2, seed_size: int | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> UnigramTokenizer:
    """A Unigram vocabulary of ``vocab_size`` pieces: specials, 256 ``<0xNN>`` byte pieces (byte fallback),
    every character of the text, then learned pieces by score. Stops early (smaller vocabulary) when
    ``should_stop()``; the text may also have fewer useful pieces than asked (the result is then smaller)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("training text is empty")
    specials = list(dict.fromkeys([UNK, *special_tokens]))
    reserved = specials + ([byte_piece(b) for b in range(256)] if byte_fallback else [])
    words = Counter(metaspace_split(text))
    chars: Counter[str] = Counter()
    for w, f in words.items():
        for c in w:
            chars[c] += f
    n_pieces = vocab_size - len(reserved)
    if n_pieces < len(chars):
        raise ValueError(f"vocab_size {vocab_size} is smaller than {len(reserved)} special/byte pieces + the "
                         f"{len(chars)} characters of this text ({len(reserved) + len(chars)})")
    seed = seed_pieces(words, chars, max_piece_length, seed_size or max(8 * n_pieces, 4000))
    lat = Lattices(list(words), list(words.values()), list(seed))
    scores: list[float | None] = list(seed.values())
    keep = [p in chars for p in lat.names]
    target = int(n_pieces * 1.1)
    rounds = max(1, math.ceil(math.log(max(1.0, len(seed) / target)) / -math.log(shrinking_factor)) + 1)
    for r in range(rounds + 8):
        if should_stop is not None and should_stop():
            break
        for _ in range(n_sub_iterations):
            counts, _ = lat.expected_counts(scores)
            scores = maximize(counts, scores, keep)
        if progress is not None:
            progress(min(r + 1, rounds), rounds)
        if sum(sc is not None for sc in scores) <= target:
            break
        scores = prune(lat, scores, keep, target, shrinking_factor)
    # finalize: every character, then the best-scoring pieces
    ranked = sorted(((-sc, lat.names[i], keep[i]) for i, sc in enumerate(scores) if sc is not None))
    chosen = [(p, -neg) for neg, p, k in ranked if k]
    chosen += [(p, -neg) for neg, p, k in ranked if not k][: n_pieces - len(chosen)]
    chosen.sort(key=lambda kv: (-kv[1], kv[0]))
    taken = set(reserved)
    vocab = [(p, 0.0) for p in reserved] + [(p, sc) for p, sc in chosen if p not in taken]
    return UnigramTokenizer(vocab, specials, UNK, byte_fallback)
