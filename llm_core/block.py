"""One transformer layer: pre-norm attention and MLP with residual connections, for both families.

Training, prefill and decoding all run this code; projections go through :func:`llm_core.fastpath.linear`."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_core.attention import CausalSelfAttention, KVCache
from llm_core.config import ModelConfig
from llm_core.fastpath import linear
from llm_core.norm import RMSNorm

__all__ = ["MLP", "Block", "RMSNorm", "make_norm"]


def make_norm(config: ModelConfig) -> nn.Module:
    """LayerNorm for gpt2, RMSNorm for llama."""
    if config.arch == "llama":
        return RMSNorm(config.n_embd, eps=config.norm_eps)  # type: ignore[arg-type]
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=bool(config.bias))  # type: ignore[arg-type]


class MLP(nn.Module):
    """gpt2: down(gelu(up(x))), tanh-approximated or exact.  llama (SwiGLU): down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, hidden = config.n_embd, config.intermediate_size
        assert hidden is not None
        self.swiglu = config.arch == "llama"
        self.gelu_approximate = config.gelu_approximate
        if self.swiglu:
            self.gate_proj = nn.Linear(d, hidden, bias=config.bias)
        self.up_proj = nn.Linear(d, hidden, bias=config.bias)
        self.down_proj = nn.Linear(hidden, d, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        if self.swiglu:
            h = F.silu(linear(self.gate_proj, x)) * linear(self.up_proj, x)  # (B, T, hidden)
        else:
            h = F.gelu(linear(self.up_proj, x), approximate=self.gelu_approximate)  # "tanh": GPT-2's "gelu_new"
        y = linear(self.down_proj, h)  # (B, T, C)
        return self.dropout(y) if self.training and self.dropout.p > 0 else y


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        x = x + self.attn(self.attn_norm(x), rope, cache, layer)
        x = x + self.mlp(self.mlp_norm(x))
        return x
