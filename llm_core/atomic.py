"""Writes that a crash never leaves half done, for every file and folder the project saves: write beside the
target under a temporary name, then ``os.replace`` it into place (one rename; readers see the old or the new)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_path(target) as tmp:`` write the file ``tmp``; on success it replaces ``target`` (with the
    usual 0644 permissions, not mkstemp's private 0600), on any error it is removed and ``target`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace the text file ``path`` atomically, synced to disk first (small files that mark a state as done)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, **kw: Any) -> None:
    """``obj`` as JSON, written with :func:`write_text`."""
    write_text(path, json.dumps(obj, indent=indent, **kw))


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst`` (replacing an old one) so readers never see a half-written dst."""
    os.chmod(src, 0o755)  # mkdtemp/mkstemp create private (0700/0600) entries: use the usual permissions
    for p in src.iterdir():
        if p.is_file():
            os.chmod(p, 0o644)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_dir(folder: str | Path) -> Iterator[Path]:
    """The folder version (checkpoints, training runs, HF exports, adapters): ``with staged_dir(target) as tmp:``
    write into ``tmp``; on success it replaces ``target`` in one rename, on any error it is deleted and ``target``
    is left as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
