"""Byte-level BPE training, the efficient way.

1. Pre-tokenize with the regex and count each distinct word once (Shakespeare: 5 MB -> ~40k words).
2. Count pairs over distinct words weighted by frequency; keep an index pair -> words containing it.
3. Each merge touches only the words in the index entry, updates pair counts by the difference, and pushes
   changed counts onto a max-heap (stale entries are skipped when popped).
Ties between equally frequent pairs go to the smallest (a, b), so the result is deterministic and equal to the
naive "recount everything each merge" trainer.

This module returns plain data (merges, special-token ids); :func:`llm_core.tokenizer.bpe.train_bpe` builds the
tokenizer from it, so the imports inside the package point one way (bpe -> train).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable

import regex

from .patterns import clean_surrogates, python_pattern, resolve_pattern

DEFAULT_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

Pair = tuple[int, int]


def count_words(text: str, pattern: str, special_tokens: list[str] | tuple[str, ...] = ()) -> Counter[str]:
    """Distinct pre-tokenized words and their counts; special-token text is cut out first (document breaks)."""
    rx = python_pattern(resolve_pattern(pattern))
    chunks = [text]
    if special_tokens:
        alts = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
        chunks = regex.split(alts, text)
    words: Counter[str] = Counter()
    for chunk in chunks:
        words.update(rx.findall(chunk))
    return words


def _pairs_delta(old: list[int], new: list[int], f: int, delta: dict[Pair, int]) -> None:
    for p in zip(old, old[1:]):
        delta[p] = delta.get(p, 0) - f
    for p in zip(new, new[1:]):
        delta[p] = delta.get(p, 0) + f


def learn_merges(
    words: dict[bytes, int] | Counter[bytes],
    num_merges: int,
    min_frequency: int = 2,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[tuple[int, int, int]]:
    """Merges ``(a, b, new_id)`` with new ids from 256, learned from byte-strings with frequencies."""
    seqs: list[list[int]] = [list(w) for w in words]
    freqs: list[int] = list(words.values())
    counts: dict[Pair, int] = {}
    where: dict[Pair, set[int]] = {}
    for wi, (w, f) in enumerate(zip(seqs, freqs)):
        for p in zip(w, w[1:]):
            counts[p] = counts.get(p, 0) + f
            s = where.get(p)
            if s is None:
                where[p] = {wi}
            else:
                s.add(wi)
    heap = [(-c, a, b) for (a, b), c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int, int]] = []
    step = max(1, num_merges // 100)
    for k in range(num_merges):
        if should_stop is not None and k % 16 == 0 and should_stop():
            break
        best: Pair | None = None
        while heap:
            neg, a, b = heapq.heappop(heap)
            if counts.get((a, b), 0) == -neg:
                best = (a, b)
                break
        if best is None or counts[best] < min_frequency:
            break
        new_id = 256 + k
        a, b = best
        delta: dict[Pair, int] = {}
        for wi in where.pop(best, ()):
            w = seqs[wi]
            out: list[int] = []
            i, n, hit = 0, len(w), False
            while i < n:
                if i < n - 1 and w[i] == a and w[i + 1] == b:
                    out.append(new_id)
                    i += 2
                    hit = True
                else:
                    out.append(w[i])
                    i += 1
            if not hit:  # stale index entry: this word lost the pair in an earlier merge
                continue
            seqs[wi] = out
            _pairs_delta(w, out, freqs[wi], delta)
            for p in zip(out, out[1:]):
                if new_id in p:
                    s = where.get(p)
                    if s is None:
                        where[p] = {wi}
                    else:
                        s.add(wi)
        for p, d in delta.items():
            if d == 0:
                continue
            c = counts.get(p, 0) + d
            if c > 0:
                counts[p] = c
                heapq.heappush(heap, (-c, p[0], p[1]))
            else:
                counts.pop(p, None)
        merges.append((a, b, new_id))
        if progress is not None and (k % step == 0 or k == num_merges - 1):
            progress(k + 1, num_merges)
    return merges


def learn_bpe(
    text: str,
    vocab_size: int,
    pattern: str = "gpt4",
    special_tokens: list[str] | tuple[str, ...] | None = None,
    min_frequency: int = 2,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    verbose: bool = False,
) -> tuple[list[tuple[int, int, int]], dict[str, int]]:
    """(merges, special-token ids) of a byte-level BPE whose vocabulary (256 bytes + merges + specials) has
    ``vocab_size`` ids. Stops early (smaller vocab) when no pair occurs ``min_frequency`` times or ``should_stop()``
    is true. Special tokens get the ids right after the merges."""
    specials = list(DEFAULT_SPECIALS if special_tokens is None else special_tokens)
    if len(set(specials)) != len(specials) or any(not s for s in specials):
        raise ValueError(f"special tokens must be distinct non-empty strings, got {specials}")
    num_merges = vocab_size - 256 - len(specials)
    if num_merges < 0:
        raise ValueError(f"vocab_size {vocab_size} is smaller than 256 bytes + {len(specials)} special tokens")
    if not isinstance(text, str) or not text:
        raise ValueError("training text is empty")
    words = count_words(clean_surrogates(text), pattern, specials)
    byte_words: Counter[bytes] = Counter({w.encode("utf-8"): c for w, c in words.items()})
    bar = None
    if verbose and progress is None:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_merges, desc="BPE merges", unit="merge")

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

    try:
        merges = learn_merges(byte_words, num_merges, min_frequency, progress, should_stop)
    finally:
        if bar is not None:
            bar.close()
    next_id = 256 + len(merges)
    return merges, {s: next_id + k for k, s in enumerate(specials)}
