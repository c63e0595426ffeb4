"""The OpenAI-compatible API, driven by the official `openai` client over real HTTP on 127.0.0.1: models, chat
(plain and streamed), completions, embeddings, the collection extension, every error the issue lists, API keys,
a client that disconnects mid-stream, and the UI + API on one port."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ROOT

openai = pytest.importorskip("openai")
KEY = "sk-test-key"
MODEL = "smollm2-135m-instruct"
_HOMES: dict[str, Path] = {}  # server url -> the folder of its document collections
_REGISTRIES: dict[str, object] = {}  # server url -> its model registry (the same loaded models)


def _server_home(url: str) -> Path:
    return _HOMES[url]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The API on a real port with the bundled model, a tiny character-level checkpoint and a document collection."""
    import uvicorn

    from api import create_api
    from rag import Collection
    from tests.test_app import make_tiny_checkpoint
    from ui.models import ModelRegistry

    home = tmp_path_factory.mktemp("api_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLM_STUDIO_HOME", str(home))
        make_tiny_checkpoint(home / "checkpoints" / "tiny")
        col = Collection.open("notes", data_dir=home)
        assert not col.ingest([ROOT / "tests" / "fixtures" / "rag_eval" / "docs" / "lab-note.md"]).errors
        registry = ModelRegistry(MODEL, home=home)
        app = create_api(registry, api_key=KEY, require_key=True, rag_dir=home)
        port = _free_port()
        srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not srv.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the API server did not start"
            time.sleep(0.05)
        _HOMES[f"http://127.0.0.1:{port}/v1"] = home
        _REGISTRIES[f"http://127.0.0.1:{port}/v1"] = registry
        yield f"http://127.0.0.1:{port}/v1"
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=120)


def ask(client, content: str, **kw):
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kw)


def test_models_lists_the_default_model_and_checkpoints(client):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == MODEL and "tiny" in ids


def test_chat_completion_answers_and_counts_tokens(client):
    r = ask(client, "What is the capital of France? Answer in one word.", max_tokens=8)
    text = r.choices[0].message.content
    assert "Paris" in text and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason in ("stop", "length") and r.model == MODEL


def test_streamed_chat_equals_the_plain_answer_and_ends_with_usage(client):
    q = "Name three colours."
    plain = ask(client, q, max_tokens=16)
    chunks = list(ask(client, q, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_completions_stop_and_seed(client):
    r = client.completions.create(model=MODEL, prompt="One, two, three, four,", max_tokens=12, temperature=0,
                                  stop=[" six"])
    text = r.choices[0].text
    assert "five" in text and "six" not in text and r.choices[0].finish_reason == "stop"
    a, b = (client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=1.0,
                                      seed=7).choices[0].text for _ in range(2))
    assert a == b  # the same seed samples the same text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="One, two, three, four,", max_tokens=12, temperature=0, stop=[" six"], stream=True))
    assert streamed == text


def test_a_character_level_checkpoint_completes_but_cannot_chat(client):
    r = client.completions.create(model="tiny", prompt="hello", max_tokens=5, temperature=0)
    assert r.usage.completion_tokens == 5
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])


def test_embeddings_are_unit_vectors_that_rank_paraphrases_close(client):
    r = client.embeddings.create(model="all-MiniLM-L6-v2", input=["The cat sits on the mat.",
                                                                  "A cat is sitting on a rug.",
                                                                  "Interest rates rose in March."])
    v = np.array([d.embedding for d in r.data])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3 and r.usage.prompt_tokens > 10


