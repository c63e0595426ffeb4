"""Isolation on a shared deployment: two logins (and two browser sessions of a public Space) never see, query,
export or delete each other's collections, checkpoints, adapters, runs or chats: through the UI handlers (with
the ``gr.Request`` Gradio hands them) and through the API (per-user keys). A desktop install keeps one folder."""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import pytest
from fastapi.testclient import TestClient

from tests.test_app import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ALICE = gr.Request(username="alice", session_hash="sess-alice")
BOB = gr.Request(username="bob", session_hash="sess-bob")


@pytest.fixture()
def desktop(home, monkeypatch):
    for var in ("SPACE_ID", "STUDIO_ISOLATION", "STUDIO_SESSION_QUOTA_MB", "STUDIO_API_KEYS", "STUDIO_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture()
def space(desktop, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/llm-scratch-studio")
    return desktop


@contextmanager
def gradio_event(request: gr.Request):
    """What Gradio does around every handler call: the event's request in its context."""
    from gradio.context import LocalContext

    token = LocalContext.request.set(request)
    try:
        yield
    finally:
        LocalContext.request.reset(token)


def _doc(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ---- the one resolver -------------------------------------------------------------------------------------------
def test_desktop_keeps_one_data_folder_and_logins_get_their_own(desktop):
    from ui.settings import data_dir
    from ui.users import workspace

    assert data_dir() == desktop and workspace(gr.Request(session_hash="x")).root == desktop
    assert not workspace().shared
    a, b = workspace(ALICE), workspace(BOB)
    assert a.root == desktop / "users" / "alice" and b.root == desktop / "users" / "bob" and a.shared
    with gradio_event(BOB):
        assert data_dir() == b.root  # every handler's data_dir() is the requester's


def test_names_cannot_climb_out_or_collide(desktop):
    from ui.users import safe_dir_name, user_workspace

    users = desktop / "users"
    for evil in ("../bob", "..", "a/../../etc", "/etc/passwd", "bob\\..\\x", ".hidden", "", "ü" * 80):
        ws = user_workspace(evil)
        assert ws.root.parent == users and ws.root.resolve().is_relative_to(users.resolve()), evil
        assert "/" not in safe_dir_name(evil) and ".." not in safe_dir_name(evil)
    assert safe_dir_name("../bob") != safe_dir_name("bob") != safe_dir_name("Bob")
    assert user_workspace("alice").contains(desktop / "users" / "alice" / "rag")
    assert not user_workspace("alice").contains(desktop / "users" / "alice" / ".." / "bob")


# ---- documents: list, query, delete -----------------------------------------------------------------------------
def test_documents_of_one_login_are_invisible_to_another(desktop, registry, tmp_path):
    from ui.documents_tab import ask, collection_names, delete_document, documents_rows, ingest_files

    secret = _doc(tmp_path, "alice-secret.txt", "Alice's locker code is 9931-KESTREL. The locker is in hall C.")
    _, summary, rows = ingest_files([secret], "notes", request=ALICE)
    assert "1 file(s) added" in summary and rows[0][1] == "alice-secret.txt"
    alice_doc = rows[0][0]
    assert (desktop / "users" / "alice" / "rag" / "notes" / "collection.json").is_file()
    assert not (desktop / "rag").exists()  # nothing in the shared folder

    assert collection_names(ALICE) == ["notes"] and collection_names(BOB) == []
    assert documents_rows("notes", BOB) == []
    with pytest.raises(gr.Error, match="no collection named"):
        list(ask("What is the locker code?", "notes", "hybrid", 2, "grounded", None, registry, BOB))
    with pytest.raises(gr.Error, match="no collection named"):
        delete_document("notes", alice_doc, BOB)
    assert documents_rows("../alice/rag/notes", BOB) == []  # no way round through the name either
    with pytest.raises(gr.Error, match="invalid collection name"):
        ingest_files([secret], "../alice/rag/notes", request=BOB)

    # bob's own "notes" is another collection: his upload and delete leave alice's alone
    _, _, bob_rows = ingest_files([_doc(tmp_path, "bob.txt", "Bob grows tomatoes on the roof.")], "notes",
                                  request=BOB)
    assert [r[1] for r in bob_rows] == ["bob.txt"]
    delete_document("notes", bob_rows[0][0], BOB)
    assert [r[1] for r in documents_rows("notes", ALICE)] == ["alice-secret.txt"]
    answer, sources = list(ask("What is the locker code?", "notes", "hybrid", 2, "grounded", None, registry,
                                ALICE))[-1]
    assert "9931-KESTREL" in answer and sources[0][1] == "alice-secret.txt"


# ---- models: checkpoints and adapters ---------------------------------------------------------------------------
def test_checkpoints_and_adapters_are_listed_and_loaded_only_by_their_owner(desktop, registry):
    from ui.chat_tab import respond
    from ui.tokenizer_tab import tokenize_view

    ckpt = make_tiny_checkpoint(desktop / "users" / "alice" / "checkpoints" / "alice-run")
    adapter = desktop / "users" / "alice" / "adapters" / "alice-lora"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": registry.default_model}))
    ckey, akey = f"ckpt:{ckpt.resolve()}", f"lora:{adapter.resolve()}"

    alice, bob = registry.for_request(ALICE), registry.for_request(BOB)
    assert {ckey, akey} <= {k for _, k in alice.choices()}
    assert [k for _, k in bob.choices()] == [registry.default_key]  # only the shared default model
    for key in (ckey, akey):
        with pytest.raises(ValueError, match="not available"):
            bob.get(key)
    assert alice.get(ckey).entry.kind == "ckpt"

    # the chat handler as Gradio calls it: bob names alice's checkpoint and gets no reply from it
    history = [{"role": "user", "content": "hi"}]
    with gradio_event(BOB):
        frames = list(respond(history, ckey, "", 0.0, 0, 1.0, 1.0, 4, 0, registry=registry, request=BOB))
    assert "Could not load this model" in frames[-1][-1]["content"] and "not available" in frames[-1][-1]["content"]
    with gradio_event(BOB):  # nor its tokenizer, in the Tokenizer tab
        assert "Could not load" in tokenize_view("hello", ckey, registry)[1]
    with gradio_event(ALICE):  # alice's own checkpoint is hers to pick
        assert registry.entry(ckey).kind == "ckpt" and registry.is_loaded(ckey)


def test_export_refuses_another_users_model(desktop, registry):
    from ui.export_panel import export_model

    ckpt = make_tiny_checkpoint(desktop / "users" / "alice" / "checkpoints" / "alice-run")
    with gradio_event(BOB):
        out = _call_or_error(export_model, f"ckpt:{ckpt.resolve()}", "f32", registry)
    assert "not available" in out
    assert not (desktop / "users" / "bob" / "exports").exists() and not (desktop / "exports").exists()


def _call_or_error(fn, *args) -> str:
    try:
        return str(fn(*args))
    except Exception as e:  # noqa: BLE001 - the handler may answer in words or raise them
        return str(e)


# ---- training runs and chats ------------------------------------------------------------------------------------
def test_a_job_started_by_a_user_keeps_its_records_in_their_folder(desktop):
    from ui.jobs import JobManager
    from ui.runs import RunRecord, list_runs, runs_dir

    jobs = JobManager()
    with gradio_event(ALICE):
        out = runs_dir("finetune").parent.parent / "adapters" / "a1"
        rec = RunRecord("finetune", "a1", str(out), {})

        go = threading.Event()

        def runner(job):
            go.wait(30)  # the handler's context is gone by now; the job's thread keeps alice's
            out.mkdir(parents=True)
            return str(out)

        job = jobs.start("finetune", "alice's secret-diary run", runner, run=rec)
    with gradio_event(BOB):  # bob learns that a job runs, not whose or what, and cannot stop it
        assert jobs.latest("finetune") is None and jobs.stop() is None and not job.stop_event.is_set()
        busy = jobs.busy_message()
        assert "Another person's" in busy and "diary" not in busy
        from ui.job_panel import poll

        assert "diary" not in poll("pretrain", jobs, None)[0] and poll("finetune", jobs, None)[3] == ""
    with gradio_event(ALICE):
        assert jobs.latest("finetune") is job and "diary" in jobs.busy_message()
    go.set()
    assert jobs.wait(job, timeout=30)
    rec_path = desktop / "users" / "alice" / "runs" / "finetune" / "a1.json"
    assert json.loads(rec_path.read_text())["status"] == "finished"
    with gradio_event(BOB):
        assert list_runs("finetune") == []
    with gradio_event(ALICE):
        assert [r.name for r in list_runs("finetune")] == ["a1"]


def test_chats_kept_in_a_shared_browser_are_shown_only_to_their_login(desktop, registry):
    from ui.chat_settings import restore_page
    from ui.chat_store import empty_store, owner_of, save_chat

    store = save_chat(empty_store(owner_of(ALICE)), [{"role": "user", "content": "my diary"},
                                                    {"role": "assistant", "content": "ok"}])
    out_alice = restore_page(None, store, registry, ALICE)
    out_bob = restore_page(None, store, registry, BOB)
    assert out_alice[3][0]["content"] == "my diary" and out_alice[5]["owner"] == "user:alice"
    assert out_bob[3] == [] and out_bob[5]["chats"] == [] and out_bob[5]["owner"] == "user:bob"
    desktop_store = save_chat(empty_store(), [{"role": "user", "content": "hello"}])
    assert restore_page(None, desktop_store, registry, None)[3][0]["content"] == "hello"  # unchanged on a desktop


# ---- a public Space: per-session scratch with a quota -----------------------------------------------------------
def test_space_sessions_get_scratch_folders_with_a_quota_removed_at_the_end(space, tmp_path, monkeypatch):
    from ui import users
    from ui.documents_tab import collection_names, documents_rows, ingest_files

    s1, s2 = gr.Request(session_hash="s1"), gr.Request(session_hash="s2")
    ws1 = users.workspace(s1)
    assert ws1.kind == "session" and ws1.root == space / "sessions" / "s1" and ws1.quota_bytes == 200_000_000
    _, _, rows = ingest_files([_doc(tmp_path, "a.txt", "The blue door opens at noon.")], "mine", request=s1)
    assert collection_names(s1) == ["mine"] and collection_names(s2) == []

    used = ws1.usage_bytes()
    monkeypatch.setenv("STUDIO_SESSION_QUOTA_MB", str((used + 3000) / 1e6))
    big = _doc(tmp_path, "big.txt", "word " * 2000)  # 10 kB: more than the room left
    with pytest.raises(users.QuotaExceeded, match="scratch space is full.*Nothing already stored was removed"):
        ingest_files([big], "mine", request=s1)
    # a small file fits the check before, but its index does not: it is taken back out, the rest stays
    results, summary, rows2 = ingest_files([_doc(tmp_path, "b.txt", "The red door stays shut. " * 40)], "mine",
                                           request=s1)
    assert "scratch space is full" in summary and "not kept" in results[0][2]
    assert [r[1] for r in rows2] == ["a.txt"] == [r[1] for r in documents_rows("mine", s1)]

    assert users.end_session(s1) and not ws1.root.exists()
    assert not users.end_session(ALICE)  # a login's folder outlives its browser tab
    old = space / "sessions" / "stale"
    old.mkdir(parents=True)
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    assert users.sweep_sessions() == 1 and not old.exists()


def test_session_isolation_can_be_forced_or_switched_off(desktop, monkeypatch):
    from ui.users import session_quota_bytes, shared_deployment, workspace

    assert not shared_deployment()
    monkeypatch.setenv("STUDIO_ISOLATION", "sessions")
    assert workspace(gr.Request(session_hash="z")).kind == "session"
    monkeypatch.setenv("SPACE_ID", "x/y")
    monkeypatch.setenv("STUDIO_ISOLATION", "off")
    assert workspace(gr.Request(session_hash="z")).root == desktop
    with pytest.raises(ValueError, match="STUDIO_SESSION_QUOTA_MB"):
        session_quota_bytes({"STUDIO_SESSION_QUOTA_MB": "lots"})


# ---- the API: per-user keys -------------------------------------------------------------------------------------
def test_api_keys_give_each_user_only_their_own_models_and_collections(desktop, registry, tmp_path):
    from api import create_api
    from rag import Collection
    from ui.users import parse_api_keys, user_workspace

    keys = parse_api_keys({"STUDIO_API_KEYS": "alice:key-a, bob:key-b", "STUDIO_API_KEY": "admin"})
    assert keys == {"key-a": "alice", "key-b": "bob", "admin": None}
    for bad in ("alice", "alice:", ":k", "alice:k,bob:k"):
        with pytest.raises(ValueError, match="STUDIO_API_KEYS entry"):
            parse_api_keys({"STUDIO_API_KEYS": bad})

    make_tiny_checkpoint(user_workspace("alice").root / "checkpoints" / "alice-run")
    col = Collection.open("notes", data_dir=user_workspace("alice").rag_dir)
    assert not col.ingest([_doc(tmp_path, "a.txt", "Alice's locker code is 9931-KESTREL.")]).errors

    app = create_api(registry, api_key="admin", require_key=True, api_keys={"key-a": "alice", "key-b": "bob"})
    c = TestClient(app)

    def get(key: str, path: str):
        return c.get(path, headers={"Authorization": f"Bearer {key}"})

    def post(key: str, path: str, body: dict):
        return c.post(path, json=body, headers={"Authorization": f"Bearer {key}"})

    ids = {k: [m["id"] for m in get(k, "/v1/models").json()["data"]] for k in ("key-a", "key-b", "admin")}
    assert "alice-run" in ids["key-a"] and "alice-run" not in ids["key-b"] and "alice-run" not in ids["admin"]
    r = post("key-b", "/v1/completions", {"model": "alice-run", "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    r = post("key-a", "/v1/completions", {"model": "alice-run", "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1

    ask = {"messages": [{"role": "user", "content": "What is the locker code?"}], "collection": "notes"}
    assert "9931-KESTREL" in post("key-a", "/v1/chat/completions", ask).json()["choices"][0]["message"]["content"]
    for key in ("key-b", "admin"):
        r = post(key, "/v1/chat/completions", ask)
        assert r.status_code == 404 and r.json()["error"]["param"] == "collection"
    r = post("nope", "/v1/chat/completions", ask)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert c.get("/v1/models").status_code == 401


def test_single_api_key_keeps_working_and_acts_as_the_one_login(desktop, registry, monkeypatch):
    from api import build_app
    from ui.settings import Settings, parse_settings

    monkeypatch.setenv("STUDIO_API_KEY", "only")
    make_tiny_checkpoint(desktop / "users" / "ada" / "checkpoints" / "ada-run")
    settings = Settings(host="127.0.0.1", user="ada", password="pw", preload=False)
    app, _ = build_app(settings, registry, with_ui=False)
    ids = [m["id"] for m in TestClient(app).get("/v1/models", headers={"Authorization": "Bearer only"})
           .json()["data"]]
    assert "ada-run" in ids
    # several logins: STUDIO_USERS, each with a private folder
    s = parse_settings([], env={"STUDIO_USERS": "alice:pw1,bob:pw2"})
    assert s.auth == [("alice", "pw1"), ("bob", "pw2")]
    with pytest.raises(SystemExit, match="STUDIO_USERS entry 2"):
        parse_settings([], env={"STUDIO_USERS": "alice:pw1,bob"})


def test_a_space_ui_wires_session_cleanup_and_lists_nobodys_collections_at_build(space, registry, tmp_path):
    from ui import create_ui
    from ui.documents_tab import ingest_files
    from ui.settings import Settings

    ingest_files([_doc(tmp_path, "x.txt", "Someone's private note about parsnips.")], "private-notes",
                 request=gr.Request(session_hash="other"))
    demo = create_ui(Settings(preload=False), registry)
    events = {t[1] for fn in demo.fns.values() for t in fn.targets}
    assert "unload" in events
    config = json.dumps(demo.config, default=str)
    assert "private-notes" not in config  # the page as built names no one's collection
