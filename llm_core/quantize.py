"""Inference-only precision options: bf16 weights, or int8 weight-only linears.

- ``bf16``: every weight and activation in bfloat16 (norms still accumulate in float32). Half the memory
  traffic of fp32, which is what bounds single-token decoding on a CPU.
- ``int8``: each ``nn.Linear`` (and the tied lm_head) becomes a :class:`Int8Linear`: per-output-channel
  symmetric int8 weights, ``w ~= q * scale`` with ``scale = max|w_row| / 127``. Embeddings, norms and the
  residual stream stay float32. For a few rows (decoding) the matmul runs in PyTorch's fused int8 weight-only
  kernel ``_weight_int8pack_mm`` with bfloat16 activations; for many rows (prompt prefill) the weight is
  dequantized on the fly and a regular float32 GEMM runs, which is faster there and more accurate.

Quantized models are for inference: save checkpoints from the float model.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Int8Linear", "quantize_model", "Mode", "MODES", "parse_mode", "model_mode"]

Mode = Literal["fp32", "bf16", "int8"]
MODES: tuple[str, ...] = ("fp32", "bf16", "int8")
_ALIASES = {"fp32": "fp32", "float32": "fp32", "float": "fp32", "bf16": "bf16", "bfloat16": "bf16",
            "int8": "int8", "q8": "int8"}


def parse_mode(mode: str) -> Mode:
    m = _ALIASES.get(str(mode).lower())
    if m is None:
        raise ValueError(f"unknown precision {mode!r}: choose one of {', '.join(MODES)}")
    return m  # type: ignore[return-value]


def _has_int8pack() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """y = x @ (q * scale).T + b with int8 ``q`` (out, in) and float32 ``scale`` (out,)."""

    small_m: int = 16  # up to this many rows: the int8 kernel; above: dequantize + float32 GEMM

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                 compute_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2:
            raise ValueError(f"qweight must be a 2-D int8 tensor, got {qweight.dtype} {tuple(qweight.shape)}")
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale.float().contiguous())
        self.register_buffer("scale_c", scale.to(compute_dtype).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.compute_dtype = compute_dtype
        self.use_kernel = _has_int8pack()  # (CPU only: checked per call, the module may move)

    @staticmethod
    def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row symmetric int8: (q (out, in) int8, scale (out,) float32)."""
        w = w.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)  # (out,)
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return q, scale

    @classmethod
    def from_linear(cls, lin: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16) -> Int8Linear:
        q, s = cls.quantize_weight(lin.weight)
        return cls(q, s, lin.bias, compute_dtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.qweight.to(dtype) * self.scale.to(dtype)[:, None])  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # (..., in)
        x2 = x.reshape(-1, self.in_features)  # (M, in)
        if self.use_kernel and x2.size(0) <= self.small_m and x2.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(x2.to(self.compute_dtype).contiguous(), self.qweight, self.scale_c)
            y = y.to(x.dtype)
        else:
            y = F.linear(x2, self.dequantize(x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per-channel, compute={self.compute_dtype}"


def quantize_model(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Convert ``model`` in place for inference in ``mode`` ("fp32", "bf16", "int8") and return it (eval mode)."""
    m = parse_mode(mode)
    model.eval()
    if m == "fp32":
        return model.float()
    if m == "bf16":
        return model.to(torch.bfloat16)
    model.float()
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if type(child) is nn.Linear:
                setattr(mod, child_name, Int8Linear.from_linear(child))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def model_mode(model: nn.Module) -> Mode:
    """Which precision a model is running in (for labels in the UI and benchmarks)."""
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        return "int8"
    p = next(model.parameters(), None)
    return "bf16" if p is not None and p.dtype == torch.bfloat16 else "fp32"
