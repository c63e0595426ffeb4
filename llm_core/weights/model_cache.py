"""One in-memory cache of loaded models for the whole process: the app's model picker (chat, Model tab, Documents
tab) and RAG's answering model (``rag.llm.get_core_llm``) take their models from here, so SmolLM2 is loaded once
however many of them use it.

A small LRU (``max_loaded`` models) with one load per key even when several threads ask at once. Keys say what was
loaded and where (:func:`model_key`); the loader is the caller's (``llm_core.weights.hub.load_model`` for names and
folders, ``finetune.load_adapted`` for an adapter), so this module imports neither torch nor finetune.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MAX_LOADED = 3
log = logging.getLogger(__name__)


@dataclass
class CachedModel:
    """A loaded model with its tokenizer; for a LoRA adapter also its on/off switch."""

    model: Any  # llm_core.model.gpt.GPT (LoRA-wrapped for adapters), in eval mode
    tokenizer: Any  # llm_core.tokenizer.Tokenizer
    load_s: float
    device: str
    adapter: Any = None  # finetune.AdapterSwitch for adapters
    precision: str = ""  # what it runs in, for status lines: "int8 (perplexity +0.9% vs fp32)"; "" = not said
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # for on/off + generate

    @contextmanager
    def generating(self, use_adapter: bool = True) -> Iterator[None]:
        """Hold the model while generating: an adapter is switched on/off for this reply, and the lock keeps another
        reply from switching it mid-way (a plain model needs no lock: replies only read its weights)."""
        if self.adapter is None:
            yield
            return
        with self.lock:
            self.adapter.set_enabled(bool(use_adapter))
            yield


class ModelCache:
    """Loaded models by key, least recently used dropped first; thread-safe."""

    def __init__(self, max_loaded: int = DEFAULT_MAX_LOADED) -> None:
        self.max_loaded = max_loaded
        self._items: OrderedDict[str, CachedModel] = OrderedDict()
        self._lock = threading.Lock()  # guards _items and _key_locks
        self._key_locks: dict[str, threading.Lock] = {}

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def peek(self, key: str) -> CachedModel | None:
        """The cached model for ``key`` without loading it (None when absent)."""
        with self._lock:
            return self._items.get(key)

    def get(self, key: str, load: Callable[[], tuple[Any, Any] | tuple[Any, Any, Any]]) -> CachedModel:
        """The model for ``key``; on a miss ``load()`` returns (model, tokenizer), (model, tokenizer, adapter) or
        (model, tokenizer, adapter, precision label)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            klock = self._key_locks.setdefault(key, threading.Lock())
        with klock:  # one load per key even when two callers ask at once
            with self._lock:
                if key in self._items:
                    return self._items[key]
            t0 = time.perf_counter()
            model, tok, *rest = load()
            model.eval()
            cm = CachedModel(model, tok, time.perf_counter() - t0, str(next(model.parameters()).device),
                             rest[0] if rest else None, str(rest[1]) if len(rest) > 1 else "")
            with self._lock:
                self._items[key] = cm
                while len(self._items) > max(1, self.max_loaded):
                    self._items.popitem(last=False)
            return cm

    def drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


MODELS = ModelCache()  # the process's one cache: the app's picker and RAG's answering model share it


def default_device() -> str:
    """A GPU when there is one (a GPU Space), else the CPU: the trainers' picker, without Apple MPS for chat."""
    from llm_core.training.train_loop import pick_device

    return str(pick_device("auto", allow_mps=False))


def model_key(name_or_path: str | Path, device: str, kind: str = "model") -> str:
    """What was loaded and where: a folder or file (also a checkpoint named by its folder under the data folder) by
    its resolved path, a name (the bundled SmolLM2) by the name and the converted-weights cache it comes from."""
    from llm_core.paths import cache_dir, checkpoints_dir

    ref = str(name_or_path)
    p = Path(ref).expanduser()
    if not p.exists() and ref and (checkpoints_dir() / ref).is_dir():  # a checkpoint by name, as hub finds it
        p = checkpoints_dir() / ref
    ref = str(p.resolve()) if p.exists() else f"{ref}|{cache_dir()}"
    return f"{kind}:{ref}@{device}"


def hub_loader(name_or_path: str | Path, device: str) -> Callable[[], tuple[Any, Any, Any, str]]:
    """The loader for :meth:`ModelCache.get`: ``llm_core.weights.hub.load_model`` on ``device``; a model saved without a
    tokenizer is refused (nothing can chat with it).

    On a CPU the bundled model (any model when ``$STUDIO_PRECISION`` is set) loads in the precision
    ``llm_core.generation.precision_choice.pick_precision`` gives: the explicit setting, else the fastest within 2% of fp32's
    perplexity (measured once per model file and machine). On a GPU it stays fp32, as before."""

    def load() -> tuple[Any, Any, Any, str]:
        from llm_core.generation.generation_config import is_default_name
        from llm_core.generation.precision_choice import ENV, pick_precision
        from llm_core.weights.hub import load_model

        choice = None
        if str(device).startswith("cpu") and (is_default_name(name_or_path) or os.environ.get(ENV)):
            try:
                choice = pick_precision(name_or_path, device=device)
            except ValueError:
                raise  # a bad STUDIO_PRECISION: say so
            except Exception as e:  # noqa: BLE001 - e.g. weights missing: load_model below reports it in words
                log.warning("could not choose a precision for %s (%s); loading fp32", name_or_path, e)
        if choice is None or choice.mode == "fp32":
            model, tok = load_model(name_or_path, device=device)
        else:
            from llm_core.weights.quantized_load import load_quantized

            model, tok = load_quantized(name_or_path, choice.mode)
        if tok is None:
            raise ValueError(f"{name_or_path} has no tokenizer saved with it, so it cannot chat")
        return model, tok, None, choice.label() if choice is not None else "fp32"

    return load


def load_cached(name_or_path: str | Path, device: str | None = None, cache: ModelCache | None = None) -> CachedModel:
    """``llm_core.weights.hub.load_model`` through ``cache`` (the shared one by default): a model already loaded by anyone
    in this process on ``device`` (the default device when None) is returned, not loaded again."""
    device = device or default_device()
    cache = MODELS if cache is None else cache
    return cache.get(model_key(name_or_path, device), hub_loader(name_or_path, device))
