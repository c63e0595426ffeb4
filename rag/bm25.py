"""BM25 over chunk texts (bm25s), with a small English analyzer and safe (npy/json) persistence."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


# Lucene's English list plus common function words and question words (what/who/does...): queries are questions
STOPWORDS = frozenset(
    """a an and are as at be but by for if in into is it no not of on or such that the their then there these they
    this to was will with i me my we our you your he him his she her its them what which who whom whose when where
    why how do does did doing done have has had having am been being would should could can may might must shall
    about above after again against all any because before below between both down during each few from further
    here more most other out over own same so some than too under until up very off once only nor just also""".split()
)


def _stem(w: str) -> str:
    """Plural folding only: cheap, and safe enough for English (kings->king, stories->story, boxes->box)."""
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("ches", "shes", "sses", "xes", "zes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is", "oes")):
        return w[:-1]
    return w


def analyze(text: str) -> list[str]:
    """Lowercase word tokens, stopwords and 1-letter tokens dropped, plurals folded."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in STOPWORDS]


class BM25Index:
    """bm25s retriever plus the chunk ids its rows stand for."""

    def __init__(self, retriever, ids: np.ndarray):
        self.retriever = retriever
        self.ids = ids  # (N,) int64 chunk ids, row order of the index

    @classmethod
    def build(cls, ids: np.ndarray, token_lists: list[list[str]]) -> BM25Index | None:
        if len(ids) == 0:
            return None
        import bm25s

        r = bm25s.BM25()
        r.index(token_lists, show_progress=False)
        return cls(r, np.asarray(ids, dtype=np.int64))

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """[(chunk_id, score)] best first; chunks sharing no term with the query are left out."""
        tokens = analyze(query)
        if not tokens:
            return []
        scores = self.retriever.get_scores(tokens)  # (N,)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(self.ids[i]), float(scores[i])) for i in top if scores[i] > 0]

    def has_term(self, term: str) -> bool:
        """Whether any indexed chunk holds `term` (an `analyze`d token)."""
        return term in self.retriever.vocab_dict

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(folder), show_progress=False)
        np.save(folder / "ids.npy", self.ids, allow_pickle=False)

    @classmethod
    def load(cls, folder: Path) -> BM25Index | None:
        if not (folder / "ids.npy").exists():
            return None
        import bm25s

        r = bm25s.BM25.load(str(folder), show_progress=False)
        return cls(r, np.load(folder / "ids.npy", allow_pickle=False))
