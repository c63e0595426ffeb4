"""llm_core: a GPT built from scratch (both GPT-2 and Llama/SmolLM2 families), its weights, tokenizer and generation."""

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

__all__ = ["ExportResult", "export_gguf",
    "ModelConfig", "PRESETS", "GPT", "CausalSelfAttention", "KVCache", "RotaryEmbedding", "Block", "MLP", "RMSNorm",
    "save_checkpoint", "load_checkpoint", "load_model", "list_models", "DEFAULT_MODEL", "cache_dir", "data_dir",
    "export_hf", "from_hf_folder", "from_hf_gpt2", "from_hf_llama", "load_gguf",
    "GenerationConfig", "generate", "stream_generate", "TrainConfig", "TrainResult", "recipe", "PRETRAIN_PRESETS",
    "native_bf16",
    "perplexity", "PerplexityResult", "memory_report", "training_memory",
]
