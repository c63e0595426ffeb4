"""Learned reader: which sentence of the retrieved passages answers the question, and how likely any does.

Why learned: the hand-weighted grounded score (rag.grounded) plateaus, and its abstain threshold is a raw score
picked on the eval set's dev split, which does not carry over to new questions. The reader is a small model over
the same cheap signals (the collection's own MiniLM vectors, term coverage, answer type) plus a low-rank bilinear
match of question and sentence vectors, trained on synthetic questions built from installed packages' prose
(rag.reader_data), never on the eval questions. It scores every candidate sentence AND a "no answer" option in
one softmax (SQuAD 2.0 style), so abstention is a probability: the answer is given when P(answerable) >= 0.5.

Files: `rag/data/reader.safetensors` (weights, feature mean/std) + `rag/data/reader.json` (config, training
stats). Rebuild with `python -m rag train-reader` (rag.reader_train).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bm25 import analyze
from .grounded import (
    _HAS_NUMBER,
    _NAME,
    _WHO_Q,
    SOFT_TYPES,
    STRICT_TYPES,
    Candidate,
    Pick,
    _strip_question_numbers,
    asks_for_number,
    embedded_candidates,
    excerpt,
    lacks_asked_kind,
    lexical_coverage,
    soft_type,
    strict_type,
)

READER_DIR = Path(__file__).resolve().parent / "data"
FEATURES = ["cos", "lex", "typed", "passage_cos", "nothing_new", "inv_rank", "log_words", "cos_gap", "lex_gap",
            "strict_missing", "cand_overlap", "wants_type"]
POOL_FEATURES = ["max_cos", "max_lex", "max_passage_cos", "top3_cos", "absent_idf", "any_typed", "n_qterms",
                 "strict_missing_all"]
EXCERPT_MARGIN = math.log(2)  # near-best sentences: at least half the best one's probability


def typed_flags(question: str, texts: list[str]) -> tuple[np.ndarray, float]:
    """(1 where a candidate has the kind of answer the question asks for, whether the question asks for a kind)."""
    if kind := strict_type(question) or soft_type(question):
        wants = (STRICT_TYPES.get(kind) or SOFT_TYPES[kind])[1]
        return np.array([bool(wants.search(t)) for t in texts], dtype=float), 1.0
    if asks_for_number(question):
        return np.array([bool(_HAS_NUMBER.search(_strip_question_numbers(t, question))) for t in texts],
                        dtype=float), 1.0
    if _WHO_Q.search(question):
        return np.array([any(m not in question for m in _NAME.findall(t)) for t in texts], dtype=float), 1.0
    return np.zeros(len(texts)), 0.0


def features(question: str, cands: list[Candidate], cand_vecs: np.ndarray, qvec: np.ndarray,
             passage_cos: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """(X (C, len(FEATURES)), G (len(POOL_FEATURES),)): per-candidate and per-pool signals."""
    texts = [c.text for c in cands]
    cos = cand_vecs @ qvec  # (C,)
    lex = lexical_coverage(question, texts)
    qterms = set(analyze(question))
    csets = [set(analyze(t)) for t in texts]
    nothing_new = np.array([not (s - qterms) for s in csets], dtype=float)
    typed, wants = typed_flags(question, texts)
    kind = strict_type(question)
    strict_missing = (np.array([not STRICT_TYPES[kind][1].search(t) for t in texts], dtype=float) if kind
                      else np.zeros(len(texts)))
    pas = np.array([passage_cos.get(c.n, 0.0) for c in cands])
    inv_rank = np.array([1.0 / c.n for c in cands])
    words = np.array([math.log1p(len(t.split())) / 4 for t in texts])
    overlap = np.array([len(s & qterms) / max(len(s), 1) for s in csets])
    X = np.stack([cos, lex, typed, pas, nothing_new, inv_rank, words, cos - cos.max(), lex - lex.max(),
                  strict_missing, overlap, np.full(len(texts), wants)], axis=1)
    allterms = set().union(*csets) if csets else set()
    absent = (sum(1 for t in qterms if t not in allterms) / len(qterms)) if qterms else 1.0
    G = np.array([cos.max(), lex.max(), pas.max(), np.sort(cos)[-3:].mean(), absent, typed.max(),
                  math.log1p(len(qterms)) / 3, float(strict_missing.min()) if kind else 0.0])
    return X.astype(np.float32), G.astype(np.float32)


@dataclass
class ReaderWeights:
    """Plain numpy weights (inference needs no torch graph): candidate score = lin + mlp + bilinear."""

    mean: np.ndarray  # (F,)
    std: np.ndarray  # (F,)
    lin_w: np.ndarray  # (F,)
    lin_b: float
    h_w: np.ndarray  # (H, F)
    h_b: np.ndarray  # (H,)
    o_w: np.ndarray  # (H,)
    U: np.ndarray  # (d, r)
    V: np.ndarray  # (d, r)
    g_mean: np.ndarray  # (P,)
    g_std: np.ndarray  # (P,)
    null_w: np.ndarray  # (P,)
    null_b: float
    config: dict

    def scores(self, X: np.ndarray, qvec: np.ndarray, cand_vecs: np.ndarray, G: np.ndarray) -> tuple[np.ndarray,
                                                                                                      float]:
        """(candidate logits (C,), no-answer logit)."""
        Z = (X - self.mean) / self.std  # (C, F)
        s = Z @ self.lin_w + self.lin_b + np.tanh(Z @ self.h_w.T + self.h_b) @ self.o_w
        s = s + (cand_vecs @ self.V) @ (self.U.T @ qvec)  # (C, r) @ (r,)
        null = float(((G - self.g_mean) / self.g_std) @ self.null_w + self.null_b)
        return s, null


TENSORS = ["mean", "std", "lin_w", "h_w", "h_b", "o_w", "U", "V", "g_mean", "g_std", "null_w"]


def save_reader(w: ReaderWeights, folder: Path) -> None:
    """Atomic writes of reader.safetensors and reader.json."""
    import os

    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(getattr(w, k), dtype=np.float32) for k in TENSORS}
    tensors["biases"] = np.array([w.lin_b, w.null_b], dtype=np.float32)
    tmp = folder / "reader.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.chmod(tmp, 0o644)  # a shipped file, readable like the rest of the checkout
    os.replace(tmp, folder / "reader.safetensors")
    tmpj = folder / "reader.json.tmp"
    tmpj.write_text(json.dumps(w.config, indent=1) + "\n", encoding="utf-8")
    os.replace(tmpj, folder / "reader.json")


_LOADED: dict[str, ReaderWeights] = {}


def load_reader(folder: Path | str | None = None) -> ReaderWeights:
    """The reader's weights (cached per folder); a clear error when the files are missing or do not match."""
    from safetensors.numpy import load_file

    folder = Path(folder or READER_DIR)
    key = str(folder.resolve())
    if key in _LOADED:
        return _LOADED[key]
    wfile, cfile = folder / "reader.safetensors", folder / "reader.json"
    if not wfile.is_file() or not cfile.is_file():
        raise FileNotFoundError(f"no trained reader in {folder} (reader.safetensors + reader.json); "
                                "build one with `python -m rag train-reader`")
    config = json.loads(cfile.read_text(encoding="utf-8"))
    if config.get("features") != FEATURES or config.get("pool_features") != POOL_FEATURES:
        raise ValueError(f"the reader in {folder} was trained on other features; rebuild it with "
                         "`python -m rag train-reader`")
    t = load_file(str(wfile))
    w = ReaderWeights(**{k: t[k] for k in TENSORS}, lin_b=float(t["biases"][0]), null_b=float(t["biases"][1]),
                      config=config)
    _LOADED[key] = w
    return w