def test_collection_extension_answers_from_documents_with_sources(server):
    body = {"model": MODEL, "collection": "notes",
            "messages": [{"role": "user", "content": "Where is the spare power supply kept?"}]}
    r = httpx.post(f"{server}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    out = r.json()
    assert r.status_code == 200 and "cabinet B4" in out["choices"][0]["message"]["content"]
    assert out["abstained"] is False and out["sources"][0]["source"] == "lab-note.md"
    r = httpx.post(f"{server}/chat/completions", json={**body, "collection": "nope"},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 404 and "no document collection named 'nope'" in r.json()["error"]["message"]


@pytest.mark.parametrize(("kw", "param", "words"), [
    ({"max_tokens": 0}, "max_tokens", "between 1 and"),
    ({"max_tokens": 10**9}, "max_tokens", "between 1 and"),
    ({"n": 2}, "n", "Only n=1"),
    ({"temperature": -1}, "temperature", "greater than or equal to 0"),
    ({"stop": [""]}, "stop", "non-empty"),
])
def test_bad_parameters_are_answered_in_words_with_their_field(client, kw, param, words):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "hi", **kw)
    err = e.value.body
    assert e.value.status_code == 400 and err["param"] == param and words in err["message"]


def test_bad_messages_models_and_prompts(client):
    with pytest.raises(openai.BadRequestError, match="at least one message"):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError, match="'wizard' is not one of"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as e:  # a 1 MB prompt: refused before tokenizing
        client.completions.create(model=MODEL, prompt="word " * 200_000, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="context is 8,192 tokens"):
        client.completions.create(model=MODEL, prompt="word " * 9000, max_tokens=4)


def test_malformed_json_and_wrong_types(server):
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(f"{server}/chat/completions", content=b"{not json", headers=auth, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["message"] == "The request body is not valid JSON."
    r = httpx.post(f"{server}/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": "lots"},
                   headers=auth, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_api_keys(server):
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
        openai.OpenAI(base_url=server, api_key="sk-wrong", max_retries=0).models.list()
    r = httpx.get(f"{server}/models", timeout=30)
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"]


def test_a_server_beyond_loopback_without_a_key_refuses_every_request():
    from fastapi.testclient import TestClient

    from api import create_api, key_policy

    assert key_policy("0.0.0.0", False, env={}) == (None, True)
    assert key_policy("127.0.0.1", False, env={}) == (None, False)
    assert key_policy("127.0.0.1", True, env={"STUDIO_API_KEY": "k"}) == ("k", True)
    r = TestClient(create_api(registry=None, api_key=None, require_key=True)).get("/v1/models")
    assert r.status_code == 401 and "STUDIO_API_KEY" in r.json()["error"]["message"]


def _generation_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "api-generation"]


def test_a_client_that_disconnects_mid_stream_stops_the_generation(server):
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 4000, "stream": True,
            "temperature": 0}
    with httpx.stream("POST", f"{server}/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["choices"][0]["text"] is not None
        assert _generation_threads()  # it is decoding for us now
    deadline = time.monotonic() + 30  # closed: the thread must end long before 4,000 tokens
    while _generation_threads():
        assert time.monotonic() < deadline, "the generation thread kept running after the client left"
        time.sleep(0.1)


def test_the_app_serves_the_ui_and_the_api_on_one_port(registry):
    from fastapi.testclient import TestClient

    from api import build_app
    from ui.settings import Settings

    app, demo = build_app(Settings(preload=False), registry)
    with TestClient(app) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == Path(registry.default_model).name
        page = c.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
    assert demo.studio_registry is registry


def _readme_api_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("## OpenAI-compatible API", 1)[1].split("\n## ", 1)[0]


def test_readme_python_example_runs_against_the_api(server, capsys, monkeypatch):
    import re

    code = re.search(r"```python\n(.*?)```", _readme_api_section(), flags=re.S).group(1)
    assert "http://127.0.0.1:7860/v1" in code
    real = openai.OpenAI
    monkeypatch.setattr(openai, "OpenAI", lambda **kw: real(**{**kw, "base_url": server, "api_key": KEY}))
    exec(compile(code, "README.md", "exec"), {})  # the example as written, pointed at the test server
    out = capsys.readouterr().out
    assert MODEL in out and "Paris" in out


def test_readme_serve_command_serves_the_api(tmp_path):
    import os
    import re
    import subprocess

    (line,) = re.findall(r"^\.venv/bin/python -m llm_core serve.*$", _readme_api_section(), flags=re.M)
    port = _free_port()
    env = dict(os.environ, LLM_STUDIO_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    env.pop("STUDIO_API_KEY", None)
    python = ROOT / ".venv" / "bin" / "python"
    cmd = f"{line} --port {port}" if python.exists() else f"{line.replace('.venv/bin/python', 'python')} --port {port}"
    proc = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "`llm_core serve` did not answer within 120 s"
                time.sleep(0.5)
        assert r.status_code == 200 and r.json()["data"][0]["id"] == MODEL
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 404  # the API alone, no UI
    finally:
        proc.terminate()
        proc.wait(timeout=15)


# ---- an OpenAI-compatible server as the model (tested against our own API on loopback) -------------------------
def test_remote_llm_streams_from_an_openai_compatible_server(server):
    from api.remote import RemoteError, RemoteLLM, RemoteStats

    llm = RemoteLLM(server, MODEL, KEY).check()
    assert MODEL in llm.models()
    st = RemoteStats()
    text = "".join(llm.stream([{"role": "user", "content": "What is the capital of France? One word."}], 8,
                              stats=st, temperature=0))
    assert "Paris" in text and st.prompt_tokens > 10 and 0 < st.new_tokens <= 8 and st.finish_reason
    stop = threading.Event()
    stop.set()  # set before the first piece: the stream ends after it
    assert len(list(llm.stream([{"role": "user", "content": "Count to fifty."}], 200, stop))) == 1
    with pytest.raises(RemoteError, match="refused the API key"):
        RemoteLLM(server, MODEL, "sk-wrong").check()
    with pytest.raises(RemoteError, match="has no model 'gpt-9'"):
        RemoteLLM(server, "gpt-9", KEY).check()
    with pytest.raises(RemoteError, match="is the server running"):
        RemoteLLM(f"http://127.0.0.1:{_free_port()}/v1", MODEL, KEY).check()
    with pytest.raises(RemoteError, match="must start with http"):
        RemoteLLM("localhost:8080", MODEL)
    with pytest.raises(RemoteError, match="answered 400: .*max_tokens"):
        list(llm.stream([{"role": "user", "content": "hi"}], 0))


def test_documents_answer_with_a_remote_model_from_the_cli(server, capsys, monkeypatch):
    from rag.__main__ import main, parse_args

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    data_dir = _server_home(server)
    rc = main(parse_args(["query", "--collection", "notes", "--data-dir", str(data_dir), "--mode",
                          "generative", "--llm-url", server, "--llm", MODEL, "--max-new-tokens", "24", "--json",
                          "Where is the spare power supply kept?"]))
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["answer_mode"] == "generative" and out["answer"]
    assert out["sources"][0]["source"].endswith("lab-note.md") and out["citations"]  # verified or quoted [n]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    rc = main(parse_args(["query", "--collection", "notes", "--data-dir", str(data_dir), "--mode",
                          "generative", "--llm-url", server, "--llm", MODEL, "Where is it kept?"]))
    assert rc != 0 and "refused the API key" in capsys.readouterr().err


