"""A thin UI (issue 14): ui/ builds without torch, the Model tab's numbers come from llm_core.labs.model_inspect, and one
model cache (llm_core.weights.model_cache) serves the app's picker and RAG's answering model."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


PROBE = """
import importlib, json, pkgutil, sys
out = {}
import ui
names = [m.name for m in pkgutil.iter_modules(ui.__path__, "ui.")]
for n in names:
    importlib.import_module(n)
out["ui_modules"] = len(names)
out["heavy_after_import"] = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)

import finetune, llm_core, rag
import llm_core.model.config, llm_core.labs.memory, llm_core.weights.model_cache, llm_core.labs.model_inspect, llm_core.paths
import finetune.config
out["torch_after_light_core"] = "torch" in sys.modules
out["targets_same"] = finetune.DEFAULT_TARGETS == finetune.config.DEFAULT_TARGETS

from ui import create_ui
from ui.jobs import JobManager
from ui.models import ModelRegistry
from ui.settings import Settings
create_ui(Settings(preload=False), registry=ModelRegistry(), jobs=JobManager())
out["torch_after_build"] = "torch" in sys.modules

from llm_core import GPT, load_model, perplexity
from llm_core.model.gpt import GPT as GPT2
import llm_core.generation.generate, llm_core.labs.perplexity
out["lazy_names"] = GPT is GPT2 and callable(load_model) and callable(perplexity)
out["function_wins_over_submodule"] = (callable(llm_core.generate) and callable(llm_core.perplexity)
    and llm_core.generate is llm_core.generation.generate.generate)
ns = {}
exec("from llm_core import *", ns)
exec("from finetune import *", ns)
out["star"] = ns["ModelConfig"] is llm_core.model.config.ModelConfig and "FinetuneJob" in ns and "write_demo" in ns
try:
    llm_core.no_such_name
except AttributeError as e:
    out["missing"] = str(e)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict:
    """Imports and a UI build in a fresh interpreter (other tests' imports cannot hide a torch import)."""
    tmp = tmp_path_factory.mktemp("probe")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "LLM_STUDIO_HOME": str(tmp / "home"),
           "LLM_STUDIO_CACHE": str(tmp / "cache"), "HOME": str(tmp), "PYTHONPATH": str(ROOT),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- nothing in ui/ imports torch -----------------------------------------------------------------------------------
def test_importing_every_ui_module_imports_no_torch(probe):
    assert probe["ui_modules"] >= 15 and probe["heavy_after_import"] == []


def test_building_the_ui_imports_no_torch(probe):
    assert probe["torch_after_build"] is False


def test_core_packages_load_their_names_on_first_use(probe):
    """llm_core and finetune export the same names as before, but importing a light module loads no torch."""
    assert probe["torch_after_light_core"] is False and probe["targets_same"]
    assert probe["lazy_names"] and probe["function_wins_over_submodule"] and probe["star"]
    assert "no_such_name" in probe["missing"]


# ---- one model cache ----------------------------------------------------------------------------------------------
@pytest.fixture()
def loads(monkeypatch):
    """Every real load through llm_core.weights.hub.load_model, counted."""
    import llm_core.weights.hub as hub

    calls: list[str] = []
    real = hub.load_model

    def counting(name, *a, **kw):
        calls.append(str(name))
        return real(name, *a, **kw)

    monkeypatch.setattr(hub, "load_model", counting)
    return calls


def _storages(model) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in model.parameters()}


def test_chat_and_rag_share_one_loaded_model(registry, loads):
    from llm_core.weights.model_cache import MODELS
    from rag.llm import CoreLLM, get_core_llm
    from ui.models import ModelRegistry

    llm = get_core_llm(registry.default_model)  # RAG first (the Documents tab's generative mode) ...
    lm = registry.get(None)  # ... then the Chat tab
    assert lm.model is llm.model and lm.tokenizer is llm.tokenizer
    assert CoreLLM(registry.default_model).model is lm.model
    assert get_core_llm("tiny").model is lm.model  # a checkpoint by its name in the data folder: the same copy
    other = ModelRegistry(default_model=registry.default_model)  # e.g. the HTTP API's registry
    assert other.is_loaded(None) and other.get(None).model is lm.model
    assert loads == [registry.default_model]  # loaded once, not once per consumer
    # memory is not doubled: every parameter of both consumers lives in one set of storages
    assert _storages(llm.model) == _storages(lm.model)
    mine = str(Path(registry.default_model).resolve())  # other tests' tiny checkpoints may share the process cache
    assert sum(k.endswith(f"@{lm.device}") and mine in k for k in MODELS.keys()) == 1
    assert registry.get(None) is lm  # the picker's entry stays the same object while cached


def test_cache_keys_say_what_was_loaded(tmp_path, monkeypatch):
    from llm_core.weights.model_cache import model_key

    for home in ("h1", "h2"):
        (tmp_path / home / "checkpoints" / "run").mkdir(parents=True)
    monkeypatch.setenv("LLM_STUDIO_HOME", str(tmp_path / "h1"))
    k1 = model_key("run", "cpu")
    assert k1 == model_key(tmp_path / "h1" / "checkpoints" / "run", "cpu") != model_key("run", "cuda")
    monkeypatch.setenv("LLM_STUDIO_HOME", str(tmp_path / "h2"))
    assert model_key("run", "cpu") != k1  # another person's "run" is another model
    monkeypatch.setenv("LLM_STUDIO_CACHE", str(tmp_path / "c1"))
    d1 = model_key("smollm2-135m-instruct", "cpu")
    monkeypatch.setenv("LLM_STUDIO_CACHE", str(tmp_path / "c2"))
    assert model_key("smollm2-135m-instruct", "cpu") != d1
    assert model_key("x", "cpu", kind="lora").startswith("lora:")


