"""CLI round trip through real subprocesses: ingest, query --json --extractive, list, delete."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from rag import Collection
from rag.__main__ import RagArgs, main, parse_args
from tests.conftest import ROOT


def run(*args, data_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "rag", *args, "--data-dir", str(data_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc


def test_parse_args_is_typed():
    a = parse_args(["query", "who?", "--collection", "c", "--k", "3", "--retrieval", "bm25", "--json"])
    assert a == RagArgs(command="query", collection="c", question="who?", k=3, mode="grounded", retrieval="bm25",
                        json=True)
    assert parse_args(["query", "q", "--mode", "generative"]).mode == "generative"
    old = parse_args(["query", "q", "--mode", "bm25", "--extractive"])  # the older spellings still work
    assert (old.mode, old.retrieval, old.extractive) == ("extractive", "bm25", True)
    assert parse_args(["ingest", "a.txt", "b/"]).paths == ["a.txt", "b/"]


def test_cli_round_trip(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tides.txt").write_text("The tides are caused mainly by the gravitational pull of the Moon on the oceans. "
                                    "Spring tides happen when the Sun and Moon line up.")
    (docs / "bread.md").write_text("# Bread\n\nYeast ferments sugars and releases carbon dioxide, "
                                   "which makes bread dough rise before baking.")
    (docs / "junk.txt").write_bytes(b"\x00\xff" * 64)
    data = tmp_path / "rag"

    ing = run("ingest", str(docs), "--collection", "notes", "--json", data_dir=data)
    assert ing.returncode == 0, ing.stderr[-2000:]
    report = json.loads(ing.stdout)
    status = {f["source"]: f["status"] for f in report["files"]}
    assert status == {"docs/bread.md": "added", "docs/junk.txt": "error", "docs/tides.txt": "added"}

    q = run("query", "--collection", "notes", "What makes dough rise?", "--k", "2", "--json", "--extractive",
            data_dir=data)
    assert q.returncode == 0, q.stderr[-2000:]
    out = json.loads(q.stdout)
    assert "carbon dioxide" in out["answer"] and "[1]" in out["answer"]
    src = out["sources"][0]
    assert {"source", "page", "chunk_id", "score", "text"} <= set(src)
    assert src["source"] == "docs/bread.md" and src["page"] is None and src["score"] > 0
    assert out["citations"][0]["source"] == "docs/bread.md"

    listed = json.loads(run("list", "--json", data_dir=data).stdout)
    (coll,) = listed["collections"]
    assert coll["name"] == "notes" and coll["n_documents"] == 2
    bread_id = next(d["doc_id"] for d in coll["documents"] if d["source"] == "docs/bread.md")

    gone = run("delete", "--collection", "notes", "--doc", bread_id[:8], data_dir=data)
    assert gone.returncode == 0 and bread_id in gone.stdout
    listed = json.loads(run("list", "--json", data_dir=data).stdout)
    assert [d["source"] for d in listed["collections"][0]["documents"]] == ["docs/tides.txt"]

    bad = run("delete", "--collection", "notes", "--doc", "ffffffff", data_dir=data)
    assert bad.returncode == 2 and "no document" in bad.stderr
    missing = run("query", "--collection", "nope", "x", "--extractive", data_dir=data)
    assert missing.returncode == 2 and "no collection named 'nope'" in missing.stderr


def cli(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (the embedder stays loaded between calls): (exit code, stdout, stderr)."""
    rc = main(parse_args(list(args)))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_messages_answers_and_no_documents(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bread.md").write_text("Yeast ferments sugars and releases carbon dioxide, which makes bread dough rise.")
    (docs / "binary_as_text.txt").write_bytes(b"\x00\xff" * 64)
    data = str(tmp_path / "rag")
    rc, out, _ = cli(capsys, "ingest", str(docs), "--collection", "n", "--data-dir", data)
    (line,) = [ln for ln in out.splitlines() if ln.startswith("error")]
    assert line.count("binary_as_text.txt") == 1 and "binary content" in line  # the name once, then the reason

    rc, out, _ = cli(capsys, "query", "--collection", "n", "What makes dough rise?", "--json", "--data-dir", data)
    ans = json.loads(out)
    assert rc == 0 and ans["answer_mode"] == "grounded" and ans["abstained"] is False
    assert "carbon dioxide" in ans["answer"] and [c["source"] for c in ans["citations"]] == ["docs/bread.md"]
    rc, out, _ = cli(capsys, "query", "--collection", "n", "Who painted the Mona Lisa?", "--json", "--data-dir", data)
    assert json.loads(out)["abstained"] is True and json.loads(out)["citations"] == []

    doc_id = Collection.open("n", data, create=False).documents()[0].doc_id
    cli(capsys, "delete", "--collection", "n", "--doc", doc_id, "--data-dir", data)
    rc, out, err = cli(capsys, "query", "--collection", "n", "What makes dough rise?", "--mode", "generative",
                       "--llm", "/nonexistent/model", "--json", "--data-dir", data)  # the model is never loaded
    assert rc == 0, err
    assert json.loads(out)["abstained"] is True and "no documents" in json.loads(out)["answer"]
