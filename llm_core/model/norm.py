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
        k = elementwise_kernels(x.numel() // max(1, x.size(-1)), x, w)
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


def elementwise_kernels(rows: int, *ts: torch.Tensor):  # noqa: ANN201 - the compiled module or None
    """:mod:`llm_core.kernels` where its single-threaded elementwise kernels (``rms_norm``, ``rope``) may run on
    ``ts``: all on the CPU in one float32/bf16 dtype, contiguous, without gradients, not traced, at most
    ``KERNEL_ROWS`` rows; else None, and the caller runs the PyTorch code. (A loop, not ``any()``: ~120 calls a
    decoded token.)"""
    dtype = ts[0].dtype
    if rows > KERNEL_ROWS or dtype not in (torch.float32, torch.bfloat16) or torch.compiler.is_compiling():
        return None
    grad = torch.is_grad_enabled()
    for t in ts:
        if t.device.type != "cpu" or t.dtype != dtype or not t.is_contiguous() or (grad and t.requires_grad):
            return None
    return cpu_kernels()
