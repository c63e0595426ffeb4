"""llm_core: a GPT built from scratch (both GPT-2 and Llama/SmolLM2 families), its weights, tokenizer and generation.

The names below load on first use (PEP 562), so `import llm_core.paths` or `from llm_core.config import ...`
does not import torch: the UI builds without it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm_core.attention import CausalSelfAttention, KVCache, RotaryEmbedding
    from llm_core.block import MLP, Block, RMSNorm
    from llm_core.checkpoint import load_checkpoint, save_checkpoint
    from llm_core.config import PRESETS, ModelConfig
    from llm_core.export import ExportResult, export_gguf
    from llm_core.generate import GenerationConfig, generate, stream_generate
    from llm_core.hub import DEFAULT_MODEL, list_models, load_model
    from llm_core.memory import memory_report, training_memory
    from llm_core.model import GPT
    from llm_core.paths import cache_dir, data_dir
    from llm_core.perplexity import PerplexityResult, perplexity
    from llm_core.precision import native_bf16
    from llm_core.trainer import PRETRAIN_PRESETS, TrainConfig, TrainResult, recipe
    from llm_core.weights import export_hf, from_hf_folder, from_hf_gpt2, from_hf_llama, load_gguf

_EXPORTS = {
    'CausalSelfAttention': 'llm_core.attention',
    'KVCache': 'llm_core.attention',
    'RotaryEmbedding': 'llm_core.attention',
    'MLP': 'llm_core.block',
    'Block': 'llm_core.block',
    'RMSNorm': 'llm_core.block',
    'load_checkpoint': 'llm_core.checkpoint',
    'save_checkpoint': 'llm_core.checkpoint',
    'PRESETS': 'llm_core.config',
    'ModelConfig': 'llm_core.config',
    'ExportResult': 'llm_core.export',
    'export_gguf': 'llm_core.export',
    'GenerationConfig': 'llm_core.generate',
    'generate': 'llm_core.generate',
    'stream_generate': 'llm_core.generate',
    'DEFAULT_MODEL': 'llm_core.hub',
    'list_models': 'llm_core.hub',
    'load_model': 'llm_core.hub',
    'memory_report': 'llm_core.memory',
    'training_memory': 'llm_core.memory',
    'GPT': 'llm_core.model',
    'cache_dir': 'llm_core.paths',
    'data_dir': 'llm_core.paths',
    'PerplexityResult': 'llm_core.perplexity',
    'perplexity': 'llm_core.perplexity',
    'native_bf16': 'llm_core.precision',
    'PRETRAIN_PRESETS': 'llm_core.trainer',
    'TrainConfig': 'llm_core.trainer',
    'TrainResult': 'llm_core.trainer',
    'recipe': 'llm_core.trainer',
    'export_hf': 'llm_core.weights',
    'from_hf_folder': 'llm_core.weights',
    'from_hf_gpt2': 'llm_core.weights',
    'from_hf_llama': 'llm_core.weights',
    'load_gguf': 'llm_core.weights',
}

__all__ = ["ExportResult", "export_gguf",
    "ModelConfig", "PRESETS", "GPT", "CausalSelfAttention", "KVCache", "RotaryEmbedding", "Block", "MLP", "RMSNorm",
    "save_checkpoint", "load_checkpoint", "load_model", "list_models", "DEFAULT_MODEL", "cache_dir", "data_dir",
    "export_hf", "from_hf_folder", "from_hf_gpt2", "from_hf_llama", "load_gguf",
    "GenerationConfig", "generate", "stream_generate", "TrainConfig", "TrainResult", "recipe", "PRETRAIN_PRESETS",
    "native_bf16",
    "perplexity", "PerplexityResult", "memory_report", "training_memory",
]


def __getattr__(name: str) -> Any:
    """Load a public name (or a submodule, as ``llm_core.model``) on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# `generate` and `perplexity` name both a submodule and its function; as with the eager imports this package had,
# the function wins when the import system binds the submodule here.
_SHADOWED = {n for n, m in _EXPORTS.items() if m == f"{__name__}.{n}"}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
