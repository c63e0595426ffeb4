"""Looking inside: ``perplexity.py`` (perplexity and bits per byte), ``memory.py`` (what a model and its
training cost in memory, estimated beside measured), ``model_inspect.py`` (parameters, attention maps, heads),
``token_view.py`` (each token's probability and its alternatives), ``scaling/`` (a ladder of tiny GPTs and the
fitted scaling law).
"""

from __future__ import annotations

from llm_core.lazy import lazy_exports

_EXPORTS = {
    "PerplexityResult": "llm_core.labs.perplexity",
    "memory_report": "llm_core.labs.memory",
    "training_memory": "llm_core.labs.memory",
    "model_summary": "llm_core.labs.model_inspect",
    "attention_maps": "llm_core.labs.model_inspect",
    "head_stats": "llm_core.labs.model_inspect",
    "score_tokens": "llm_core.labs.token_view",
    "TokenView": "llm_core.labs.token_view",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
