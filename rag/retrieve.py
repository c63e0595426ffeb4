"""Dense (FAISS), BM25 and hybrid (reciprocal rank fusion) search over one snapshot, with optional MMR."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .store import Snapshot, is_ann

MODES = ("hybrid", "dense", "bm25")
RRF_C = 60  # the usual constant from Cormack et al. (2009)


@dataclass
class SearchResult:
    chunk_id: int
    doc_id: str
    source: str
    page: int | None
    char_start: int
    char_end: int
    text: str
    score: float  # dense: cosine; bm25: BM25; hybrid: RRF sum
    rank: int  # 1-based
    mode: str
    dense_score: float | None = None
    bm25_score: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def dense_search(snap: Snapshot, qvec: np.ndarray, k: int) -> list[tuple[int, float]]:
    import faiss

    index = snap.index
    if index.ntotal == 0 or k <= 0:
        return []
    if is_ann(index):
        ivf = faiss.downcast_index(index)
        ivf.nprobe = min(ivf.nlist, max(8, ivf.nlist // 16))
    # one query: OpenMP threads only add overhead (and stall badly on a busy CPU); this setting is per thread
    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        scores, ids = index.search(np.ascontiguousarray(qvec.reshape(1, -1), dtype=np.float32), min(k, index.ntotal))
    finally:
        faiss.omp_set_num_threads(prev)
    return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]


def bm25_search(snap: Snapshot, query: str, k: int) -> list[tuple[int, float]]:
    return snap.bm25.search(query, k) if snap.bm25 is not None and k > 0 else []


def rrf(*rankings: list[tuple[int, float]], c: int = RRF_C) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: score(d) = sum over rankings of 1 / (c + rank of d)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (cid, _) in enumerate(ranking, start=1):
            fused[cid] = fused.get(cid, 0.0) + 1.0 / (c + rank)
    return sorted(fused.items(), key=lambda t: (-t[1], t[0]))


def _zscores(ranking: list[tuple[int, float]]) -> dict[int, float]:
    if len(ranking) < 2:
        return {}
    s = np.array([x for _, x in ranking])
    return {cid: float((x - s.mean()) / (s.std() + 1e-9)) for cid, x in ranking}


def hybrid_fuse(dense: list[tuple[int, float]], lexical: list[tuple[int, float]], depth: int,
                c: int = RRF_C) -> list[tuple[int, float]]:
    """RRF over each list's top `depth`. Fusing deeper than the results asked for lets chunks that are mediocre in
    both lists outrank one retriever's clear winner (measured in bench/rag.py). Exact ties (a top-1 from each
    list) go to the chunk whose scores stand out more from their own list (sum of z-scores)."""
    z: dict[int, float] = {}
    for ranking in (dense, lexical):
        for cid, v in _zscores(ranking).items():
            z[cid] = z.get(cid, 0.0) + v
    fused = rrf(dense[:depth], lexical[:depth], c=c)
    return sorted(fused, key=lambda t: (-round(t[1], 12), -z.get(t[0], 0.0), t[0]))


def mmr_order(qvec: np.ndarray, vecs: np.ndarray, k: int, lam: float = 0.5) -> list[int]:
    """Maximal marginal relevance over candidate rows: relevance to the query minus redundancy with picks."""
    if len(vecs) == 0:
        return []
    rel = vecs @ qvec  # (C,)
    sims = vecs @ vecs.T  # (C, C)
    chosen: list[int] = []
    best_red = np.full(len(vecs), -np.inf)
    for _ in range(min(k, len(vecs))):
        red = np.where(np.isfinite(best_red), best_red, 0.0)
        val = lam * rel - (1 - lam) * red
        val[chosen] = -np.inf
        i = int(np.argmax(val))
        chosen.append(i)
        best_red = np.maximum(best_red, sims[i])
    return chosen


def fetch_chunks(snap: Snapshot, ids: list[int], with_vectors: bool = False) -> dict[int, tuple]:
    if not ids:
        return {}
    cols = "c.id, c.doc_id, d.source, c.page, c.char_start, c.char_end, c.text" + (", c.embedding" if with_vectors else "")
    marks = ",".join("?" * len(ids))
    rows = snap.query(f"SELECT {cols} FROM chunks c JOIN documents d ON c.doc_id = d.doc_id WHERE c.id IN ({marks})",
                      tuple(ids))
    return {r[0]: r for r in rows}


def search(snap: Snapshot, embedder, query: str, k: int = 5, mode: str = "hybrid", mmr: bool = False,
           mmr_lambda: float = 0.5, query_vector: np.ndarray | None = None) -> list[SearchResult]:
    """Top-k chunks for `query`: dense, BM25, or hybrid (RRF of both lists' top k; see `hybrid_fuse`).
    With MMR, the k results are picked from a 4k-deep candidate list for diversity."""
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}")
    if not query.strip():
        raise ValueError("empty query")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pool = max(4 * k, 20) if mmr else max(k, 10)
    need_dense = mode in ("dense", "hybrid") or mmr
    qvec = query_vector if query_vector is not None or not need_dense else embedder.encode_query(query)
    dense = dense_search(snap, qvec, pool) if mode in ("dense", "hybrid") else []
    lexical = bm25_search(snap, query, pool) if mode in ("bm25", "hybrid") else []
    if mode == "hybrid":
        ranked = hybrid_fuse(dense, lexical, pool if mmr else k)
    else:
        ranked = dense if mode == "dense" else lexical
    dense_s, bm25_s = dict(dense), dict(lexical)
    if mmr:
        cand = ranked[:pool]
        rows = fetch_chunks(snap, [c for c, _ in cand], with_vectors=True)
        cand = [c for c in cand if c[0] in rows]
        vecs = np.stack([np.frombuffer(rows[c][7], dtype=np.float32) for c, _ in cand]) if cand else np.zeros((0, 1))
        ranked = [cand[i] for i in mmr_order(qvec, vecs, k, mmr_lambda)]
    else:
        ranked = ranked[:k]
        rows = fetch_chunks(snap, [c for c, _ in ranked])
    out = []
    for cid, score in ranked:
        r = rows.get(cid)
        if r is None:  # vector without row: cannot happen with atomic commits, skip defensively
            continue
        out.append(SearchResult(cid, r[1], r[2], r[3], r[4], r[5], r[6], float(score), len(out) + 1, mode,
                                dense_s.get(cid), bm25_s.get(cid)))
    return out


def diversify(results: list[SearchResult], pool: list[SearchResult], max_per_doc: int = 2,
              extra: int = 2) -> list[SearchResult]:
    """`results` plus, when one document holds more than `max_per_doc` of them, the best chunks (from the deeper
    `pool`, in its order) of up to `extra` documents not among the results yet; ranks renumbered.

    Why: a long document matches many questions loosely, so its chunks can fill every slot and push out a short
    document that answers the question (a 14-page manual beside a 5-line note). Adding the other documents' best
    chunks after the top k, rather than swapping them in, keeps plain retrieval's top k intact: capping each
    document at 2 of the top 5 cost 4 points of recall@5 on the eval set (the manual's third chunk often answers).
    """
    if max_per_doc < 1:
        raise ValueError(f"max_per_doc must be >= 1, got {max_per_doc}")
    counts: dict[str, int] = {}
    for r in results:
        counts[r.doc_id] = counts.get(r.doc_id, 0) + 1
    surplus = sum(max(0, n - max_per_doc) for n in counts.values())
    out = list(results)
    seen_chunks = {r.chunk_id for r in results}
    for r in pool:
        if len(out) - len(results) >= min(extra, surplus):
            break
        if r.doc_id not in counts and r.chunk_id not in seen_chunks:
            counts[r.doc_id] = 1
            out.append(r)
    for rank, r in enumerate(out, start=1):
        r.rank = rank
    return out
