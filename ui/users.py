"""Whose data a request sees: the one place that maps a request to a data folder.

- A desktop install (loopback, no login): the one data folder, ``llm_core.paths.data_dir()``, as always.
- Login on (``request.username``; Gradio's login or a Space's OAuth): ``data_dir()/users/<name>/``, private.
- A public deployment without login (a Hugging Face Space, ``SPACE_ID``, or ``STUDIO_ISOLATION=sessions``): each
  browser session gets a scratch folder ``data_dir()/sessions/<session>/`` capped at ``STUDIO_SESSION_QUOTA_MB``
  (default 200), removed when the session ends (``end_session``, wired to ``demo.unload``).

Every collection, adapter, checkpoint, run record, upload and export a handler writes or lists lives under its
workspace's ``root``; the bundled default model is shared read-only. Handlers get their workspace from
``workspace(request)``; without an explicit request it is the one bound by ``bound_workspace`` (the API, job
threads), else Gradio's current request, else the desktop folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_core.paths import data_dir as core_data_dir

USERS, SESSIONS = "users", "sessions"
DEFAULT_SESSION_QUOTA_MB = 200.0
SESSION_MAX_AGE_S = 24 * 3600  # scratch folders left by a server that stopped before their session ended
_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_BOUND: ContextVar[Workspace | None] = ContextVar("studio_workspace", default=None)


class QuotaExceeded(ValueError):
    """A write would take a scratch space past its size limit; nothing already stored is touched."""


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 when it does not exist); files vanishing meanwhile are skipped."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


@dataclass(frozen=True)
class Workspace:
    """One person's (or one browser session's) data folder: checkpoints/, adapters/, rag/, runs/, uploads/."""

    root: Path
    kind: str = "desktop"  # "desktop" | "user" | "session"
    owner: str | None = None  # the login name or session hash
    quota_bytes: int | None = None  # None: no limit

    @property
    def shared(self) -> bool:
        """True on a shared deployment: the folder is one of many and must not reach outside itself."""
        return self.kind != "desktop"

    @property
    def rag_dir(self) -> Path:
        return self.root / "rag"

    def contains(self, path: str | Path) -> bool:
        """True when ``path`` lies inside this workspace (after resolving links and '..')."""
        try:
            return Path(path).resolve().is_relative_to(self.root.resolve())
        except (OSError, ValueError):
            return False

    def usage_bytes(self) -> int:
        return folder_bytes(self.root)

    def check_room(self, adding: int = 0) -> None:
        """Raise ``QuotaExceeded`` (in words) when ``adding`` more bytes would not fit; no-op without a quota."""
        if self.quota_bytes is None:
            return
        used = self.usage_bytes()
        if used + max(adding, 0) <= self.quota_bytes:
            return
        need = f" and this needs about {_mb(adding)} more" if adding > 0 else ""
        raise QuotaExceeded(
            f"This session's scratch space is full: it holds {_mb(used)} of its {_mb(self.quota_bytes)}{need}. "
            "Nothing already stored was removed. Delete a collection, document or model you no longer need, "
            "or run the studio on your own computer for more room.")


def safe_dir_name(name: str) -> str:
    """A folder name for a login or session: the name itself when it is plain (letters, digits, '_', '-'),
    else a cleaned form plus a hash, so that no name can climb out ('..', '/') or collide with another."""
    name = str(name)
    if _PLAIN.match(name):
        return name
    clean = _UNSAFE.sub("-", name).strip("-")[:40] or "x"
    return f"{clean}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:12]}"


def shared_deployment(env: dict[str, str] | None = None) -> bool:
    """True on a public deployment without login: a Hugging Face Space (``SPACE_ID``) or
    ``STUDIO_ISOLATION=sessions``; ``STUDIO_ISOLATION=off`` keeps one data folder even on a Space."""
    env = os.environ if env is None else env
    mode = (env.get("STUDIO_ISOLATION") or "").strip().lower()
    if mode in ("off", "none", "desktop"):
        return False
    if mode in ("sessions", "session", "on"):
        return True
    return bool(env.get("SPACE_ID"))


def session_quota_bytes(env: dict[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get("STUDIO_SESSION_QUOTA_MB") or str(DEFAULT_SESSION_QUOTA_MB)
    try:
        mb = float(raw)
    except ValueError as e:
        raise ValueError(f"STUDIO_SESSION_QUOTA_MB={raw!r} is not a number of megabytes") from e
    return int(mb * 1e6)


def desktop_workspace() -> Workspace:
    return Workspace(Path(core_data_dir()), "desktop")


def user_workspace(name: str) -> Workspace:
    """A login's private folder, ``data_dir()/users/<name>/``."""
    return Workspace(Path(core_data_dir()) / USERS / safe_dir_name(name), "user", str(name))


