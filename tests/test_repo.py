"""The repository stands alone: a user's clone has nothing beside it, so no file may reach outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the developers' reference folder beside the clone, named as a relative path or built from a parent folder
OUTSIDE = re.compile(r"\.\./" + "shared" + r"|parents?(\[\d\])?\s*/\s*[\"']" + "shared" + r"[\"']")


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
        return [ROOT / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.SubprocessError):  # not a git checkout (e.g. an unpacked archive): walk the tree
        skip = {".venv", ".git", "data", "__pycache__", ".pytest_cache", ".ruff_cache"}
        return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def test_the_pattern_catches_what_it_is_for() -> None:
    beside = "sha" + "red"  # never spelled whole here: this file is scanned too
    for line in (f'DATA = ROOT.parent / "{beside}" / "data"', f"open('../{beside}/data/x.txt')",
                 f"Path(__file__).resolve().parents[2] / '{beside}'"):
        assert OUTSIDE.search(line), line
    assert not OUTSIDE.search("a shared cache, shared by all sessions")


def test_no_tracked_file_reads_the_folder_beside_the_clone() -> None:
    files = tracked_files()
    assert len(files) > 50  # the listing worked: the project has well over 50 files
    hits = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files
        hits += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, f"these lines reach outside the clone: {hits}"
