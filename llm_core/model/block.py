"""One transformer layer: pre-norm attention and MLP with residual connections, for both families.

Training, prefill and decoding all run this code; projections go through :func:`llm_core.model.fastpath.linear`."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_core.model.attention import CausalSelfAttention
from llm_core.model.config import ModelConfig
from llm_core.model.fastpath import linear
from llm_core.model.kv_cache import KVCache
from llm_core.model.norm import RMSNorm

__all__ = ["MLP", "Block", "RMSNorm", "make_norm"]


def make_norm(config: ModelConfig) -> nn.Module:
    """LayerNorm for gpt2, RMSNorm for llama (scaled by 1 + weight for Gemma)."""
    if config.arch == "llama":
        return RMSNorm(config.n_embd, eps=config.norm_eps, unit_offset=config.norm_unit_offset)  # type: ignore[arg-type]
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=bool(config.bias))  # type: ignore[arg-type]


class MLP(nn.Module):
    """gpt2: down(gelu(up(x))), tanh-approximated or exact.  llama (SwiGLU): down(silu(gate(x)) * up(x));
    Gemma's GeGLU is the same with a tanh-GELU on the gate (``activation="gelu_tanh"``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, hidden = config.n_embd, config.intermediate_size
        assert hidden is not None
        self.swiglu = config.arch == "llama"
        self.gelu_approximate = config.gelu_approximate
        self.gate_silu = config.activation == "silu"  # gated (llama): silu (SwiGLU) or tanh-GELU (GeGLU)
        if self.swiglu:
            self.gate_proj = nn.Linear(d, hidden, bias=config.bias)
        self.up_proj = nn.Linear(d, hidden, bias=config.bias)
        self.down_proj = nn.Linear(hidden, d, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        if self.swiglu:
            g = linear(self.gate_proj, x)  # (B, T, hidden)
            g = F.silu(g) if self.gate_silu else F.gelu(g, approximate="tanh")
            h = g * linear(self.up_proj, x)  # (B, T, hidden)
        else:
            h = F.gelu(linear(self.up_proj, x), approximate=self.gelu_approximate)  # "tanh": GPT-2's "gelu_new"
        y = linear(self.down_proj, h)  # (B, T, C)
        return self.dropout(y) if self.training and self.dropout.p > 0 else y


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)). Gemma's sandwich norms also normalise each sublayer's output:
    x + post_attn_norm(attn(norm(x))), then x + post_mlp_norm(mlp(norm(x)))."""

    def __init__(self, config: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.attn_norm = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.mlp_norm = make_norm(config)
        self.mlp = MLP(config)
        self.post_attn_norm = make_norm(config) if config.sandwich_norm else None
        self.post_mlp_norm = make_norm(config) if config.sandwich_norm else None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        h = self.attn(self.attn_norm(x), rope, cache, layer)  # (B, T, C)
        x = x + (self.post_attn_norm(h) if self.post_attn_norm is not None else h)
        h = self.mlp(self.mlp_norm(x))  # (B, T, C)
        return x + (self.post_mlp_norm(h) if self.post_mlp_norm is not None else h)
