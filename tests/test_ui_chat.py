"""Chat tab handlers without a browser: refusing bad input without touching the chat, the model's own defaults in
the controls, the status line, and chats/settings kept in (untrusted) browser storage. Models are tiny
checkpoints written to a tmp LLM_STUDIO_HOME; nothing here generates more than a few tokens."""

from __future__ import annotations

import json

import pytest

from tests.test_app import make_tiny_checkpoint

SKIP = {"__type__": "update"}  # gr.skip(): the output is left as it is
GOOD = (0.2, 0, 0.9, 1.0, 32, -1)  # temperature, top-k, top-p, repetition penalty, max new tokens, seed


HISTORY = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello\n\n<sub>⚡ 3 tokens</sub>"}]


# ---- refusing bad input: a warning, the chat and the typed text unchanged ------------------------------------------
def test_empty_message_warns_and_keeps_the_chat():
    from ui.chat_tab import add_user_message

    with pytest.warns(UserWarning, match="Type a message first"):
        out = add_user_message("   ", HISTORY, *GOOD)
    assert out == (SKIP, SKIP, False)  # box, chat untouched; the reply step does nothing


@pytest.mark.parametrize("field,value,expect", [
    ("seed", 1e30, "Seed must be a whole number from 0 to 2^63 - 1 (or -1 for random)"),
    ("seed", -7, "Seed must be a whole number"),
    ("seed", 2.5, "Seed must be a whole number, got 2.5"),
    ("temperature", None, "Temperature is empty"),
    ("top_p", 0.0, "Top-p must be in (0, 1]"),
    ("max_new_tokens", float("inf"), "Max new tokens must be a finite number"),
])
def test_bad_setting_is_refused_in_words(field, value, expect):
    from ui.chat_settings import SAMPLING_NAMES
    from ui.chat_tab import add_user_message, drop_last_reply

    vals = list(GOOD)
    vals[SAMPLING_NAMES.index(field)] = value
    with pytest.warns(UserWarning) as rec:
        out = add_user_message("What is the capital of France?", HISTORY, *vals)
    assert out == (SKIP, SKIP, False)
    msg = str(rec[0].message)
    assert expect in msg and "Overflow" not in msg and "Error" not in msg
    with pytest.warns(UserWarning, match=expect.split(" ")[0]):
        assert drop_last_reply(HISTORY, *vals) == (SKIP, False)  # regenerate checks the same


def test_good_message_and_seed_pass():
    from ui.chat_settings import sampling_config
    from ui.chat_tab import add_user_message

    box, hist, go = add_user_message(" Paris? ", HISTORY, 0.2, 0, 0.9, 1.0, 32, 2**63 - 1)
    assert (box, go) == ("", True) and hist[-1] == {"role": "user", "content": "Paris?"}
    assert hist[1]["content"] == "hello"  # the stats line is not sent back to the model
    assert sampling_config(*GOOD).seed is None and sampling_config(0.2, 0, 0.9, 1.0, 32, 5).seed == 5


def test_nothing_to_regenerate_warns():
    from ui.chat_tab import drop_last_reply

    with pytest.warns(UserWarning, match="Nothing to regenerate"):
        assert drop_last_reply([], *GOOD) == (SKIP, False)


# ---- the model's own defaults -------------------------------------------------------------------------------------
def test_default_values_are_the_models_own():
    from llm_core.generation.chat import ChatDefaults
    from llm_core.generation.generate import GenerationConfig
    from ui.chat_settings import default_values

    smol = ChatDefaults("You are a helpful AI assistant named SmolLM, trained by Hugging Face",
                        GenerationConfig(temperature=0.2, top_p=0.9, top_k=0, repetition_penalty=1.0))
    v = default_values(smol)
    assert v == {"system": smol.system, "temperature": 0.2, "top_k": 0, "top_p": 0.9, "repetition_penalty": 1.0,
                 "max_new_tokens": 256, "seed": -1}
    odd = default_values(ChatDefaults(None, GenerationConfig(temperature=5.0, top_k=999, repetition_penalty=0.5,
                                                             seed=3)))
    assert odd["system"] == "" and (odd["temperature"], odd["top_k"], odd["repetition_penalty"]) == (2.0, 200, 1.0)
    assert odd["seed"] == 3  # clamped into the sliders' ranges


def test_status_tick_fills_the_defaults_once_the_model_has_loaded(registry):
    from ui.chat_tab import _apply_defaults, _status_tick

    key = registry.default_key
    first = _status_tick(key, None, registry)
    assert "loads when you send" in first[0] and first[1]["active"] is True
    assert first[2:] == [SKIP] * 8  # nothing known yet: controls untouched
    registry.get(key)
    status, timer, system, temp, *_rest, shown = _status_tick(key, None, registry)
    assert "tiny" in status and "ready" in status and timer["active"] is False
    assert (system, temp, shown) == ("", 0.7, key)  # a char checkpoint has no chat defaults: ours
    again = _status_tick(key, key, registry)  # already shown: the person's edits are not overwritten
    assert again[2:] == [SKIP] * 8
    applied = _apply_defaults(key, registry)  # "Reset to the model's defaults"
    assert applied[1] == "" and applied[2] == 0.7 and applied[-1] == key


def test_missing_model_defaults_warn_and_keep_the_controls(registry):
    from ui.chat_tab import _apply_defaults

    with pytest.warns(UserWarning, match="Could not load this model"):
        out = _apply_defaults("ckpt:/nonexistent/model", registry)
    assert out[1:] == [SKIP] * 8


