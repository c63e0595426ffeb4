"""Collections: mixed good/bad ingests, dedup, delete, atomic persistence (incl. a killed process), HNSW switch."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import rag.store
from rag import Cancelled, Collection, delete_collection, list_collections
from rag.store import is_ann
from tests.conftest import ROOT
from tests.fixtures.rag.docs import HashEmbedder, make_docx, make_encrypted_pdf, make_pdf

RAVENS = "The raven croaked hoarsely from the battlements at dusk, heralding the fatal entrance of the king."
OWLS = "Barn owls hunt voles in the meadow by night, gliding silently on soft-edged feathers."
BEES = "Honey bees dance in a figure of eight to tell their sisters where the clover blooms."
FROGS = "Tree frogs call loudly after summer rain, each species with its own rhythm of chirps."


def write(folder, name, data):
    p = folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return p


def state(col: Collection):
    """Everything a reader can observe: documents, chunk rows, vectors in the index."""
    snap = col.store.refresh()
    rows = snap.query("SELECT id, doc_id, text FROM chunks ORDER BY id")
    return [d.doc_id for d in col.documents()], rows, int(snap.index.ntotal)


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "rag"


def test_mixed_ingest_reports_per_file_and_keeps_good_files(tmp_path, data_dir):
    src = tmp_path / "in"
    write(src, "ravens.txt", RAVENS)
    write(src, "owls.md", "# Owls\n\n" + OWLS)
    write(src, "report.pdf", make_pdf(["Intro page mentions nothing special.", BEES]))
    write(src, "frogs.docx", make_docx([FROGS]))
    write(src, "page.html", "<html><body><p>Moles dig long tunnels under lawns.</p></body></html>")
    write(src, "empty.txt", b"")
    write(src, "image.txt", bytes(range(256)) * 8)
    write(src, "broken.pdf", b"%PDF-1.7\nthis file was cut off")
    write(src, "locked.pdf", make_encrypted_pdf(["classified"]))
    write(src, "sheet.xlsx", b"PK")
    write(src, "huge.txt", "big " * 25_000)
    upload = write(tmp_path, "upload-tmp-1", "uploaded text about badgers")
    col = Collection.open("mixed", data_dir)
    report = col.ingest([src, (upload, "../../etc/badgers.txt")], max_bytes=60_000)
    status = {f.source: f.status for f in report.files}
    assert status == {
        "in/frogs.docx": "added", "in/owls.md": "added", "in/page.html": "added", "in/ravens.txt": "added",
        "in/report.pdf": "added", "in/broken.pdf": "error", "in/empty.txt": "error", "in/huge.txt": "error",
        "in/image.txt": "error", "in/locked.pdf": "error", "in/sheet.xlsx": "error",
        "../../etc/badgers.txt": "error",
    }
    errors = {f.source: f.error for f in report.errors}
    assert "PDF is damaged" in errors["in/broken.pdf"] and "password-protected" in errors["in/locked.pdf"]
    assert not any(e.startswith(src) for src, e in errors.items())  # the name is `source`, not repeated
    assert "empty file" in errors["in/empty.txt"] and "binary content" in errors["in/image.txt"]
    assert "over the" in errors["in/huge.txt"] and "unsupported extension" in errors["in/sheet.xlsx"]
    assert "path components" in errors["../../etc/badgers.txt"]
    assert sorted(d.source for d in col.documents()) == sorted(s for s, v in status.items() if v == "added")
    assert not any("badgers" in r[2] for r in state(col)[1])
    # the PDF keeps page numbers: the bee text is on page 2
    hit = col.search("bees dancing to show where flowers are", k=1, mode="dense")[0]
    assert hit.source == "in/report.pdf" and hit.page == 2 and "figure of eight" in hit.text


def test_rejected_files_leave_collection_unchanged(tmp_path, data_dir):
    col = Collection.open("c", data_dir)
    col.ingest([write(tmp_path, "a.txt", RAVENS)])
    before, gen = state(col), col.store.snapshot.generation
    report = col.ingest([write(tmp_path, "bad.txt", b"\x00\x01" * 100), write(tmp_path, "e.md", b"")])
    assert [f.status for f in report.files] == ["error", "error"]
    assert state(col) == before and col.store.snapshot.generation == gen


def test_dedup_by_content_hash(tmp_path, data_dir):
    col = Collection.open("dedup", data_dir)
    a = write(tmp_path, "a.txt", OWLS)
    b = write(tmp_path, "copy of a.txt", OWLS)
    c = write(tmp_path, "c.md", BEES)
    r1 = col.ingest([a, b, c])
    assert [f.status for f in r1.files] == ["added", "duplicate", "added"]
    assert r1.files[1].doc_id == r1.files[0].doc_id
    r2 = col.ingest([b])
    assert r2.files[0].status == "duplicate" and r2.files[0].doc_id == r1.files[0].doc_id
    assert len(col.documents()) == 2


def test_delete_removes_rows_and_vectors(tmp_path, data_dir):
    col = Collection.open("del", data_dir)
    rep = col.ingest([write(tmp_path, "ravens.txt", RAVENS), write(tmp_path, "owls.txt", OWLS)])
    raven_id = rep.files[0].doc_id
    assert col.search("raven on the battlements", k=1, mode="bm25")[0].doc_id == raven_id
    n_before = col.info().n_chunks
    col.delete(raven_id[:6])  # unique prefix
    ids, rows, ntotal = state(col)
    assert ids == [rep.files[1].doc_id]
    assert ntotal == len(rows) == n_before - rep.files[0].n_chunks
    for mode in ("dense", "bm25", "hybrid"):
        assert all(r.doc_id != raven_id for r in col.search("raven on the battlements", k=5, mode=mode))
    assert Collection.open("del", data_dir).documents()[0].doc_id == rep.files[1].doc_id  # persisted
    with pytest.raises(KeyError, match="no document"):
        col.delete(raven_id)
    # deleting then re-adding the same content works (the hash is free again)
    assert col.ingest([write(tmp_path, "again.txt", RAVENS)]).files[0].status == "added"


def test_reopen_gives_same_results(tmp_path, data_dir):
    col = Collection.open("persist", data_dir)
    col.ingest([write(tmp_path, n, t) for n, t in [("r.txt", RAVENS), ("o.txt", OWLS), ("b.txt", BEES)]])
    q = "insects communicating by dancing"
    before = [(r.chunk_id, round(r.score, 5)) for r in col.search(q, k=3)]
    again = Collection.open("persist", data_dir)
    assert [(r.chunk_id, round(r.score, 5)) for r in again.search(q, k=3)] == before
    assert list_collections(data_dir)[0].n_documents == 3


def test_crash_during_commit_keeps_previous_state(tmp_path, data_dir, monkeypatch):
    col = Collection.open("crash", data_dir)
    col.ingest([write(tmp_path, "r.txt", RAVENS)])
    before = state(col)

    def boom(*a, **k):
        raise KeyboardInterrupt("simulated kill just before the commit point")

    monkeypatch.setattr(rag.store, "write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        col.ingest([write(tmp_path, "o.txt", OWLS), write(tmp_path, "b.txt", BEES)])
    monkeypatch.undo()
    assert state(col) == before
    assert state(Collection.open("crash", data_dir)) == before  # a fresh process view
    assert not list((data_dir / "crash").glob("*.tmp"))
    assert col.ingest([write(tmp_path, "o.txt", OWLS)]).files[0].status == "added"


def test_crash_while_writing_rows_keeps_previous_state(tmp_path, data_dir, monkeypatch):
    col = Collection.open("crash2", data_dir)
    col.ingest([write(tmp_path, "r.txt", RAVENS)])
    before = state(col)
    real = rag.store.Writer.add_document
    calls = []

    def second_fails(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(self, *a, **k)

    monkeypatch.setattr(rag.store.Writer, "add_document", second_fails)
    with pytest.raises(OSError, match="disk full"):
        col.ingest([write(tmp_path, "o.txt", OWLS), write(tmp_path, "b.txt", BEES)])
    assert state(Collection.open("crash2", data_dir)) == before


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_process_leaves_collection_readable(tmp_path, data_dir):
    """A real process dies (SIGKILL) after writing the new generation but before swapping CURRENT."""
    col = Collection.open("killed", data_dir, embedder=HashEmbedder())
    col.ingest([write(tmp_path, "r.txt", RAVENS)])
    before = state(col)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import rag.store
        from rag import Collection
        from tests.fixtures.rag.docs import HashEmbedder
        real = rag.store.write_json
        def die(path, obj):
            if path.name == "CURRENT":
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, obj)
        rag.store.write_json = die
        col = Collection.open("killed", {str(data_dir)!r}, embedder=HashEmbedder())
        col.ingest([{str(write(tmp_path, "o.txt", OWLS))!r}])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (data_dir / "killed" / "gen-000002" / "index.faiss").exists()  # written, never committed
    again = Collection.open("killed", data_dir, embedder=HashEmbedder())
    assert state(again) == before
    assert again.search("raven", k=1, mode="bm25")[0].text == RAVENS
    again.ingest([write(tmp_path, "b.txt", BEES)])  # the next write cleans up and goes on
    assert len(again.documents()) == 2
    assert sorted(p.name for p in (data_dir / "killed").glob("gen-*")) == ["gen-000002"]


def test_cancel_commits_nothing(tmp_path, data_dir):
    col = Collection.open("cancel", data_dir)
    stop = threading.Event()
    stages = []

    def progress(stage, done, total):
        stages.append(stage)
        if stage == "embed":
            stop.set()

    col.ingest([write(tmp_path, "r.txt", RAVENS)], progress=lambda s, d, t: stages.append(s))
    assert stages[0] == "load" and "embed" in stages and stages[-1] == "save"
    before = state(col)
    with pytest.raises(Cancelled):
        col.ingest([write(tmp_path, "o.txt", OWLS)], progress=progress, stop_event=stop)
    assert state(col) == before


def test_large_collection_switches_to_ivf_and_back(tmp_path, data_dir):
    col = Collection.open("ann", data_dir, ann_threshold=3)
    docs = [RAVENS, OWLS, BEES, FROGS, "Moles dig long tunnels under lawns and eat earthworms."]
    col.ingest([write(tmp_path, f"d{i}.txt", t) for i, t in enumerate(docs[:2])])
    assert not is_ann(col.store.snapshot.index)
    rep = col.ingest([write(tmp_path, f"d{i}.txt", t) for i, t in enumerate(docs) if i >= 2])
    snap = col.store.snapshot
    assert is_ann(snap.index) and snap.index.ntotal == 5
    assert is_ann(Collection.open("ann", data_dir).store.snapshot.index)  # persisted as IVF
    assert col.search("amphibians singing after a storm", k=1, mode="dense")[0].text == FROGS
    col.delete(rep.files[1].doc_id)  # frogs
    assert is_ann(col.store.snapshot.index) and col.store.snapshot.index.ntotal == 4
    assert all(r.text != FROGS for r in col.search("amphibians singing after a storm", k=4, mode="dense"))
    col.delete(rep.files[0].doc_id)
    snap = Collection.open("ann", data_dir).store.snapshot
    assert not is_ann(snap.index) and snap.index.ntotal == 3  # back under the threshold: exact again


def test_dense_scores_are_cosines(tmp_path, data_dir):
    col = Collection.open("cos", data_dir)
    col.ingest([write(tmp_path, "o.txt", OWLS), write(tmp_path, "b.txt", BEES)])
    q = "night birds hunting"
    res = col.search(q, k=2, mode="dense")
    vecs = col.embedder.encode([q] + [r.text for r in res])
    assert np.allclose([r.score for r in res], vecs[1:] @ vecs[0], atol=1e-4)
    assert res[0].score >= res[1].score and res[0].text == OWLS


def test_collection_names_settings_and_listing(tmp_path, data_dir):
    for bad in ["../x", "a/b", "", ".hidden", "x" * 80]:
        with pytest.raises(ValueError, match="invalid collection name"):
            Collection.open(bad, data_dir)
    with pytest.raises(FileNotFoundError):
        Collection.open("missing", data_dir, create=False)
    Collection.open("one", data_dir)
    with pytest.raises(ValueError, match="was built with"):
        Collection.open("one", data_dir, embed_model="some/other-model")
    assert [c.name for c in list_collections(data_dir)] == ["one"]
    delete_collection("one", data_dir)
    assert list_collections(data_dir) == []


def test_concurrent_writer_adding_the_same_document(tmp_path, data_dir):
    """Another process adds the same file while we embed: ours becomes a duplicate instead of failing."""
    other = Collection.open("race", data_dir, embedder=HashEmbedder())
    f = write(tmp_path, "owls.txt", OWLS)

    class Racing(HashEmbedder):
        def encode(self, texts, **kw):
            if not other.documents():
                other.ingest([f])
            return super().encode(texts, **kw)

    mine = Collection.open("race", data_dir, embedder=Racing())
    report = mine.ingest([f, write(tmp_path, "bees.txt", BEES)])
    assert [x.status for x in report.files] == ["duplicate", "added"]
    assert sorted(d.source for d in mine.documents()) == ["bees.txt", "owls.txt"]
    assert state(mine)[2] == len(state(mine)[1])  # vectors and rows still match