def test_chat_tab_replies_through_a_remote_server_without_loading_a_local_model(server, registry):
    from ui.chat_tab import respond
    from ui.remote_panel import connect

    state, status = connect(server, "sk-wrong", MODEL, True)
    assert "Not connected" in status and "refused the API key" in status
    state, status = connect(server, KEY, MODEL, True)
    assert state["on"] and "Replies come from" in status
    history = [{"role": "user", "content": "What is the capital of France? One word."}]
    frames = list(respond(history, None, "", 0.0, 0, 1.0, 1.0, 8, -1, registry=registry, remote=state))
    last = frames[-1][-1]["content"]
    assert "Paris" in last and "tokens" in last and f"{MODEL} @ {server}" in last
    assert not registry.is_loaded(None)  # the local model was never loaded


def test_documents_tab_answers_through_a_remote_server_without_loading_a_local_model(server, monkeypatch,
                                                                                      tmp_path):
    from rag import Collection
    from ui.documents_tab import ask as ask_documents
    from ui.models import ModelRegistry
    from ui.remote_panel import connect

    monkeypatch.setenv("LLM_STUDIO_HOME", str(tmp_path))  # the desktop's own folder, with its own "notes"
    note = ROOT / "tests" / "fixtures" / "rag_eval" / "docs" / "lab-note.md"
    assert not Collection.open("notes", data_dir=tmp_path / "rag").ingest([note]).errors
    local = ModelRegistry(MODEL, home=tmp_path)

    def no_local_model(*a, **kw):
        raise AssertionError("the local model was asked for")

    monkeypatch.setattr(local, "get", no_local_model)
    state, _ = connect(server, KEY, MODEL, True)
    frames = list(ask_documents("Where is the spare power supply kept?", "notes", "hybrid", 3, "generative", None,
                                local, None, state))
    text, rows = frames[-1]
    assert rows and rows[0][1].endswith("lab-note.md") and "[1]" in text  # cited to the note, verified or quoted
    bad = dict(state, key="sk-wrong")
    with pytest.raises(Exception, match="refused the API key"):
        list(ask_documents("Where is it kept?", "notes", "hybrid", 3, "generative", None, local, None, bad))


