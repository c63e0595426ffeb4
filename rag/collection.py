"""Named collections: the API the CLI and the UI call (ingest, documents, delete, search)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llm_core.atomic import write_json

from .chunking import chunk_document
from .embed import DEFAULT_EMBED_MODEL, Cancelled, Embedder, get_embedder
from .loaders import DEFAULT_MAX_BYTES, LoadError, expand_paths, load_file
from .retrieve import SearchResult, search
from .store import Store, read_counts

DEFAULT_ANN_THRESHOLD = 50_000  # chunks; above this the exact flat index becomes IVF (approximate)
DEFAULT_CHUNK_OVERLAP = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

IngestProgress = Callable[[str, int, int], None]  # (stage: "load" | "embed" | "save", done, total)


def rag_home(data_dir: str | Path | None = None) -> Path:
    """Folder holding all collections: ``data_dir`` when given (a user's own, from the UI), else
    ``llm_core.paths.data_dir()/rag`` (``$LLM_STUDIO_HOME/rag`` or ``./data/rag``)."""
    if data_dir is not None:
        return Path(data_dir)
    from llm_core.paths import data_dir as core_data_dir

    return Path(core_data_dir()) / "rag"


def check_collection_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter/digit"
        )
    return name


@dataclass
class FileResult:
    source: str
    status: str  # "added" | "duplicate" | "error"
    doc_id: str | None = None
    n_chunks: int = 0
    error: str | None = None  # the reason in words, without the file name (that is `source`)
    warnings: list[str] = field(default_factory=list)


@dataclass
class IngestReport:
    collection: str
    files: list[FileResult]
    seconds: float = 0.0

    @property
    def added(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "added"]

    @property
    def errors(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "error"]

    @property
    def n_chunks(self) -> int:
        return sum(f.n_chunks for f in self.added)

    def to_dict(self) -> dict:
        return {"collection": self.collection, "seconds": self.seconds, "n_chunks": self.n_chunks,
                "files": [asdict(f) for f in self.files]}


@dataclass
class DocumentInfo:
    doc_id: str
    source: str
    kind: str
    n_chunks: int
    n_pages: int
    n_chars: int
    added: float


@dataclass
class CollectionInfo:
    name: str
    n_documents: int
    n_chunks: int
    embed_model: str


class Collection:
    """A named set of documents with its index. Safe to search from one thread while another ingests."""

    def __init__(self, folder: Path, settings: dict, embedder: Embedder | None = None):
        self.folder = folder
        self.name = folder.name
        self.settings = settings
        self._embedder = embedder
        self.store = Store(folder, int(settings["dim"]), int(settings["ann_threshold"]))

    @classmethod
    def open(cls, name: str, data_dir: str | Path | None = None, create: bool = True,
             embed_model: str | None = None, chunk_tokens: int | None = None,
             chunk_overlap: int = DEFAULT_CHUNK_OVERLAP, ann_threshold: int = DEFAULT_ANN_THRESHOLD,
             embedder: Embedder | None = None) -> Collection:
        """Open (or create) collection `name`. Settings are fixed at creation; a different model is an error."""
        folder = rag_home(data_dir) / check_collection_name(name)
        cfg_path = folder / "collection.json"
        if cfg_path.exists():
            settings = json.loads(cfg_path.read_text(encoding="utf-8"))
            asked = embed_model or (embedder.name if embedder is not None else None)
            if asked and asked != settings["embed_model"]:
                raise ValueError(f"collection {name!r} was built with {settings['embed_model']!r}, not {asked!r}")
            return cls(folder, settings, embedder)
        if not create:
            raise FileNotFoundError(f"no collection named {name!r} in {folder.parent}")
        emb = embedder or get_embedder(embed_model or DEFAULT_EMBED_MODEL)
        size = chunk_tokens or emb.max_tokens
        if size > emb.max_tokens:
            raise ValueError(f"chunk_tokens={size} exceeds what {emb.name} sees ({emb.max_tokens} tokens)")
        settings = {"version": 1, "embed_model": emb.name, "dim": emb.dim, "chunk_tokens": size,
                    "chunk_overlap": chunk_overlap, "ann_threshold": ann_threshold, "created": time.time()}
        folder.mkdir(parents=True, exist_ok=True)
        write_json(cfg_path, settings)
        return cls(folder, settings, emb)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = get_embedder(self.settings["embed_model"])
        return self._embedder

    # ---- ingest ----
    def ingest(self, paths: list, progress: IngestProgress | None = None, show_progress: bool = False,
               stop_event: threading.Event | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> IngestReport:
        """Load, chunk, embed and store files/folders. Items may be paths or (path, display_name) for uploads.

        Bad files get a per-file error and are skipped; the good ones are committed together, atomically.
        Raises `Cancelled` if `stop_event` is set (nothing committed).
        """
        t0 = time.perf_counter()
        items = expand_paths(paths)
        results: list[FileResult] = []
        pending = []  # (FileResult, LoadedDocument, hash, chunks)
        seen: dict[str, str] = {}
        existing = self.store.refresh().content_hashes()
        emb = self.embedder
        for i, item in enumerate(items):
            if stop_event is not None and stop_event.is_set():
                raise Cancelled("stopped by request")
            if progress:
                progress("load", i, len(items))
            shown = item.name or item.path.name
            try:
                doc = load_file(item.path, item.name, max_bytes=max_bytes, check_name=not item.trusted_name)
            except LoadError as e:
                results.append(FileResult(shown, "error", error=_reason(str(e), shown)))
                continue
            except OSError as e:  # str(e) would carry the server-side path (an upload's temp folder): words only
                results.append(FileResult(shown, "error", error=f"cannot read the file ({e.strerror or 'read error'})"))
                continue
            h = hashlib.sha256(doc.text.encode("utf-8")).hexdigest()
            dup = existing.get(h) or seen.get(h)
            if dup:
                results.append(FileResult(doc.source, "duplicate", doc_id=dup, warnings=doc.warnings))
                continue
            chunks = chunk_document(doc, emb.token_starts, self.settings["chunk_tokens"],
                                    self.settings["chunk_overlap"])
            seen[h] = h[:16]
            res = FileResult(doc.source, "added", doc_id=h[:16], n_chunks=len(chunks), warnings=doc.warnings)
            results.append(res)
            pending.append((res, doc, h, chunks))
        if progress:
            progress("load", len(items), len(items))
        texts = [c.text for _, _, _, chunks in pending for c in chunks]
        vecs = emb.encode(texts, show_progress=show_progress, stop_event=stop_event,
                          progress=(lambda d, n: progress("embed", d, n)) if progress else None)
        if stop_event is not None and stop_event.is_set():
            raise Cancelled("stopped by request")
        if pending:
            with self.store.transaction() as w:
                off = 0
                for res, doc, h, chunks in pending:
                    rows = [(c.index, c.page, c.start, c.end, c.n_tokens, c.text) for c in chunks]
                    part = vecs[off : off + len(rows)]
                    off += len(rows)
                    dup = w.has_hash(h)  # another process may have added it since we looked
                    if dup:
                        res.status, res.doc_id, res.n_chunks = "duplicate", dup, 0
                        continue
                    w.add_document(res.doc_id, doc.source, doc.kind, h, len(doc.text),
                                   len({p.page for p in doc.pages}), doc.warnings, rows, part)
                if progress:
                    progress("save", 0, 1)
        if progress:
            progress("save", 1, 1)
        return IngestReport(self.name, results, time.perf_counter() - t0)

    # ---- documents ----
    def documents(self) -> list[DocumentInfo]:
        return [DocumentInfo(*r) for r in self.store.refresh().documents()]

    def resolve_doc_id(self, doc_id: str) -> str:
        """Accept a full id or a unique prefix (>= 4 characters)."""
        ids = [d.doc_id for d in self.documents()]
        if doc_id in ids:
            return doc_id
        hits = [i for i in ids if len(doc_id) >= 4 and i.startswith(doc_id)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise KeyError(f"document id prefix {doc_id!r} is ambiguous in collection {self.name!r}")
        raise KeyError(f"no document {doc_id!r} in collection {self.name!r}")

    def delete(self, doc_id: str) -> None:
        """Remove a document's rows and vectors (atomic). KeyError if it is not there."""
        full = self.resolve_doc_id(doc_id)
        with self.store.transaction() as w:
            if w.delete_document(full) == 0:
                raise KeyError(f"no document {doc_id!r} in collection {self.name!r}")

    def info(self) -> CollectionInfo:
        snap = self.store.refresh()
        return CollectionInfo(self.name, snap.n_documents(), int(snap.index.ntotal), self.settings["embed_model"])

    # ---- search ----
    def search(self, query: str, k: int = 5, mode: str = "hybrid", mmr: bool = False,
               mmr_lambda: float = 0.5, query_vector=None) -> list[SearchResult]:
        """Top-k chunks, each with its score (see rag.retrieve.search). `query_vector` skips embedding the query."""
        return search(self.store.refresh(), self.embedder, query, k, mode, mmr, mmr_lambda, query_vector)


def _reason(message: str, shown: str) -> str:
    """A loader message without its leading 'name: ' (the report names the file in its own field)."""
    return message[len(shown) + 2 :] if message.startswith(f"{shown}: ") else message


def collection_names(data_dir: str | Path | None = None) -> list[str]:
    """Names of the collections under the data folder, sorted; nothing is opened or read but the folder."""
    root = rag_home(data_dir)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if _NAME.match(d.name) and (d / "collection.json").is_file())


def list_collections(data_dir: str | Path | None = None) -> list[CollectionInfo]:
    """Collections under the data folder, with counts read from SQLite (no index is loaded)."""
    root = rag_home(data_dir)
    out = []
    for name in collection_names(root):
        settings = json.loads((root / name / "collection.json").read_text(encoding="utf-8"))
        n_docs, n_chunks = read_counts(root / name)
        out.append(CollectionInfo(name, n_docs, n_chunks, settings["embed_model"]))
    return out


def delete_collection(name: str, data_dir: str | Path | None = None) -> None:
    folder = rag_home(data_dir) / check_collection_name(name)
    if not (folder / "collection.json").exists():
        raise FileNotFoundError(f"no collection named {name!r}")
    shutil.rmtree(folder)
