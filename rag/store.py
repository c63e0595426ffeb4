"""On-disk collection state: FAISS index + SQLite metadata + BM25, as immutable numbered generations.

Layout of a collection folder:
    collection.json        settings (embedding model, chunk size, ANN threshold)
    CURRENT                {"generation": N}  <- the single commit point, replaced with os.replace
    gen-00000N/            meta.sqlite, index.faiss, bm25/
A write builds generation N+1 in `gen-00000N+1.tmp/` (copy of the SQLite file, cloned index), renames the folder
and only then swaps CURRENT. A process killed at any point leaves CURRENT naming a complete generation.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_core.atomic import write_json

from .bm25 import BM25Index, analyze

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY, source TEXT NOT NULL, kind TEXT NOT NULL, content_hash TEXT NOT NULL UNIQUE,
    n_chars INTEGER NOT NULL, n_pages INTEGER NOT NULL, n_chunks INTEGER NOT NULL, added REAL NOT NULL,
    warnings TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, doc_id TEXT NOT NULL REFERENCES documents(doc_id),
    idx INTEGER NOT NULL, page INTEGER, char_start INTEGER NOT NULL, char_end INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL, text TEXT NOT NULL, terms TEXT NOT NULL, embedding BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
"""


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def new_flat_index(dim: int):
    import faiss

    return faiss.IndexIDMap(faiss.IndexFlatIP(dim))


def ivf_lists(n: int) -> int:
    """~4*sqrt(n) inverted lists, but at least 39 training points per list (faiss's k-means minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def new_ivf_index(dim: int, vecs: np.ndarray, ids: np.ndarray):
    """IVF-Flat (inner product) trained on the collection itself; supports add and remove like the flat index.

    Chosen over HNSW for large collections: it trains in seconds where HNSW needs minutes to build at 100k
    vectors on a laptop CPU, and it can delete vectors without a rebuild.
    """
    import faiss

    nlist = ivf_lists(len(vecs))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    sample = vecs
    if len(vecs) > 64 * nlist:  # k-means on a sample is as good and much faster
        sample = vecs[np.random.default_rng(0).choice(len(vecs), 64 * nlist, replace=False)]
    index.train(np.ascontiguousarray(sample))
    index.add_with_ids(np.ascontiguousarray(vecs), ids)
    return index


def is_ann(index) -> bool:
    """True for the approximate (IVF) index used past the collection's ann_threshold."""
    import faiss

    return isinstance(faiss.downcast_index(index), faiss.IndexIVF)


def needs_new_index(index, n: int, threshold: int) -> bool:
    """Flat <-> IVF across the threshold; IVF is retrained once it holds 4x what its lists were sized for."""
    import faiss

    if (n > threshold) != is_ann(index):
        return True
    return is_ann(index) and ivf_lists(n) > 2 * faiss.downcast_index(index).nlist


@dataclass
class Snapshot:
    """One committed generation, loaded. Readers hold a reference; writers replace it whole."""

    generation: int
    folder: Path | None
    db: sqlite3.Connection
    index: object  # faiss.IndexIDMap
    bm25: BM25Index | None
    lock: threading.Lock

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def content_hashes(self) -> dict[str, str]:
        """content hash -> doc_id of every document (duplicate detection before an ingest)."""
        return dict(self.query("SELECT content_hash, doc_id FROM documents"))

    def documents(self) -> list[tuple]:
        """(doc_id, source, kind, n_chunks, n_pages, n_chars, added) per document, oldest first."""
        return self.query("SELECT doc_id, source, kind, n_chunks, n_pages, n_chars, added FROM documents "
                          "ORDER BY added, source")

    def n_documents(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM documents")[0][0])


def current_generation(folder: Path) -> int:
    """The committed generation named by ``folder/CURRENT`` (0: nothing committed yet)."""
    try:
        return int(json.loads((folder / "CURRENT").read_text())["generation"])
    except FileNotFoundError:
        return 0


def generation_dir(folder: Path, gen: int) -> Path:
    return folder / f"gen-{gen:06d}"


def read_counts(folder: Path) -> tuple[int, int]:
    """(documents, chunks) of a collection folder's committed generation, read from its SQLite alone (no index
    is loaded: listing many collections stays cheap)."""
    for attempt in range(3):  # a writer may swap CURRENT and remove the generation we are about to read
        gen = current_generation(folder)
        if gen == 0:
            return 0, 0
        try:
            db = _connect(generation_dir(folder, gen) / "meta.sqlite", True)
            try:
                return (db.execute("SELECT COUNT(*) FROM documents").fetchone()[0],
                        db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])
            finally:
                db.close()
        except sqlite3.Error:
            if attempt == 2:
                raise
    return 0, 0