def test_more_streams_than_the_server_decodes_at_once_get_429(server, monkeypatch):
    from api import openai_api

    monkeypatch.setattr(openai_api, "_SLOTS", threading.BoundedSemaphore(1))
    monkeypatch.setattr(openai_api, "MAX_GENERATIONS", 1)
    body = {"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 400, "stream": True, "temperature": 0}
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{server}/completions", json=body, headers=auth, timeout=60) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # the one slot is decoding
        busy = httpx.post(f"{server}/completions", json={**body, "stream": False}, headers=auth, timeout=60)
        if busy.status_code != 429:  # say why: did the first stream end (or fail) before its 400 tokens?
            rest = [line for line in lines if line.startswith("data: ")]
            pytest.fail(f"the second request got {busy.status_code}; the first stream's last events: {rest[-3:]}")
        assert "already answering 1 requests" in busy.json()["error"]["message"]
    deadline = time.monotonic() + 30  # the client left: the slot comes back
    while not openai_api._SLOTS.acquire(blocking=False):
        assert time.monotonic() < deadline, "the generation slot was never released"
        time.sleep(0.1)
    openai_api._SLOTS.release()


# ---- logprobs: the token view's numbers -------------------------------------------------------------------------
def _token_view(server, question: str, n: int):
    """llm_core's own token view of the greedy reply (a ChatSession recording while it generates)."""
    from llm_core.generation.chat import ChatSession
    from llm_core.generation.generate import GenerationConfig

    lm = _REGISTRIES[server].get(None)
    session = ChatSession(lm.model, lm.tokenizer, config=GenerationConfig(max_new_tokens=n, temperature=0),
                          record_tokens=True)
    with lm.generating():
        reply = session.send(question)
    return reply, session.last_view


def test_chat_logprobs_are_the_token_views_numbers(client, server):
    q = "What is the capital of France? Answer in one word."
    r = ask(client, q, max_tokens=6, logprobs=True, top_logprobs=3)
    reply, view = _token_view(server, q, 6)
    content = r.choices[0].logprobs.content
    assert r.choices[0].message.content == reply and len(content) == len(view.steps) == r.usage.completion_tokens
    assert "".join(c.token for c in content) == reply
    for c, s in zip(content, view.steps):
        assert c.token == s.text and bytes(c.bytes) == s.token_bytes
        assert c.logprob == pytest.approx(s.logprob, abs=1e-4) and c.logprob <= 0
        assert [t.token for t in c.top_logprobs] == s.top_texts()[:3]
        assert [t.logprob for t in c.top_logprobs] == pytest.approx(s.top_logprobs[:3], abs=1e-4)
        assert c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob >= c.top_logprobs[2].logprob
    assert content[0].logprob == pytest.approx(content[0].top_logprobs[0].logprob)  # greedy: the top token
    assert ask(client, q, max_tokens=4).choices[0].logprobs is None  # only when asked for
    # streamed: the same tokens and numbers, spread over the chunks
    chunks = list(ask(client, q, max_tokens=6, logprobs=True, top_logprobs=3, stream=True))
    streamed = [c for ch in chunks if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
    assert [c.token for c in streamed] == [c.token for c in content]
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in content], abs=1e-6)


