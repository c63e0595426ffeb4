"""CLI round trip through real subprocesses: ingest, query --json --extractive, list, delete."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from rag.__main__ import RagArgs, parse_args
from tests.conftest import ROOT


def run(*args, data_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "rag", *args, "--data-dir", str(data_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc


def test_parse_args_is_typed():
    a = parse_args(["query", "who?", "--collection", "c", "--k", "3", "--mode", "bm25", "--json", "--extractive"])
    assert a == RagArgs(command="query", collection="c", question="who?", k=3, mode="bm25", json=True,
                        extractive=True)
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
