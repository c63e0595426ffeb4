"""The model: one typed config drives both families (GPT-2 and Llama/SmolLM2/Qwen). Read in this order:
``config.py`` (ModelConfig) -> ``norm.py`` (RMSNorm) -> ``kv_cache.py`` (keys and values kept between steps, per
row for batches) -> ``attention.py`` (RoPE, causal self-attention)
-> ``block.py`` (MLP, the transformer block) -> ``gpt.py`` (embeddings, blocks, lm_head: the whole GPT).
``fastpath.py`` only picks the matmul kernel the layers call at inference.
"""

from __future__ import annotations

from llm_core.lazy import lazy_exports

_EXPORTS = {
    "ModelConfig": "llm_core.model.config",
    "PRESETS": "llm_core.model.config",
    "read_json_object": "llm_core.model.config",
    "RMSNorm": "llm_core.model.norm",
    "CausalSelfAttention": "llm_core.model.attention",
    "KVCache": "llm_core.model.kv_cache",
    "RotaryEmbedding": "llm_core.model.attention",
    "apply_rope": "llm_core.model.attention",
    "causal_mask": "llm_core.model.attention",
    "Block": "llm_core.model.block",
    "MLP": "llm_core.model.block",
    "make_norm": "llm_core.model.block",
    "GPT": "llm_core.model.gpt",
    "base_gpt": "llm_core.model.gpt",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
