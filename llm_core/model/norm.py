"""RMSNorm (Llama, Qwen, Gemma): its own file so attention (q/k norm) and blocks share one implementation."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama): no mean subtraction, no bias; computed in float32 like transformers.

    float32 input takes the fused ``F.rms_norm`` (one op instead of six: this runs 61 times per decoded token of
    SmolLM2); half precision keeps transformers' exact order: normalise in float32, round, then scale.

    ``unit_offset`` (Gemma): the scale is ``1 + weight`` (the weight starts at 0), applied in float32 before the
    one rounding to the input dtype, as in transformers' Gemma3RMSNorm."""

    def __init__(self, dim: int, eps: float = 1e-5, unit_offset: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., dim)
        dtype = x.dtype
        if self.unit_offset:
            scale = 1.0 + self.weight.float()  # (dim,)
            if dtype == torch.float32:
                return F.rms_norm(x, (x.size(-1),), scale, self.eps)
            h = x.float()
            return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps) * scale).to(dtype)
        if dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)
