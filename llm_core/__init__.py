"""llm_core: a GPT built from scratch (both GPT-2 and Llama/SmolLM2 families), its weights, tokenizer and generation.

The names below load on first use (PEP 562), so `import llm_core.paths` or `from llm_core.model.config import ...`
does not import torch: the UI builds without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm_core.lazy import lazy_exports

if TYPE_CHECKING:
    from llm_core.generation.generate import GenerationConfig, generate, stream_generate
    from llm_core.labs.memory import memory_report, training_memory
    from llm_core.labs.perplexity import PerplexityResult, perplexity
    from llm_core.model.attention import CausalSelfAttention, RotaryEmbedding
    from llm_core.model.block import MLP, Block, RMSNorm
    from llm_core.model.config import PRESETS, ModelConfig
    from llm_core.model.gpt import GPT
    from llm_core.model.kv_cache import KVCache
    from llm_core.paths import cache_dir, data_dir
    from llm_core.precision import native_bf16
    from llm_core.training.trainer import PRETRAIN_PRESETS, TrainConfig, TrainResult, recipe
    from llm_core.weights.checkpoint import load_checkpoint, save_checkpoint
    from llm_core.weights.export import ExportResult, export_gguf
    from llm_core.weights.gguf import load_gguf
    from llm_core.weights.hf import export_hf, from_hf_folder, from_hf_gpt2, from_hf_llama
    from llm_core.weights.hub import DEFAULT_MODEL, list_models, load_model

_EXPORTS = {
    'CausalSelfAttention': 'llm_core.model.attention',
    'KVCache': 'llm_core.model.kv_cache',
    'RotaryEmbedding': 'llm_core.model.attention',
    'MLP': 'llm_core.model.block',
    'Block': 'llm_core.model.block',
    'RMSNorm': 'llm_core.model.block',
    'load_checkpoint': 'llm_core.weights.checkpoint',
    'save_checkpoint': 'llm_core.weights.checkpoint',
    'PRESETS': 'llm_core.model.config',
    'ModelConfig': 'llm_core.model.config',
    'ExportResult': 'llm_core.weights.export',
    'export_gguf': 'llm_core.weights.export',
    'GenerationConfig': 'llm_core.generation.generate',
    'generate': 'llm_core.generation.generate',
    'stream_generate': 'llm_core.generation.generate',
    'DEFAULT_MODEL': 'llm_core.weights.hub',
    'list_models': 'llm_core.weights.hub',
    'load_model': 'llm_core.weights.hub',
    'memory_report': 'llm_core.labs.memory',
    'training_memory': 'llm_core.labs.memory',
    'GPT': 'llm_core.model.gpt',
    'cache_dir': 'llm_core.paths',
    'data_dir': 'llm_core.paths',
    'PerplexityResult': 'llm_core.labs.perplexity',
    'perplexity': 'llm_core.labs.perplexity',
    'native_bf16': 'llm_core.precision',
    'PRETRAIN_PRESETS': 'llm_core.training.trainer',
    'TrainConfig': 'llm_core.training.trainer',
    'TrainResult': 'llm_core.training.trainer',
    'recipe': 'llm_core.training.trainer',
    'export_hf': 'llm_core.weights.hf',
    'from_hf_folder': 'llm_core.weights.hf',
    'from_hf_gpt2': 'llm_core.weights.hf',
    'from_hf_llama': 'llm_core.weights.hf',
    'load_gguf': 'llm_core.weights.gguf',
}

__all__ = ["ExportResult", "export_gguf",
    "ModelConfig", "PRESETS", "GPT", "CausalSelfAttention", "KVCache", "RotaryEmbedding", "Block", "MLP", "RMSNorm",
    "save_checkpoint", "load_checkpoint", "load_model", "list_models", "DEFAULT_MODEL", "cache_dir", "data_dir",
    "export_hf", "from_hf_folder", "from_hf_gpt2", "from_hf_llama", "load_gguf",
    "GenerationConfig", "generate", "stream_generate", "TrainConfig", "TrainResult", "recipe", "PRETRAIN_PRESETS",
    "native_bf16",
    "perplexity", "PerplexityResult", "memory_report", "training_memory",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
