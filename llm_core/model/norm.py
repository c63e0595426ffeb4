"""RMSNorm (Llama, Qwen, Gemma): its own file so attention (q/k norm) and blocks share one implementation."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_core.kernels import cpu_kernels


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama): no mean subtraction, no bias; computed in float32 like transformers.

    float32 input takes ``F.rms_norm`` (fused on GPUs); on a CPU without gradients (kernels off) the same float32 math
    is written out, bit for bit what ``F.rms_norm`` computes there: its CPU version is a composite of ~15 ops (casts,
    ``result_type``, ``type_as`` around the six below), and this runs 61 times per decoded token of SmolLM2 (measured:
    ~305 fewer ops and 7-10% less time per int8 token). Half precision keeps transformers' exact order: normalise in
    float32, round, then scale.

    ``unit_offset`` (Gemma): the scale is ``1 + weight`` (the weight starts at 0), applied in float32 before the
    one rounding to the input dtype, as in transformers' Gemma3RMSNorm.

    Where :mod:`llm_core.kernels` is built, float32 or bf16 rows on the CPU without gradients (up to ``KERNEL_ROWS``)
    run its ``rms_norm`` instead: the same math in one call instead of 6-8 ATen ops (a decoded SmolLM2 token runs 61
    norms), summed in another order (float32: within a few ulps of the written-out math; bf16: the same values but
    for a rare one-ulp rounding). Gemma's unit-offset norms and float16 stay in PyTorch."""

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
        w = self._parameters["weight"]  # (nn.Module.__getattr__ is slow, and this runs 61 times a token)
        if _own_kernel(x, w):
            k = cpu_kernels()
            if k is not None:
                return k.rms_norm(x, w, self.eps)  # (..., dim)
        if dtype == torch.float32 and w.dtype == torch.float32:
            if x.device.type == "cpu" and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)):
                return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(self.eps)) * w  # (..., dim)
            return F.rms_norm(x, (x.size(-1),), w, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * h.to(dtype)


KERNEL_ROWS = 256  # up to this many rows (a decode step, a short prompt) the kernel; more keep ATen's threads


def _own_kernel(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether the kernels' ``rms_norm`` may run: both on the CPU, no gradients, not traced, one float32/bf16 dtype,
    contiguous, at most ``KERNEL_ROWS`` rows (the kernel runs on one thread)."""
    return (x.device.type == "cpu" and w.device.type == "cpu" and x.dtype == w.dtype
            and x.dtype in (torch.float32, torch.bfloat16)
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
            and not torch.compiler.is_compiling() and x.is_contiguous() and w.is_contiguous()
            and x.numel() <= KERNEL_ROWS * x.size(-1))