# ---- status line says what is selected -----------------------------------------------------------------------------
def test_status_names_the_selected_model_and_its_kind(registry, home):
    make_tiny_checkpoint(home / "checkpoints" / "second", seed=1)
    ad = home / "adapters" / "greeter"
    ad.mkdir(parents=True)
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": registry.default_model}))
    keys = {e.ref.rsplit("/", 1)[-1]: e.key for e in registry.entries()}
    assert "**tiny** (default model)" in registry.status_markdown(None)
    second = registry.status_markdown(keys["second"])
    assert "**second** (pretrained checkpoint)" in second and "Default" not in second
    assert "**greeter** (LoRA adapter on tiny)" in registry.status_markdown(keys["greeter"])
    registry.get(keys["second"])
    assert registry.status_markdown(keys["second"]).startswith("✅ **second** (pretrained checkpoint) ready")


# ---- chats and settings in browser storage ----------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [None, "garbage", 42, [], {"v": 99}, {"v": 1, "chats": "x", "current": 5},
                                 {"v": 1, "chats": [None, {"id": 3}, {"id": "a", "messages": "no"},
                                                    {"id": "b", "messages": [{"role": "system", "content": 1}]}]}])
def test_broken_stored_chats_are_ignored(raw):
    from ui.chat_store import chat_choices, parse_store

    store = parse_store(raw)
    assert store["chats"] == [] and chat_choices(store) == [] and isinstance(store["current"], str)


def test_chats_are_saved_listed_reopened_and_capped():
    from ui.chat_store import MAX_CHATS, chat_choices, open_chat, parse_store, save_chat

    store = save_chat(None, [{"role": "user", "content": "What is the capital of France?\nPlease."},
                             {"role": "assistant", "content": "Paris."}], now=1.0)
    first = store["current"]
    assert chat_choices(store) == [("What is the capital of France? Please.", first)]
    store, msgs = open_chat(store, "unknown-id")  # "New chat"-like: a fresh empty chat
    assert msgs == [] and store["current"] != first
    store = save_chat(store, [{"role": "user", "content": "x" * 100}], now=2.0)
    assert [t for t, _ in chat_choices(store)][0] == "x" * 47 + "…" and len(chat_choices(store)) == 2
    store, msgs = open_chat(json.loads(json.dumps(store)), first)  # survives the browser's JSON round trip
    assert store["current"] == first and msgs[1]["content"] == "Paris."
    store = save_chat(store, [])  # a cleared chat is dropped from the list
    assert [i for _, i in chat_choices(store)] == [chat_choices(parse_store(store))[0][1]] and len(store["chats"]) == 1
    for i in range(MAX_CHATS + 5):
        store, _ = open_chat(store, None)
        store = save_chat(store, [{"role": "user", "content": f"q{i}"}], now=10.0 + i)
    assert len(store["chats"]) == MAX_CHATS and store["chats"][0]["title"] == f"q{MAX_CHATS + 4}"


def test_stored_settings_keep_only_what_parses():
    from ui.chat_settings import stored_settings
    from ui.chat_store import parse_settings

    good = stored_settings("base:m", "Be brief.", 0.2, 0, 0.9, 1.0, 64, 42, False)
    assert good == {"model": "base:m", "system": "Be brief.", "temperature": 0.2, "top_k": 0, "top_p": 0.9,
                    "repetition_penalty": 1.0, "max_new_tokens": 64, "seed": 42, "use_adapter": False}
    bad = parse_settings({"temperature": 99, "top_k": True, "top_p": "0.9", "max_new_tokens": 8.5, "seed": 1e30,
                          "system": 5, "use_adapter": "yes", "model": None})
    assert bad == {}
    assert parse_settings("not a dict") == {}


def test_restore_page_brings_back_the_chat_and_settings(registry):
    from ui.chat_settings import restore_page, stored_settings
    from ui.chat_store import save_chat

    key = registry.default_key
    store = save_chat(None, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}])
    saved = stored_settings(key, "Be brief.", 0.3, 5, 0.8, 1.1, 64, 7, True)
    model, adapter, status, chat, chats, store2, *controls, shown = restore_page(saved, store, registry)
    assert model["value"] == key and adapter["visible"] is False
    assert chat == store["chats"][0]["messages"] and chats["value"] == store["current"]
    assert controls == ["Be brief.", 0.3, 5, 0.8, 1.1, 64, 7] and shown == key
    assert not registry.is_loaded(key)  # restoring loads no model


def test_restore_page_survives_garbage_and_a_deleted_model(registry):
    from ui.chat_settings import restore_page

    out = restore_page({"model": "ckpt:/gone", "temperature": 0.1}, "{not json", registry)
    model, _adapter, _status, chat, chats, store, *controls, shown = out
    assert model["value"] == registry.default_key and chat == [] and chats["choices"] == []
    assert controls == [SKIP] * 7 and shown is None  # defaults come once the model has loaded
    registry.get(None)
    out = restore_page(None, None, registry)
    assert out[6:] == ["", 0.7, 0, 1.0, 1.0, 256, -1, registry.default_key]


def test_browser_secret_is_stable(tmp_path):
    from ui.chat_store import browser_secret

    a = browser_secret(tmp_path / "d")
    assert len(a) >= 16 and browser_secret(tmp_path / "d") == a
    (tmp_path / "a-file").write_text("")
    assert browser_secret(tmp_path / "a-file" / "sub") != a  # cannot be written: a random one, no crash