def test_an_evicted_model_is_released_and_reloaded(home, loads):
    from llm_core.weights.model_cache import ModelCache
    from tests.test_app import make_tiny_checkpoint
    from ui.models import ModelRegistry

    a = make_tiny_checkpoint(home / "checkpoints" / "a")
    b = make_tiny_checkpoint(home / "checkpoints" / "b", seed=1)
    cache = ModelCache(max_loaded=1)
    reg = ModelRegistry(default_model=str(a), cache=cache)
    first = reg.get(None)
    kb = f"ckpt:{b.resolve()}"
    assert reg.get(kb).model is not first.model and not reg.is_loaded(None)  # the LRU dropped model a
    assert first.cache_key not in [v.cache_key for v in reg._views.values()]  # and the picker let go of it
    again = reg.get(None)
    assert again.model is not first.model and len(cache) == 1
    assert loads == [str(a.resolve()), str(b.resolve()), str(a.resolve())]


def test_cache_loads_once_under_concurrent_requests():
    from llm_core.weights.model_cache import ModelCache

    cache = ModelCache(max_loaded=2)
    calls = []
    gate = threading.Event()

    def load():
        calls.append(1)
        gate.wait(5)
        return torch.nn.Linear(2, 2), "tok"

    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("k", load))) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and len(got) == 4 and all(g is got[0] for g in got)
    assert got[0].tokenizer == "tok" and got[0].device == "cpu" and not got[0].model.training
    cache.get("k2", lambda: (torch.nn.Linear(2, 2), "t2"))
    cache.get("k", load)  # k is now the most recent: k2 goes first
    cache.get("k3", lambda: (torch.nn.Linear(2, 2), "t3"))
    assert cache.keys() == ["k", "k3"] and len(calls) == 1


def test_a_failed_load_is_not_cached_and_says_why(home):
    from ui.models import ModelRegistry

    reg = ModelRegistry(default_model=str(home / "missing"))
    for _ in range(2):
        with pytest.raises(FileNotFoundError, match="unknown model"):
            reg.get(None)  # tried again: a failure is not cached
    assert "unknown model" in reg.default_error and not reg.is_loaded(None)


# ---- the Model tab's numbers come from llm_core.labs.model_inspect --------------------------------------------------------
def test_attention_maps_come_from_the_core_and_cut_long_prompts(registry):
    from llm_core.labs.model_inspect import attention_maps
    from ui.model_tab import compute_attention

    lm = registry.get(None)
    att = attention_maps(lm.model, lm.tokenizer, "abcabc", max_tokens=64)
    assert att.ids == lm.tokenizer.encode("abcabc") and not att.truncated
    ids = torch.tensor([att.ids])
    with torch.no_grad():
        ref = lm.model.attention_maps(ids).numpy()
    assert np.allclose(att.maps, ref)
    long = attention_maps(lm.model, lm.tokenizer, "x" * 100, max_tokens=10)
    assert long.truncated and long.maps.shape[-1] == 10
    st = compute_attention(None, "y" * 80, registry)  # the tab: cut to MAX_ATTN_TOKENS with a note
    assert st["maps"].shape[-1] == 64 and "first 64 tokens" in st["note"]
    with pytest.raises(ValueError, match="Type a prompt"):
        attention_maps(lm.model, lm.tokenizer, "  ")


def _maps(kind: str, T: int = 6) -> np.ndarray:
    m = np.zeros((T, T))
    for q in range(T):
        k = {"sink": 0, "prev": max(0, q - 1), "self": q}[kind]
        m[q, k] = 1.0
    return m[None, None]  # (1, 1, T, T)


@pytest.mark.parametrize(("kind", "role"), [("sink", "first-token (sink)"), ("prev", "previous-token"),
                                            ("self", "self")])
def test_head_stats_name_the_pattern(kind, role):
    from llm_core.labs.model_inspect import head_stats
    from ui.model_view import head_profile

    [s] = head_stats(_maps(kind), None)
    assert s.role == role and s.induction is None and s.entropy == pytest.approx(0.0, abs=1e-6)
    assert head_profile(_maps(kind), None)[0][-1] == role


def test_head_stats_find_an_induction_head():
    from llm_core.labs.model_inspect import head_stats, induction_targets

    ids = [7, 8, 9, 7, 8, 9]
    pairs = induction_targets(ids)
    assert pairs == [(3, 1), (4, 2), (5, 3)]
    m = np.full((6, 6), 0.0)
    for q in range(6):
        m[q, 0] = 1.0
    for q, k in pairs:  # from the repeated token to what followed its first copy
        m[q] = 0.0
        m[q, k] = 1.0
    [s] = head_stats(m[None, None], ids)
    assert s.induction == pytest.approx(1.0) and s.role == "induction"


def test_model_summary_counts_every_parameter_once(registry):
    from llm_core.labs.model_inspect import model_summary

    model = registry.get(None).model
    s = model_summary(model)
    assert s.total == model.num_params() == sum(g.params for g in s.groups)
    assert s.lora == 0 and s.dtype == "float32" and s.device == "cpu"
    assert s.nbytes == 4 * s.total
    blocks = [g for g in s.groups if g.name.startswith("blocks.*")]
    assert blocks and all(g.layers == model.config.n_layer for g in blocks)
