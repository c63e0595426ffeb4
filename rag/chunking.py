"""Token-aware recursive splitting: paragraphs, then lines, then sentences, then words, then raw tokens.

Sizes are counted in the embedding model's tokens, from one tokenizer pass per page (token start offsets +
bisect), so a chunk never exceeds what the embedder can see. Chunks never cross pages, keep exact character
offsets into the document text, and overlap by up to `overlap` tokens of whole pieces.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass

from .loaders import LoadedDocument

# separators from coarse to fine; a piece ends right after its separator
_SEPARATORS = [
    re.compile(r"\n[ \t]*\n\s*"),  # paragraphs
    re.compile(r"\n"),  # lines
    re.compile(r"(?<=[.!?;:])[\"')\]]*\s+"),  # sentences (and clauses)
    re.compile(r"\s+"),  # words
]
_SENTENCE_END = re.compile(r"(?<=[.!?])([\"')\]]*)\s+|\n[ \t]*\n\s*")
# a full stop after these is no sentence end ("The project lead is Dr. Ines Marlow."): titles and Latin shorthands
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_ABBREVIATION = re.compile(r"(?:^|[^\w.])(?:dr|mr|mrs|ms|prof|st|sr|jr|vs|cf|fig|approx|e\.g|i\.e)\.$", re.I)

# A tokenization function: text -> sorted character offsets where each token starts.
TokenStarts = Callable[[str], list[int]]


def regex_token_starts(text: str) -> list[int]:
    """Fallback when no fast tokenizer is at hand: words and punctuation marks count as one token each."""
    return [m.start() for m in re.finditer(r"\w+|[^\w\s]", text)]


@dataclass
class Chunk:
    text: str
    start: int  # character offsets into LoadedDocument.text, [start, end)
    end: int
    page: int | None
    n_tokens: int
    index: int  # order within the document


class _Counter:
    def __init__(self, starts: list[int]):
        self.starts = starts

    def count(self, a: int, b: int) -> int:
        return bisect.bisect_left(self.starts, b) - bisect.bisect_left(self.starts, a)

    def cut_points(self, a: int, b: int, size: int) -> list[int]:
        """Character positions splitting [a, b) into runs of at most `size` tokens (for unbreakable text)."""
        i, j = bisect.bisect_left(self.starts, a), bisect.bisect_left(self.starts, b)
        return [self.starts[k] for k in range(i + size, j, size)]


def _pieces(text: str, a: int, b: int, size: int, counter: _Counter, level: int) -> list[tuple[int, int]]:
    """Split [a, b) into spans of at most `size` tokens, using the coarsest separator that works."""
    if counter.count(a, b) <= size:
        return [(a, b)]
    while level < len(_SEPARATORS):
        cuts = [m.end() for m in _SEPARATORS[level].finditer(text, a, b) if a < m.end() < b]
        level += 1
        if cuts:
            out: list[tuple[int, int]] = []
            for s, e in zip([a, *cuts], [*cuts, b]):
                out.extend(_pieces(text, s, e, size, counter, level))
            return out
    cuts = counter.cut_points(a, b, size)
    return list(zip([a, *cuts], [*cuts, b]))


def _strip(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def chunk_span(
    text: str, a: int, b: int, starts: list[int], size: int = 254, overlap: int = 32
) -> list[tuple[int, int, int]]:
    """Chunks of text[a:b] as (start, end, n_tokens); `starts` are token start offsets in `text`."""
    if size < 1 or overlap < 0 or overlap >= size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size, got size={size}, overlap={overlap}")
    counter = _Counter(starts)
    pieces = [p for p in _pieces(text, a, b, size, counter, 0) if counter.count(*p) > 0]
    chunks: list[tuple[int, int, int]] = []
    cur: list[tuple[int, int]] = []  # pieces in the chunk being built
    for piece in pieces:
        if cur and counter.count(cur[0][0], piece[1]) > size:
            chunks.append((cur[0][0], cur[-1][1], 0))
            # carry trailing pieces worth <= overlap tokens into the next chunk
            keep: list[tuple[int, int]] = []
            for p in reversed(cur):
                if counter.count(p[0], cur[-1][1]) > overlap:
                    break
                keep.insert(0, p)
            cur = keep
            while cur and counter.count(cur[0][0], piece[1]) > size:
                cur.pop(0)
        cur.append(piece)
    if cur:
        chunks.append((cur[0][0], cur[-1][1], 0))
    out = []
    for s, e, _ in chunks:
        s, e = _strip(text, s, e)
        if e > s:
            out.append((s, e, counter.count(s, e)))
    return out


def chunk_document(
    doc: LoadedDocument, token_starts: TokenStarts | None = None, size: int = 254, overlap: int = 32
) -> list[Chunk]:
    """Chunk every page of `doc`; one tokenizer pass per page."""
    token_starts = token_starts or regex_token_starts
    chunks: list[Chunk] = []
    for span in doc.pages:
        page_text = doc.text[span.start : span.end]
        starts = token_starts(page_text)
        for s, e, n in chunk_span(page_text, 0, len(page_text), starts, size, overlap):
            chunks.append(
                Chunk(page_text[s:e], span.start + s, span.start + e, span.page, n, len(chunks))
            )
    return chunks


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans (start, end) of `text`, whitespace-trimmed; used by the extractive answerer."""
    out = []
    prev = 0
    for m in [*_SENTENCE_END.finditer(text), None]:
        if (m and m.group(1) == "" and not _BLANK_LINE.search(m.group(0))
                and _ABBREVIATION.search(text, max(0, m.start() - 8), m.start())):
            continue  # "Dr. Ines": the sentence goes on (a blank line still ends it)
        end = (m.end(1) if m.group(1) is not None else m.start()) if m else len(text)
        s, e = _strip(text, prev, end)
        if e > s:
            out.append((s, e))
        if m:
            prev = m.end()
    return out