def _connect(path: Path | str, readonly: bool) -> sqlite3.Connection:
    if readonly:
        db = sqlite3.connect(f"file:{Path(path).as_posix()}?mode=ro", uri=True, check_same_thread=False)
    else:
        db = sqlite3.connect(str(path), check_same_thread=False)
    return db


class _FileLock:
    """Exclusive lock between processes (fcntl where available) and threads."""

    def __init__(self, path: Path):
        self.path = path
        self.tlock = threading.RLock()

    @contextmanager
    def hold(self):
        with self.tlock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    import fcntl

                    fcntl.flock(fd, fcntl.LOCK_EX)
                except ImportError:  # Windows: threads only
                    pass
                yield
            finally:
                os.close(fd)  # releases the flock


class Store:
    """Generations of one collection folder. `snapshot` is the current committed state."""

    def __init__(self, folder: Path, dim: int, ann_threshold: int):
        self.folder = folder
        self.dim = dim
        self.ann_threshold = ann_threshold
        self.lock = _FileLock(folder / ".lock")
        self._swap = threading.Lock()
        self.snapshot = self._load_current()

    # ---- reading ----
    def _current_generation(self) -> int:
        return current_generation(self.folder)

    def _gen_dir(self, gen: int) -> Path:
        return generation_dir(self.folder, gen)

    def _load(self, gen: int) -> Snapshot:
        import faiss

        if gen == 0:
            db = sqlite3.connect(":memory:", check_same_thread=False)
            db.executescript(SCHEMA)
            return Snapshot(0, None, db, new_flat_index(self.dim), None, threading.Lock())
        d = self._gen_dir(gen)
        if not (d / "meta.sqlite").exists() or not (d / "index.faiss").exists():
            raise RuntimeError(f"collection {self.folder.name!r} is damaged: generation {gen} is incomplete")
        index = faiss.read_index(str(d / "index.faiss"))
        return Snapshot(gen, d, _connect(d / "meta.sqlite", True), index, BM25Index.load(d / "bm25"), threading.Lock())

    def _load_current(self) -> Snapshot:
        for attempt in range(3):  # a writer in another process may swap CURRENT and remove the old generation
            gen = self._current_generation()
            try:
                return self._load(gen)
            except RuntimeError:
                if attempt == 2 or self._current_generation() == gen:
                    raise
        raise AssertionError("unreachable")

    def refresh(self) -> Snapshot:
        """Pick up a generation committed by another process (cheap: one small file read)."""
        if self._current_generation() != self.snapshot.generation:
            with self._swap:
                if self._current_generation() != self.snapshot.generation:
                    self.snapshot = self._load_current()
        return self.snapshot

    # ---- writing ----
    @contextmanager
    def transaction(self):
        """Yields a `Writer` on a private copy; commits atomically on clean exit, discards on exception."""
        import faiss

        with self.lock.hold():
            base = self.refresh()
            self.collect_garbage(keep=base.generation)
            gen = base.generation + 1
            tmp = generation_dir(self.folder, gen).with_name(f"gen-{gen:06d}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                db = _connect(tmp / "meta.sqlite", False)
                with base.lock:
                    base.db.backup(db)
                db.executescript(SCHEMA)
                writer = Writer(db, faiss.clone_index(base.index), self)
                yield writer
                if not writer.changed:
                    db.close()
                    shutil.rmtree(tmp, ignore_errors=True)
                    return
                writer.finish(tmp)
                final = self._gen_dir(gen)
                shutil.rmtree(final, ignore_errors=True)
                _fsync_tree(tmp)
                os.replace(tmp, final)
                write_json(self.folder / "CURRENT", {"generation": gen})  # commit point
                snap = Snapshot(gen, final, _connect(final / "meta.sqlite", True), writer.index, writer.bm25,
                                threading.Lock())
                with self._swap:
                    self.snapshot = snap
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self.collect_garbage(keep=gen)

    def collect_garbage(self, keep: int) -> None:
        """Remove generations other than `keep` and leftovers of interrupted writes (call with the lock held)."""
        for p in self.folder.glob("gen-*"):
            if p.name != f"gen-{keep:06d}":
                shutil.rmtree(p, ignore_errors=True)


class Writer:
    """Mutations inside one transaction."""

    def __init__(self, db: sqlite3.Connection, index, store: Store):
        self.db = db
        self.index = index
        self.store = store
        self.bm25: BM25Index | None = None
        self.changed = False

    def has_hash(self, content_hash: str) -> str | None:
        row = self.db.execute("SELECT doc_id FROM documents WHERE content_hash=?", (content_hash,)).fetchone()
        return row[0] if row else None

    def add_document(self, doc_id: str, source: str, kind: str, content_hash: str, n_chars: int, n_pages: int,
                     warnings: list[str], chunks: list[tuple], vectors: np.ndarray) -> list[int]:
        """chunks: (idx, page, char_start, char_end, n_tokens, text); vectors (n, dim) aligned. Returns chunk ids."""
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.changed = True
        self.db.execute(
            "INSERT INTO documents VALUES (?,?,?,?,?,?,?,?,?)",
            (doc_id, source, kind, content_hash, n_chars, n_pages, len(chunks), time.time(), json.dumps(warnings)),
        )
        ids = []
        for c, v in zip(chunks, vectors):
            cur = self.db.execute(
                "INSERT INTO chunks (doc_id, idx, page, char_start, char_end, n_tokens, text, terms, embedding)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (doc_id, *c, " ".join(analyze(c[5])), v.tobytes()),
            )
            ids.append(cur.lastrowid)
        if ids:
            self.index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
        return ids

    def delete_document(self, doc_id: str) -> int:
        ids = np.array([r[0] for r in self.db.execute("SELECT id FROM chunks WHERE doc_id=?", (doc_id,))],
                       dtype=np.int64)
        self.db.execute("DELETE FROM chunks WHERE doc_id=?", (doc_id,))
        n = self.db.execute("DELETE FROM documents WHERE doc_id=?", (doc_id,)).rowcount
        self.changed = self.changed or n > 0
        if len(ids):
            self.index.remove_ids(ids)
        return n

    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self.db.execute("SELECT id, embedding FROM chunks ORDER BY id").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.store.dim)
        return ids, vecs

    def finish(self, folder: Path) -> None:
        """Choose the index type for the new size, then write SQLite, index and BM25 into `folder`."""
        import faiss

        self.db.commit()
        n = self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        if needs_new_index(self.index, n, self.store.ann_threshold):
            ids, vecs = self._all_vectors()
            if n > self.store.ann_threshold:
                self.index = new_ivf_index(self.store.dim, vecs, ids)
            else:
                self.index = new_flat_index(self.store.dim)
                if len(ids):
                    self.index.add_with_ids(vecs, ids)
        if self.index.ntotal != n:
            raise RuntimeError(f"index holds {self.index.ntotal} vectors but the table {n} chunks")
        rows = self.db.execute("SELECT id, terms FROM chunks ORDER BY id").fetchall()
        self.bm25 = BM25Index.build(np.array([r[0] for r in rows], dtype=np.int64), [r[1].split() for r in rows])
        self.db.close()
        faiss.write_index(self.index, str(folder / "index.faiss"))
        if self.bm25 is not None:
            self.bm25.save(folder / "bm25")
