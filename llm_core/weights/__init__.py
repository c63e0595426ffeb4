"""Weights in and out: ``hf.py`` (Hugging Face folders: GPT-2, Llama, Qwen names to ours, and export) ->
``gguf.py`` (llama.cpp files) -> ``checkpoint.py`` (our safetensors checkpoints, written atomically) ->
``quantized_load.py`` (straight into int8/bf16) -> ``hub.py`` (the bundled model and named models) ->
``model_cache.py`` (the one cache chat, RAG and the Model tab share) -> ``export.py`` + ``modelfile.py`` (GGUF and
Ollama export).
"""

from __future__ import annotations

from llm_core.lazy import lazy_exports

_EXPORTS = {
    "from_hf_folder": "llm_core.weights.hf",
    "from_hf_gpt2": "llm_core.weights.hf",
    "from_hf_llama": "llm_core.weights.hf",
    "export_hf": "llm_core.weights.hf",
    "load_gguf": "llm_core.weights.gguf",
    "save_checkpoint": "llm_core.weights.checkpoint",
    "load_checkpoint": "llm_core.weights.checkpoint",
    "load_model": "llm_core.weights.hub",
    "list_models": "llm_core.weights.hub",
    "DEFAULT_MODEL": "llm_core.weights.hub",
    "ModelCache": "llm_core.weights.model_cache",
    "load_cached": "llm_core.weights.model_cache",
    "export_gguf": "llm_core.weights.export",
    "ExportResult": "llm_core.weights.export",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
