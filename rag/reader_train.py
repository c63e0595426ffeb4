"""Train the learned reader (rag.reader) on written and rule-made questions (rag.reader_data): `python -m rag
train-reader`.

Steps: prose passages (the written-questions file's, rag/data/reader_questions.json; or, with `written=None`, the
installed packages', eval documents' text excluded) -> its written questions plus rule-written ones -> for each,
the top-k passages by the app's own embedding cosine (the question's source passage kept in, or, for unanswerable
ones, its evidence taken away) -> candidate sentences and their features -> a softmax over [no answer] + candidates,
trained with Adam. Deterministic for a given install and seed; a few minutes on two CPU cores.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .grounded import Candidate, candidates
from .reader import FEATURES, POOL_FEATURES, READER_DIR, ReaderWeights, features, save_reader
from .reader_data import (
    EVAL_DOCS,
    WRITTEN_QA,
    Passage,
    Question,
    build_corpus,
    corpus_files,
    eval_shingles,
    load_written,
    make_questions,
    shingles,
)

Progress = Callable[[str, int, int], None]


@dataclass
class TrainReaderArgs:
    out: str = str(READER_DIR)
    max_passages: int = 1500
    questions: int = 4000
    unanswerable_share: float = 0.3
    k: int = 5
    max_candidates: int = 48
    epochs: int = 30
    lr: float = 0.01
    hidden: int = 16
    rank: int = 8
    weight_decay: float = 1e-4
    prior: float = 0.0  # > 0: start from rag.grounded's hand weights and pull the linear part back to them
    seed: int = 0
    corpus: str | None = None  # folder of prose files (default: the installed packages' site-packages)
    exclude: str | None = str(EVAL_DOCS)  # documents whose text must not be trained on
    written: str | None = str(WRITTEN_QA)  # written questions and their passages (None: the install's prose only)
    threads: int = 2
    embed_model: str | None = None


@dataclass
class Example:
    cand_rows: list[int]  # rows of the sentence-vector table
    X: np.ndarray  # (C, F)
    G: np.ndarray  # (P,)
    q_row: int
    positives: list[int]  # candidate positions that hold the answer; [] = unanswerable


def _pool_candidates(passages: list[tuple[int, str]]) -> list[Candidate]:
    return [c for n, text in passages for c in candidates(n, text) if len(c.text) >= 12]


def build_examples(args: TrainReaderArgs, embedder, progress: Progress | None = None,
                   stop_event: threading.Event | None = None) -> tuple[list[Example], np.ndarray, dict]:
    """(examples, sentence/question vector table (N, d), stats)."""
    passages, names, questions, n_files = _questions(args)
    pcands = [_pool_candidates([(1, p.text)]) for p in passages]
    texts = list(dict.fromkeys([p.text for p in passages] + [c.text for cs in pcands for c in cs]))
    row = {t: i for i, t in enumerate(texts)}
    prog = (lambda done, total: progress("embed", done, total)) if progress else None
    vecs = embedder.encode(texts, progress=prog, stop_event=stop_event)  # (N, d)
    qvecs = embedder.encode([q.q for q in questions], stop_event=stop_event)  # (Q, d)
    pvecs = vecs[[row[p.text] for p in passages]]  # (P, d)
    docs = np.array([p.doc for p in passages])
    rng = random.Random(args.seed)
    table = np.concatenate([vecs, qvecs]).astype(np.float32)
    examples: list[Example] = []
    for qi, q in enumerate(questions):
        if stop_event is not None and stop_event.is_set():
            from .embed import Cancelled

            raise Cancelled("stopped by request")
        qv = qvecs[qi]
        sims = pvecs @ qv
        near_miss = not q.answerable and (q.topical or rng.random() < 0.5)
        if not q.answerable and not near_miss:
            sims = np.where(docs == q.doc, -np.inf, sims)  # off-topic: the question's document is not there
        top = [int(j) for j in np.argsort(-sims, kind="stable")[: args.k]]
        if q.answerable and q.target not in top:
            continue  # retrieval missed it: nothing for the reader to learn (forcing it in teaches a rank bias)
        numbered = [(n + 1, passages[j].text) for n, j in enumerate(top)]
        cands = [c for c in _pool_candidates(numbered)]
        if not q.answerable and q.span:
            cands = [c for c in cands if q.span not in c.text]
        cands = cands[: args.max_candidates]
        if len(cands) < 2:
            continue
        positives = [i for i, c in enumerate(cands) if q.span in c.text] if q.answerable else []
        if q.answerable and not positives:
            continue
        cv = np.stack([vecs[row[c.text]] for c in cands])
        X, G = features(q.q, cands, cv, qv, {n: float(pvecs[j] @ qv) for n, j in zip(range(1, len(top) + 1), top)})
        examples.append(Example([row[c.text] for c in cands], X, G, len(vecs) + qi, positives))
        if progress and (qi + 1) % 200 == 0:
            progress("features", qi + 1, len(questions))
    stats = {"files": n_files, "documents": len(names), "passages": len(passages), "questions": len(questions),
             "examples": len(examples), "answerable": sum(bool(e.positives) for e in examples)}
    return examples, table, stats


def _questions(args: TrainReaderArgs) -> tuple[list[Passage], list[str], list[Question], int]:
    """(passages, document names, questions, prose files read): the written questions and their passages plus
    `args.questions` rule-written ones about the same passages, or without `args.written` rule-written questions
    about the install's prose."""
    exclude = eval_shingles(Path(args.exclude)) if args.exclude else set()
    if args.written:
        if args.corpus:
            raise ValueError("a corpus is read only without written questions (--written none)")
        passages, names, written = load_written(Path(args.written))
        if any(shingles(p.text) & exclude for p in passages):
            raise ValueError(f"{Path(args.written).name} holds text of the excluded (eval) documents")
        return passages, names, written + make_questions(passages, args.questions, args.unanswerable_share,
                                                         args.seed), 0
    files = corpus_files(Path(args.corpus) if args.corpus else None)
    passages, names = build_corpus(files, exclude, args.max_passages, args.seed)
    if len(names) < 2 or len(passages) < args.k + 1:
        raise ValueError(f"too little prose to train on: {len(passages)} passages from {len(names)} documents")
    return passages, names, make_questions(passages, args.questions, args.unanswerable_share, args.seed), len(files)