def test_legacy_completion_logprobs(client):
    prompt = "One, two, three, four,"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    text = r.choices[0].text
    assert "".join(lp.tokens) == text and len(lp.token_logprobs) == 5 == len(lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    for tok, lpv, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 2 and top[tok] == pytest.approx(lpv)  # greedy: the token is the most likely one
    streamed = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0, logprobs=2,
                                              stream=True))
    toks = [t for c in streamed if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    offs = [o for c in streamed if c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert toks == lp.tokens and offs == lp.text_offset


@pytest.mark.parametrize(("kw", "param", "words"), [
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "between 0 and 20"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs", "between 0 and 20"),
    ({"top_logprobs": 3}, "top_logprobs", "needs logprobs"),
    ({"logprobs": False, "top_logprobs": 3}, "top_logprobs", "needs logprobs"),
])
def test_bad_logprobs_are_refused_in_words(client, kw, param, words):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "hi", max_tokens=2, **kw)
    assert e.value.status_code == 400 and e.value.body["param"] == param and words in e.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="from 0 to 20"):
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2, logprobs=21)


# ---- the API itself answering through an external backend (STUDIO_LLM_URL; our own API on loopback) -------------
def _serving(app):
    """``app`` on a real loopback port in a thread: (base url, stop())."""
    import uvicorn

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the front server did not start"
        time.sleep(0.05)

    def stop():
        srv.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{port}/v1", stop


class _NoLocalModels:
    """A registry with nothing in it: whatever the front answers came from the backend."""

    default_model = "none"

    def entries(self):
        return []

    def get(self, key=None):
        raise AssertionError("a local model was asked for")


