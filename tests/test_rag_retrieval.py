"""Retrieval on real text (Macbeth scenes): dense, BM25, hybrid (RRF), MMR; every result carries its score."""

from __future__ import annotations

import numpy as np
import pytest

from rag.retrieve import RRF_C, hybrid_fuse, mmr_order, rrf
from tests.fixtures.rag.docs import macbeth_collection, scene_of


@pytest.fixture(scope="module")
def col(tmp_path_factory):
    return macbeth_collection(tmp_path_factory)


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_quoted_line_is_found_by_every_mode(col, mode):
    res = col.search("Is this a dagger which I see before me", k=3, mode=mode)
    assert scene_of(res[0]) == 7 and "dagger" in res[0].text
    assert [r.rank for r in res] == [1, 2, 3] and all(r.mode == mode for r in res)
    scores = [r.score for r in res]
    assert scores == sorted(scores, reverse=True)


PARAPHRASES = [  # share few words with the text; the answer lies in one scene
    ("a lady walks in her sleep and keeps washing her hands", 20),
    ("soldiers cut tree branches to hide how many they are", 23),
    ("assassins ambush a father and his son, the boy escapes", 13),
    ("the three sisters gather on the moor in a storm", 0),
    ("a doctor and a gentlewoman watch a patient at night", 20),
    ("an old man says unnatural things happened", 10),
]


@pytest.mark.parametrize("query, scene", PARAPHRASES)
def test_paraphrases_dense_and_hybrid(col, query, scene):
    for mode in ("dense", "hybrid"):
        assert scene in [scene_of(r) for r in col.search(query, k=2, mode=mode)], mode


def test_bm25_rare_word_and_no_match(col):
    res = col.search("Graymalkin", k=3, mode="bm25")
    assert scene_of(res[0]) == 0 and len(res) == 1  # only the chunk containing the word scores > 0
    assert res[0].bm25_score == res[0].score > 0 and res[0].dense_score is None
    assert col.search("xyzzy plugh", k=3, mode="bm25") == []
    assert len(col.search("xyzzy plugh", k=3, mode="dense")) == 3


def test_hybrid_is_rrf_of_dense_and_bm25(col):
    q = "the queen is dead and the wood is moving"
    k = 5
    dense = [(r.chunk_id, r.score) for r in col.search(q, k=10, mode="dense")]
    lexical = [(r.chunk_id, r.score) for r in col.search(q, k=10, mode="bm25")]
    expect: dict[int, float] = {}
    for ranking in (dense[:k], lexical[:k]):  # only each list's top k is fused
        for rank, (cid, _) in enumerate(ranking, 1):
            expect[cid] = expect.get(cid, 0) + 1 / (RRF_C + rank)
    hybrid = col.search(q, k=k, mode="hybrid")
    assert len(hybrid) == k
    for r in hybrid:
        assert r.score == pytest.approx(expect[r.chunk_id])
        assert r.dense_score == dict(dense).get(r.chunk_id) and r.bm25_score == dict(lexical).get(r.chunk_id)
    best = sorted(expect.values(), reverse=True)[:k]
    assert [r.score for r in hybrid] == pytest.approx(best)


def test_hybrid_ties_go_to_the_standout_score():
    # two lists that disagree completely: ranks tie pairwise, z-scores decide
    dense = [(1, 0.50), (2, 0.49), (3, 0.48), (4, 0.47)]  # flat: the dense winner hardly stands out
    lexical = [(10, 9.0), (11, 3.0), (12, 2.9), (13, 2.8)]  # peaked: a clear lexical winner
    fused = hybrid_fuse(dense, lexical, depth=2)
    assert [c for c, _ in fused] == [10, 1, 2, 11]
    assert fused[0][1] == fused[1][1] == pytest.approx(1 / 61)
    assert {c for c, _ in fused} == {1, 2, 10, 11}  # only each list's top `depth` is fused


def test_rrf_rewards_agreement():
    fused = rrf([(1, 0.9), (2, 0.8), (3, 0.7)], [(3, 5.0), (4, 4.0)])
    assert fused[0][0] == 3 and fused[0][1] == pytest.approx(1 / 63 + 1 / 61)
    assert [c for c, _ in fused] == [3, 1, 2, 4]


def test_mmr_skips_near_duplicates():
    q = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    a = np.array([0.9, 0.436, 0.0], dtype=np.float32)
    vecs = np.stack([a, a * 0.999 + 0.001, np.array([0.8, 0.0, 0.6], dtype=np.float32)])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    assert mmr_order(q, vecs, 2, lam=0.5) == [0, 2]  # the near-copy of the first pick is passed over
    assert mmr_order(q, vecs, 2, lam=1.0) == [0, 1]  # pure relevance


def test_mmr_search_is_more_diverse(col):
    q = "Macbeth"
    plain = col.search(q, k=4, mode="hybrid")
    diverse = col.search(q, k=4, mode="hybrid", mmr=True, mmr_lambda=0.3)
    assert len(diverse) == 4 and all(r.score > 0 for r in diverse)

    def redundancy(results):
        v = col.embedder.encode([r.text for r in results])
        sims = v @ v.T
        return float(sims[np.triu_indices(len(v), 1)].mean())

    assert redundancy(diverse) <= redundancy(plain) + 1e-6


def test_bad_queries(col):
    with pytest.raises(ValueError, match="unknown search mode"):
        col.search("x", mode="fuzzy")
    with pytest.raises(ValueError, match="empty query"):
        col.search("   ")
    with pytest.raises(ValueError, match="k must be"):
        col.search("x", k=0)
