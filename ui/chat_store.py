"""Chats and chat settings kept in the browser (``gr.BrowserState``: the browser's localStorage), so a reload
keeps them and one person's history never reaches another's browser: nothing is stored on the server. With login
on, the store records its owner and a page load shows it only to that login (``own_store``).

The stored values come back from the browser, so they are untrusted: every reader here accepts anything and
keeps only what is well-formed (a value that fails to parse is ignored, never an error on page load).
"""

from __future__ import annotations

import math
import secrets
import time
import uuid
from typing import Any

MAX_CHATS = 30  # oldest dropped beyond this (localStorage holds a few MB per site)
MAX_MESSAGES = 200  # per chat, newest kept
MAX_CHARS = 20_000  # per message
TITLE_CHARS = 48
VERSION = 1

# the chat settings a browser keeps: name -> (kind, low, high); bounds are the controls' own
SETTING_KINDS: dict[str, tuple[str, float, float]] = {
    "temperature": ("float", 0.0, 2.0), "top_k": ("int", 0, 200), "top_p": ("float", 0.05, 1.0),
    "repetition_penalty": ("float", 1.0, 2.0), "max_new_tokens": ("int", 8, 1024),
    "seed": ("int", -1, 2**63 - 1), "model": ("str", 0, 500), "system": ("str", 0, 8000),
    "use_adapter": ("bool", 0, 1),
}


def new_chat_id() -> str:
    return uuid.uuid4().hex[:12]


def empty_store(owner: str | None = None) -> dict[str, Any]:
    store: dict[str, Any] = {"v": VERSION, "current": new_chat_id(), "chats": []}
    if owner:
        store["owner"] = owner
    return store


def owner_of(request: Any) -> str | None:
    """Whose chats a browser may show: the login's name when login is on (two people logging in on one browser
    each see only their own), None on a desktop or a public Space (the browser is the person)."""
    user = getattr(request, "username", None)
    return f"user:{user}" if user else None


def own_store(raw: Any, owner: str | None) -> dict[str, Any]:
    """The browser's store when it belongs to ``owner``; else an empty one of theirs (another login's chats,
    though kept in this browser, are never shown)."""
    store = parse_store(raw)
    return store if store.get("owner") == owner else empty_store(owner)


def _messages(raw: Any) -> list[dict[str, str]]:
    out = []
    for m in raw if isinstance(raw, list) else []:
        if isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str):
            out.append({"role": m["role"], "content": m["content"][:MAX_CHARS]})
    return out[-MAX_MESSAGES:]


def parse_store(raw: Any) -> dict[str, Any]:
    """A well-formed store from whatever the browser sent (None, garbage, an older layout: an empty store)."""
    if not isinstance(raw, dict) or raw.get("v") != VERSION:
        return empty_store()
    chats = []
    for c in raw.get("chats") if isinstance(raw.get("chats"), list) else []:
        if not isinstance(c, dict) or not isinstance(c.get("id"), str) or not c["id"]:
            continue
        msgs = _messages(c.get("messages"))
        if msgs:
            t = c.get("t")
            chats.append({"id": c["id"][:40], "title": title_of(msgs), "messages": msgs,
                          "t": float(t) if isinstance(t, (int, float)) and math.isfinite(t) else 0.0})
    current = raw.get("current")
    store = {"v": VERSION, "current": current[:40] if isinstance(current, str) and current else new_chat_id(),
             "chats": chats[:MAX_CHATS]}
    if isinstance(raw.get("owner"), str) and raw["owner"]:
        store["owner"] = raw["owner"][:200]
    return store


def title_of(messages: list[dict[str, str]]) -> str:
    """A chat's title: its first user message, on one line and cut short."""
    first = next((m["content"] for m in messages if m["role"] == "user"), "") or "(empty chat)"
    first = " ".join(first.split())
    return first if len(first) <= TITLE_CHARS else first[:TITLE_CHARS - 1] + "…"


def find_chat(store: dict[str, Any], chat_id: str | None) -> dict[str, Any] | None:
    return next((c for c in store["chats"] if c["id"] == chat_id), None)


def save_chat(store: dict[str, Any], messages: list[dict[str, str]], now: float | None = None) -> dict[str, Any]:
    """The store with the current chat set to ``messages`` (newest chat first; an empty chat is not kept)."""
    store = parse_store(store)
    cid = store["current"]
    msgs = _messages(messages)
    others = [c for c in store["chats"] if c["id"] != cid]
    if msgs:
        others.insert(0, {"id": cid, "title": title_of(msgs), "messages": msgs, "t": now or time.time()})
    store["chats"] = others[:MAX_CHATS]
    return store


def open_chat(store: dict[str, Any], chat_id: str | None) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """(store with ``chat_id`` current, its messages); an unknown id opens a new empty chat."""
    store = parse_store(store)
    chat = find_chat(store, chat_id)
    store["current"] = chat["id"] if chat else new_chat_id()
    return store, list(chat["messages"]) if chat else []


def chat_choices(store: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, id) for the "Earlier chats" picker, newest first."""
    return [(c["title"], c["id"]) for c in store["chats"]]


def parse_settings(raw: Any) -> dict[str, Any]:
    """The well-formed, in-range chat settings of ``raw``; anything else is dropped (the control keeps its value)."""
    out: dict[str, Any] = {}
    if not isinstance(raw, dict):
        return out
    for name, (kind, lo, hi) in SETTING_KINDS.items():
        v = raw.get(name)
        if kind == "str" and isinstance(v, str) and len(v) <= hi:
            out[name] = v
        elif kind == "bool" and isinstance(v, bool):
            out[name] = v
        elif kind in ("int", "float") and isinstance(v, (int, float)) and not isinstance(v, bool) \
                and math.isfinite(v) and lo <= v <= hi and (kind == "float" or v == int(v)):
            out[name] = int(v) if kind == "int" else float(v)
    return out


def browser_secret(folder: Any) -> str:
    """The key that encrypts the browser's copy: kept in the data folder so chats survive a server restart
    (a fresh random one when the folder cannot be written; then they last until the restart)."""
    from pathlib import Path

    path = Path(folder) / ".browser_secret"
    try:
        text = path.read_text().strip()
        if len(text) >= 16:
            return text
    except OSError:
        pass
    secret = secrets.token_urlsafe(24)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{secrets.token_hex(4)}")
        tmp.write_text(secret)
        tmp.replace(path)
        return path.read_text().strip() or secret  # another process may have written its own first
    except OSError:
        return secret