def read(question: str, passages: list[tuple[int, str]], embedder, qvec: np.ndarray | None = None,
         passage_vecs: np.ndarray | None = None, reader: ReaderWeights | None = None,
         min_answerable: float = 0.5) -> Pick:
    """The reader's pick over numbered passages [(n, text)]; `Pick.score` is P(answerable), and the pick abstains
    when that is under `min_answerable` (or a price/colour question gets a quote with no price/colour)."""
    reader = reader or load_reader()
    trained_on = reader.config.get("embed_model")
    if trained_on and getattr(embedder, "name", trained_on) != trained_on:
        raise ValueError(f"the reader was trained on {trained_on} vectors, but this collection uses "
                         f"{embedder.name}; use the grounded answer mode, or retrain with --embed-model")
    pooled = embedded_candidates(question, passages, embedder, qvec, passage_vecs)
    if pooled is None:
        return Pick(None, 0.0, 0.0, 0.0, True)
    cands, vecs, qvec, passage_cos = pooled
    X, G = features(question, cands, vecs, qvec, passage_cos)
    s, null = reader.scores(X, qvec, vecs, G)
    s = s + np.array([1e-3 / c.n for c in cands])  # ties go to the retriever's better-ranked passage
    i = int(np.argmax(s))
    top = max(float(s.max()), null)
    p_answer = float(np.exp(s - top).sum() / (np.exp(s - top).sum() + math.exp(null - top)))
    quote = excerpt(cands, s, i, margin=EXCERPT_MARGIN)
    untyped = lacks_asked_kind(question, quote.text)
    return Pick(quote, p_answer, float(X[i, 0]), float(X[i, 1]), p_answer < min_answerable or untyped)


def reader_available(folder: Path | str | None = None) -> bool:
    folder = Path(folder or READER_DIR)
    return (folder / "reader.safetensors").is_file() and (folder / "reader.json").is_file()

