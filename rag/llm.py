"""The answering model: the `LLM` protocol the answerer needs, and `CoreLLM`, the project's own GPT behind it.

Any model `llm_core.weights.hub.load_model` can open works (the bundled SmolLM2-135M, a checkpoint folder, an HF folder
with a larger instruct model, a .gguf file): pass its name or path as `get_core_llm(name)` / `--llm`.
Callers may hand the answerer a zero-argument factory instead of a model, so that nothing is loaded when the
question can be answered (or refused) without one. Models come from ``llm_core.weights.model_cache.MODELS``, the cache the
app's model picker uses too, so the Documents tab and the Chat tab share one loaded SmolLM2.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

DEFAULT_LLM = "smollm2-135m-instruct"


class LLM(Protocol):
    """What the answerer needs from a chat model."""

    context_window: int

    def count_tokens(self, text: str) -> int: ...

    def prompt_tokens(self, messages: list[dict]) -> int: ...

    def stream(self, messages: list[dict], max_new_tokens: int,
               stop_event: threading.Event | None = None) -> Iterator[str]: ...


LLMOrFactory = Any  # an LLM, or a zero-argument callable returning one (loaded only when generation is needed)


def resolve_llm(llm: LLMOrFactory | None) -> LLM:
    """The model itself: call a factory, or load the default core model when none was given."""
    if llm is None:
        return get_core_llm()
    if callable(llm) and not hasattr(llm, "stream"):
        return llm()
    return llm


class CoreLLM:
    """The project's own GPT as an `LLM` (greedy-ish sampling: answers should stick to the passages)."""

    def __init__(self, name: str = DEFAULT_LLM, device: str | None = None, temperature: float = 0.2,
                 top_p: float = 0.9, repetition_penalty: float = 1.1, seed: int | None = 0):
        from llm_core.weights.model_cache import load_cached

        cm = load_cached(name, device=device)  # the process's shared cache: no second copy of a loaded model
        self._init(cm.model, cm.tokenizer, name, temperature, top_p, repetition_penalty, seed)

    def _init(self, model: Any, tokenizer: Any, name: str, temperature: float, top_p: float,
              repetition_penalty: float, seed: int | None) -> None:
        self.name = name
        self.model, self.tokenizer = model, tokenizer
        self.model.eval()
        self.context_window = int(model.config.block_size)
        self.sampling = {"temperature": temperature, "top_p": top_p, "repetition_penalty": repetition_penalty,
                         "seed": seed}

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, name: str = "custom", temperature: float = 0.2,
                   top_p: float = 0.9, repetition_penalty: float = 1.1, seed: int | None = 0) -> CoreLLM:
        """Wrap a model that is already loaded (the app's picker) so answers reuse that copy."""
        self = cls.__new__(cls)
        self._init(model, tokenizer, name, temperature, top_p, repetition_penalty, seed)
        return self

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, allowed_special=set()))

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    def prompt_tokens(self, messages: list[dict]) -> int:
        return len(self.prompt_ids(messages))

    def stream(self, messages: list[dict], max_new_tokens: int,
               stop_event: threading.Event | None = None) -> Iterator[str]:
        from llm_core.generation.generate import GenerationConfig, stream_generate

        cfg = GenerationConfig(max_new_tokens=max_new_tokens, **self.sampling)
        yield from stream_generate(self.model, self.tokenizer, self.prompt_ids(messages), cfg, stop_event=stop_event)


def get_core_llm(name: str = DEFAULT_LLM) -> CoreLLM:
    """The answering model for `name` (a model name, checkpoint folder, HF folder or .gguf file), loaded once per
    process in ``llm_core.weights.model_cache.MODELS``, which the app's model picker shares."""
    try:
        return CoreLLM(name)
    except ImportError as e:
        raise RuntimeError(f"the answering model needs llm_core ({e}); use --mode grounded instead") from e
    except (FileNotFoundError, OSError, ValueError, KeyError) as e:
        raise RuntimeError(f"cannot load the answering model {name!r}: {e}") from e


def core_llm_factory(name: str = DEFAULT_LLM) -> Callable[[], CoreLLM]:
    """A factory for `resolve_llm`: the model is loaded on first use only."""
    return lambda: get_core_llm(name)