def train(examples: list[Example], table: np.ndarray, args: TrainReaderArgs, progress: Progress | None = None,
          stop_event: threading.Event | None = None) -> tuple[ReaderWeights, dict]:
    """Fit the reader; 10% of the examples are held out to report its accuracy and calibration."""
    import torch

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    n_val = max(len(order) // 10, 1)
    val, tr = [examples[i] for i in order[:n_val]], [examples[i] for i in order[n_val:]]
    allX = np.concatenate([e.X for e in tr])
    mean, std = allX.mean(0), allX.std(0) + 1e-3
    allG = np.stack([e.G for e in tr])
    g_mean, g_std = allG.mean(0), allG.std(0) + 1e-3

    def pack(exs: list[Example]):
        C = max(len(e.cand_rows) for e in exs)
        X = np.zeros((len(exs), C, len(FEATURES)), np.float32)
        rows = np.zeros((len(exs), C), np.int64)
        mask = np.zeros((len(exs), C), bool)
        pos = np.zeros((len(exs), C + 1), bool)  # column 0: no answer
        for i, e in enumerate(exs):
            c = len(e.cand_rows)
            X[i, :c] = (e.X - mean) / std
            rows[i, :c] = e.cand_rows
            mask[i, :c] = True
            if e.positives:
                pos[i, [p + 1 for p in e.positives]] = True
            else:
                pos[i, 0] = True
        G = np.stack([(e.G - g_mean) / g_std for e in exs]).astype(np.float32)
        q = np.array([e.q_row for e in exs])
        return [torch.from_numpy(a) for a in (X, rows, mask, pos, G, q)]

    F, P, d = len(FEATURES), len(POOL_FEATURES), table.shape[1]
    emb = torch.from_numpy(table)
    lin = torch.nn.Linear(F, 1)
    hid = torch.nn.Linear(F, args.hidden)
    out = torch.nn.Linear(args.hidden, 1, bias=False)
    U = torch.nn.Parameter(torch.zeros(d, args.rank))
    V = torch.nn.Parameter(torch.randn(d, args.rank) * 0.05)
    null = torch.nn.Linear(P, 1)
    prior_w = torch.zeros(F)
    if args.prior > 0:  # the hand-weighted score (rag.grounded) as the starting point, in standardized units
        from .grounded import P_NOTHING_NEW, W_COS, W_LEX, W_PASSAGE, W_TYPE

        hand = {"cos": W_COS, "lex": W_LEX, "typed": W_TYPE, "passage_cos": W_PASSAGE, "nothing_new": -P_NOTHING_NEW}
        prior_w = torch.tensor([hand.get(f, 0.0) * float(std[i]) for i, f in enumerate(FEATURES)])
        with torch.no_grad():
            lin.weight.copy_(prior_w[None])
            out.weight.zero_()
    params = [*lin.parameters(), *hid.parameters(), *out.parameters(), U, V, *null.parameters()]
    opt = torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)

    def logits(X, rows, mask, G, q):
        s = lin(X).squeeze(-1) + out(torch.tanh(hid(X))).squeeze(-1)  # (B, C)
        s = s + torch.einsum("bcr,br->bc", emb[rows] @ V, emb[q] @ U)
        s = s.masked_fill(~mask, -1e9)
        return torch.cat([null(G), s], dim=1)  # (B, 1 + C)

    def loss_fn(lg, pos):
        return (torch.logsumexp(lg, 1) - torch.logsumexp(lg.masked_fill(~pos, -1e9), 1)).mean()

    trb, vab = pack(tr), pack(val)
    batch = 256
    for ep in range(args.epochs):
        perm = torch.randperm(len(tr))
        for i in range(0, len(tr), batch):
            if stop_event is not None and stop_event.is_set():
                from .embed import Cancelled

                raise Cancelled("stopped by request")
            idx = perm[i : i + batch]
            X, rows, mask, pos, G, q = (t[idx] for t in trb)
            loss = loss_fn(logits(X, rows, mask, G, q), pos)
            if args.prior > 0:
                loss = loss + args.prior * ((lin.weight[0] - prior_w) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if progress:
            progress("train", ep + 1, args.epochs)
    with torch.no_grad():
        X, rows, mask, pos, G, q = vab
        lg = logits(X, rows, mask, G, q)
        p = torch.softmax(lg, 1)
        answerable = ~pos[:, 0]
        p_ans = 1 - p[:, 0]
        best = lg[:, 1:].argmax(1) + 1
        top1 = pos[torch.arange(len(best)), best]
        metrics = {"val_examples": len(val), "val_loss": round(float(loss_fn(lg, pos)), 4),
                   "val_top1": round(float(top1[answerable].float().mean()), 4),
                   "val_abstain_unanswerable": round(float((p_ans[~answerable] < 0.5).float().mean()), 4),
                   "val_answer_answerable": round(float((p_ans[answerable] >= 0.5).float().mean()), 4)}

    def np_(t):
        return t.detach().numpy().astype(np.float32)

    config = {"version": 1, "features": FEATURES, "pool_features": POOL_FEATURES, "train": _portable(asdict(args)),
              "metrics": metrics}
    w = ReaderWeights(mean.astype(np.float32), std.astype(np.float32), np_(lin.weight)[0], float(lin.bias.detach()),
                      np_(hid.weight), np_(hid.bias), np_(out.weight)[0], np_(U), np_(V), g_mean.astype(np.float32),
                      g_std.astype(np.float32), np_(null.weight)[0], float(null.bias.detach()), config)
    return w, metrics


def _portable(d: dict) -> dict:
    """Training arguments with paths inside the project written relative to it (no machine paths in the JSON)."""
    root = Path(__file__).resolve().parents[1]
    out = {}
    for k, v in d.items():
        if isinstance(v, str) and Path(v).is_absolute():
            p = Path(v).resolve()
            v = str(p.relative_to(root)) if p.is_relative_to(root) else Path(v).name
        out[k] = v
    return out


def main(args: TrainReaderArgs, progress: Progress | None = None,
         stop_event: threading.Event | None = None) -> dict:
    """Build data, train, save to `args.out`; returns the config written (with stats, metrics, seconds)."""
    import torch

    from .embed import DEFAULT_EMBED_MODEL, get_embedder

    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    embedder = get_embedder(args.embed_model or DEFAULT_EMBED_MODEL)
    examples, table, stats = build_examples(args, embedder, progress, stop_event)
    if len(examples) < 10:
        raise ValueError(f"only {len(examples)} training examples could be built; give more passages/questions")
    w, _ = train(examples, table, args, progress, stop_event)
    w.config.update(data=stats, embed_model=embedder.name, seconds=round(time.perf_counter() - t0, 1))
    save_reader(w, Path(args.out))
    return w.config


def tqdm_progress() -> Progress:
    """A progress callback that draws one tqdm bar per stage on the terminal."""
    from tqdm.auto import tqdm

    bars: dict[str, tqdm] = {}

    def cb(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=total, desc=stage)
        bars[stage].n = done
        bars[stage].refresh()
        if done >= total:
            bars[stage].close()

    return cb