def session_workspace(session_hash: str) -> Workspace:
    """A browser session's scratch folder with its quota, ``data_dir()/sessions/<session>/``."""
    return Workspace(Path(core_data_dir()) / SESSIONS / safe_dir_name(session_hash), "session",
                     str(session_hash), session_quota_bytes())


def _gradio_request() -> Any:
    """The request of the Gradio event being handled in this thread, if any."""
    try:
        from gradio.context import LocalContext

        return LocalContext.request.get(None)
    except (ImportError, AttributeError):
        return None


def workspace(request: Any = None) -> Workspace:
    """The workspace of ``request`` (a ``gr.Request``, or anything with ``username`` / ``session_hash``).

    Without one: the workspace bound by ``bound_workspace``, else that of the Gradio event being handled,
    else the desktop folder (the CLIs, tests, start-up)."""
    if request is None:
        bound = _BOUND.get()
        if bound is not None:
            return bound
        request = _gradio_request()
        if request is None:
            return desktop_workspace()
    user = getattr(request, "username", None)
    if user:
        return user_workspace(user)
    if not shared_deployment():
        return desktop_workspace()
    session = getattr(request, "session_hash", None)
    # no session (a bare API call to Gradio): a fresh scratch folder rather than anyone's data
    return session_workspace(session or f"anonymous-{uuid.uuid4().hex}")


@contextmanager
def bound_workspace(ws: Workspace) -> Iterator[Workspace]:
    """Make ``ws`` what ``workspace()`` answers in this context (an API request, a job's thread)."""
    token = _BOUND.set(ws)
    try:
        yield ws
    finally:
        _BOUND.reset(token)


def end_session(request: Any) -> bool:
    """Remove a session's scratch folder (``demo.unload``); a login's folder and the desktop's stay."""
    if request is None or getattr(request, "username", None) or not shared_deployment():
        return False
    session = getattr(request, "session_hash", None)
    if not session:
        return False
    folder = session_workspace(session).root
    if folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        return True
    return False


def sweep_sessions(max_age_s: float = SESSION_MAX_AGE_S, now: float | None = None) -> int:
    """Remove scratch folders untouched for ``max_age_s`` (their server stopped before the session ended)."""
    root = Path(core_data_dir()) / SESSIONS
    now = time.time() if now is None else now
    removed = 0
    for d in root.iterdir() if root.is_dir() else []:
        try:
            newest = max([d.stat().st_mtime] + [p.stat().st_mtime for p in d.rglob("*")])
        except OSError:
            continue
        if now - newest > max_age_s:
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    return removed


def parse_api_keys(env: dict[str, str] | None = None) -> dict[str, str | None]:
    """API key -> the login it acts as: ``STUDIO_API_KEYS="alice:key1,bob:key2"`` gives each user a key to their
    own data; the single ``STUDIO_API_KEY`` maps to None (the deployment's own data folder)."""
    env = os.environ if env is None else env
    keys: dict[str, str | None] = {}
    for i, part in enumerate((env.get("STUDIO_API_KEYS") or "").split(",")):
        part = part.strip()
        if not part:
            continue
        user, sep, key = part.partition(":")
        if not sep or not user.strip() or not key.strip():
            raise ValueError(f"STUDIO_API_KEYS entry {i + 1} is not 'user:key' (entries are separated by commas)")
        if key.strip() in keys:
            raise ValueError(f"STUDIO_API_KEYS entry {i + 1} ({user.strip()!r}) reuses another user's key")
        keys[key.strip()] = user.strip()
    single = (env.get("STUDIO_API_KEY") or "").strip()
    if single and single not in keys:
        keys[single] = None
    return keys
