"""From logits to text. Read in this order: ``sampling.py`` (temperature, top-k, top-p, repetition
penalty) -> ``generate.py`` (prefill, then one token at a time through the KV cache) -> ``chat.py`` (chat templates,
context budget, ChatSession) -> ``batching.py`` (many streams sharing one decode step) -> ``quantize.py`` (int8/int4
weights) -> ``precision_choice.py`` (the fastest precision whose perplexity stays within 2% of fp32).
``generation_config.py`` holds the torch-free sampling settings the UI shows.
"""

from __future__ import annotations

from llm_core.lazy import lazy_exports

_EXPORTS = {
    "sample": "llm_core.generation.sampling",
    "sampling_logits": "llm_core.generation.sampling",
    "GenerationConfig": "llm_core.generation.generation_config",
    "known_generation_config": "llm_core.generation.generation_config",
    "stream_generate": "llm_core.generation.generate",
    "GenerationStats": "llm_core.generation.generate",
    "TextStream": "llm_core.generation.generate",
    "ChatSession": "llm_core.generation.chat",
    "ChatDefaults": "llm_core.generation.chat",
    "chat_defaults": "llm_core.generation.chat",
    "build_chat_prompt": "llm_core.generation.chat",
    "BatchScheduler": "llm_core.generation.batching",
    "scheduler_for": "llm_core.generation.batching",
    "quantize_model": "llm_core.generation.quantize",
    "load_quantized": "llm_core.generation.quantize",
    "parse_mode": "llm_core.generation.quantize",
    "pick_precision": "llm_core.generation.precision_choice",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