def test_the_api_answers_through_an_external_backend(server, client):
    from api import Backend, create_api

    backend = Backend.from_settings(env={"STUDIO_LLM_URL": server + "/", "STUDIO_LLM_MODEL": MODEL,
                                         "STUDIO_LLM_KEY": KEY})
    front_url, stop = _serving(create_api(_NoLocalModels(), api_key="sk-front", require_key=True, backend=backend))
    try:
        front = openai.OpenAI(base_url=front_url, api_key="sk-front", max_retries=0, timeout=120)
        assert [m.id for m in front.models.list()] == [MODEL]
        q = "What is the capital of France? One word."
        plain = ask(front, q, max_tokens=8)
        assert plain.choices[0].message.content == ask(client, q, max_tokens=8).choices[0].message.content
        assert "Paris" in plain.choices[0].message.content and 0 < plain.usage.completion_tokens <= 8
        chunks = list(ask(front, q, max_tokens=8, stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
            plain.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
        done = front.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=3, temperature=0)
        assert done.choices[0].text and done.usage.completion_tokens <= 3
        # no model named: the backend's; our own key still guards the front
        r = httpx.post(f"{front_url}/chat/completions", json={"messages": [{"role": "user", "content": q}],
                                                               "max_tokens": 4}, headers={"Authorization":
                                                                                          "Bearer sk-front"},
                       timeout=120)
        assert r.status_code == 200 and r.json()["model"] == MODEL
        assert httpx.get(f"{front_url}/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 401
        # the backend refuses the request: its status, its field, its words, and whose words they are
        with pytest.raises(openai.BadRequestError) as e:
            ask(front, q, max_tokens=0)
        err = e.value.body
        assert err["param"] == "max_tokens" and "model backend at" in err["message"] and "max_tokens must be" in \
            err["message"]
        with pytest.raises(openai.BadRequestError, match=r"model backend .* refused the request \(400\): max_tok"):
            ask(front, q, max_tokens=0, stream=True)  # refused before any event: a plain error, not a broken stream
        # a client that leaves mid-stream: the front closes its backend connection, and the backend stops decoding
        body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 4000, "stream": True, "temperature": 0}
        with httpx.stream("POST", f"{front_url}/completions", json=body, timeout=60,
                          headers={"Authorization": "Bearer sk-front"}) as r:
            assert next(line for line in r.iter_lines() if line.startswith("data: "))
            assert _generation_threads()  # the backend (in this process) decodes for us now
        deadline = time.monotonic() + 30
        while _generation_threads():
            assert time.monotonic() < deadline, "the backend kept decoding after the client left the front"
            time.sleep(0.1)
    finally:
        stop()


def test_backend_errors_come_back_openai_style_in_words(server):
    from fastapi.testclient import TestClient

    from api import Backend, create_api

    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [(Backend(server, MODEL, "sk-wrong"), "refused this server's key (STUDIO_LLM_KEY)",
              "backend_auth_failed"),
             (Backend(f"http://127.0.0.1:{_free_port()}/v1", MODEL), "is unreachable", "backend_unreachable")]
    for backend, words, code in cases:
        with TestClient(create_api(_NoLocalModels(), backend=backend)) as c:
            for stream in (False, True):
                r = c.post("/v1/chat/completions", json={**body, "stream": stream})
                err = r.json()["error"]
                assert r.status_code == 502 and words in err["message"] and err["code"] == code
                assert err["type"] == "server_error" and backend.url in err["message"]
    with TestClient(create_api(_NoLocalModels(), backend=Backend(server, "gpt-9", KEY))) as c:
        r = c.post("/v1/chat/completions", json={**body, "model": "gpt-9"})
        assert r.status_code == 404 and "'gpt-9' does not exist" in r.json()["error"]["message"]
    # set up halfway: refused at start-up in words
    with pytest.raises(ValueError, match="STUDIO_LLM_MODEL is set but STUDIO_LLM_URL is not"):
        Backend.from_settings(env={"STUDIO_LLM_MODEL": MODEL})
    with pytest.raises(ValueError, match="STUDIO_LLM_URL is set but STUDIO_LLM_MODEL is not"):
        Backend.from_settings(env={"STUDIO_LLM_URL": server})
    with pytest.raises(ValueError, match="must start with http"):
        Backend.from_settings("localhost:8080/v1", MODEL, env={})
    assert Backend.from_settings(env={}) is None


@pytest.mark.slow
def test_serve_flags_name_the_backend(server, tmp_path):
    import os
    import subprocess
    import sys

    from llm_core.__main__ import parse_args

    args = parse_args(["serve", "--llm-url", server, "--llm-model", MODEL])
    assert (args.llm_url, args.llm_model, args.llm_key) == (server, MODEL, None)
    port = _free_port()
    env = dict(os.environ, LLM_STUDIO_HOME=str(tmp_path), HF_HUB_OFFLINE="1", STUDIO_LLM_KEY=KEY)
    env.pop("STUDIO_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "llm_core", "serve", "--port", str(port), "--model", "none-here",
                             "--llm-url", server, "--llm-model", MODEL], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "`llm_core serve --llm-url` did not answer within 120 s"
                time.sleep(0.5)
        assert models["data"][0]["id"] == MODEL and models["data"][0]["owned_by"] == "external-backend"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120,
                       json={"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    from api import serve_main

    with pytest.raises(SystemExit, match="STUDIO_LLM_MODEL is not"):  # set up halfway: refused before serving
        serve_main(parse_args(["serve", "--llm-url", server]))
