"""Inference-only precision options: bf16 weights, or int8 weight-only linears and embeddings.

- ``bf16``: every weight and activation in bfloat16 (norms still accumulate in float32). Half the memory
  traffic of fp32, which is what bounds single-token decoding on a CPU.
- ``int8``: each ``nn.Linear`` becomes a :class:`Int8Linear`: per-output-channel symmetric int8 weights,
  ``w ~= q * scale`` with ``scale = max|w_row| / 127``. The token embedding becomes a :class:`Int8Embedding`
  (per-row int8, the same scheme as llama.cpp's q8_0 ``token_embd``); a tied lm_head shares its int8 matrix, so
  the 49k x 576 table is held once, in int8. Norms, position embeddings and the residual stream stay float32.
  Up to ``kernel_m`` rows (decoding, a short prompt's prefill) the matmul runs in our own int8 kernel
  (:mod:`llm_core.kernels`: the activation rows quantized to int8 per block of 32 as llama.cpp's q8_0 does, integer
  dot products) where it is built, else (a few rows) in PyTorch's fused int8 weight-only kernel
  ``_weight_int8pack_mm`` with bfloat16 activations; for more rows (a long prompt) the weight is dequantized on the
  fly and a regular float32 GEMM runs.
- ``int4``: each linear whose input width divides by 32 (and output by 16) becomes an :class:`Int4Linear`: 4-bit weights in groups
  of 32 along the input, ``w ~= q * d + m`` with ``q`` in 0..15 (llama.cpp's Q4_1 scheme: ``d = (max-min)/15``,
  ``m = min`` per group), two per byte in our own layout. Up to ``kernel_m`` rows run our Q4_1 kernel
  (:mod:`llm_core.kernels`: q8 activations, integer dot products) where it is built, else PyTorch's
  ``_weight_int4pack_mm_for_cpu`` with bfloat16 activations and scales on a pack of its own made on first use
  (its float32 path is not vectorised on AVX2: ~40x slower); more rows dequantize + float32 GEMM. The bundled SmolLM2 file is Q4_1 already, so re-grouping its weights gives back the same
  4-bit values. Embedding and the tied lm_head stay as in ``int8`` (llama.cpp's Q4_1 files keep ``token_embd`` in
  Q8_0 too), so ``int4`` is llama.cpp's ``q4_1`` layout. Offered in ``MODES``; the automatic choice
  (:mod:`llm_core.generation.precision_choice`) takes it only where its perplexity stays within 2% of fp32's.

Memory: a quantized model holds only its quantized weights. :func:`quantize_model` converts in place, weight by
weight, through a small row buffer (no full-size float temporaries), and drops each float weight as it goes.
:func:`load_quantized` (:mod:`llm_core.weights.quantized_load`) never builds the float model at all: it reads one
tensor (or a few rows) at a time from the checkpoint file and keeps only the int8/bf16 result.

Quantized models are for inference: save checkpoints from the float model.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_core.kernels import cpu_kernels
from llm_core.model.fastpath import NATIVE_BF16

__all__ = ["Int8Linear", "Int4Linear", "Int8Embedding", "quantize_model", "quantize_rows", "Mode", "MODES", "parse_mode",
           "model_mode", "weight_bytes", "load_quantized"]

Mode = Literal["fp32", "bf16", "int8", "int4"]
MODES: tuple[str, ...] = ("fp32", "bf16", "int8", "int4")  # offered to users (CLI --dtype, the UI)
_ALIASES = {"fp32": "fp32", "float32": "fp32", "float": "fp32", "bf16": "bf16", "bfloat16": "bf16",
            "int8": "int8", "q8": "int8", "int4": "int4", "q4": "int4"}
BLOCK_BYTES = 2 << 20  # float32 bytes quantized per step: few small ops, temporaries of ~2 MiB


def parse_mode(mode: str) -> Mode:
    m = _ALIASES.get(str(mode).lower())
    if m is None:
        raise ValueError(f"unknown precision {mode!r}: choose one of {', '.join(MODES)}")
    return m  # type: ignore[return-value]


def _has_int8pack() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def quantize_rows_into(w: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, buf: torch.Tensor) -> None:
    """Per-row symmetric int8 of ``w`` (n, in) into ``q`` (n, in) int8 and ``scale`` (n,) float32.

    ``buf`` is a float32 (n, in) work area, not ``w`` itself."""
    torch.amax(torch.abs(w, out=buf), dim=1, out=scale)  # max |w_row|
    scale.div_(127.0).clamp_min_(1e-12)
    torch.div(w, scale[:, None], out=buf)
    q.copy_(buf.round_().clamp_(-127, 127))


def quantize_rows(w: torch.Tensor, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8 of a 2-D weight: (q (out, in) int8, scale (out,) float32), a block of ``rows`` rows
    (default ~2 MiB) at a time, so no full-size float temporary is ever allocated (bit-identical to
    ``round(w / scale)`` in one go)."""
    w = w.detach()
    out_f, in_f = w.shape
    rows = rows or max(1, BLOCK_BYTES // (4 * max(1, in_f)))
    q = torch.empty(out_f, in_f, dtype=torch.int8, device=w.device)
    scale = torch.empty(out_f, dtype=torch.float32, device=w.device)
    buf = torch.empty(min(rows, out_f), in_f, dtype=torch.float32, device=w.device)
    for r in range(0, out_f, rows):
        n = min(rows, out_f - r)
        quantize_rows_into(w[r:r + n].float(), q[r:r + n], scale[r:r + n], buf[:n])
    return q, scale


def _versions(*ts: torch.Tensor) -> tuple[int, ...]:
    """In-place-change counters of ``ts``, for caches made from them (inference tensors have none: -1)."""
    return tuple([-1 if t.is_inference() else t._version for t in ts])  # (a list: no generator, ~200 calls a token)


class _KernelLinear(nn.Module):
    """What Int8Linear and Int4Linear share. Up to ``kernel_m`` rows on CPU (decoding, and the prefill of a prompt of
    up to that many tokens) run :mod:`llm_core.kernels`' kernel for the format (``_kernel``, on the buffers named in
    ``_weights``) where it is built and the buffers fit it (``_kernel_fits``); else up to ``small_m`` rows run
    PyTorch's weight-only kernel (``_torch_rows``, None where there is none); more rows dequantize the weight and run
    a float GEMM."""

    # Our kernel quantizes each activation row to int8 per block of 32 and runs integer dot products, as llama.cpp
    # does for prompts too; dequantizing the whole weight to float32 first costs a fixed ~0.5 s per SmolLM2 prompt.
    # Prefill, shared 2-core VM: 128 tokens int8 0.39 s (dequantize + GEMM 0.65-1.05), int4 0.45 (0.80-1.11); 256
    # tokens 0.73 / 0.90 (1.14-1.36 / 1.40-1.56); 512 tokens about even for int8, the GEMM ahead for int4.
    kernel_m: int = 256
    small_m: int = 16  # PyTorch's weight-only kernels (bf16 activations) up to this many rows
    # From this many rows, on a CPU that multiplies bf16 in hardware (fastpath.NATIVE_BF16: AMX, AVX512-BF16), a
    # format with `_bf16_gemm` runs the prompt as one bf16 GEMM on its weight made bf16 once per call. SmolLM2 int8
    # prefill on the 2-core Xeon VM (AMX), our int8 kernel -> bf16 GEMM: 32 tokens 0.107 -> 0.129 s, 48 0.148 ->
    # 0.137, 64 0.177 -> 0.150, 128 0.300 -> 0.189, 256 0.520 -> 0.352 (llama.cpp's q8_0, 128 tokens: 0.27)
    native_bf16_m: int = 48
    _kernel: str  # the llm_core.kernels function
    _weights: tuple[str, str]  # the buffers it takes before the bias, in order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(1, self.in_features)
        cpu = x.device.type == "cpu" and not (x.requires_grad and torch.is_grad_enabled())
        if cpu and rows >= self.native_bf16_m and NATIVE_BF16:
            y = self._bf16_gemm(x)  # (..., out) in x's dtype, or None: this format has no such path
            if y is not None:
                return y
        if cpu and rows <= self.kernel_m:
            plan = self._kernel_plan()
            if plan is not None:  # (..., in) -> (..., out) in x's dtype, with the bias
                return plan[0](x, *plan[1])
        shape = x.shape  # (..., in)
        x2 = x.reshape(-1, self.in_features)  # (M, in)
        y = self._torch_rows(x2) if cpu and rows <= self.small_m else None  # (M, out)
        if y is None:
            y = F.linear(x2, self.dequantize(x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*shape[:-1], self.out_features)

    def _kernel_plan(self) -> tuple | None:
        """(kernel function, its tensor arguments), or None: not built, ``STUDIO_KERNELS=0``, or buffers the kernel
        does not take. Checked once per set of tensors and weight version and kept on the module: this runs ~200
        times per decoded token."""
        k = cpu_kernels()
        if k is None:
            return None
        name_w, name_s = self._weights
        w, s, b = self._buffers[name_w], self._buffers[name_s], self._parameters.get("bias")  # (bias: maybe None)
        version = _versions(w, s)
        plan = self.__dict__.get("_plan")
        if plan is not None and plan[2] == version:  # the same tensors, unchanged: (written out: ~200 calls a token)
            held = plan[1]
            if held[0] is w and held[1] is s and held[2] is b:
                return plan[:2] if plan[0] is not None else None
        fn = getattr(k, self._kernel) if self._kernel_fits(w, s) else None
        plan = self.__dict__["_plan"] = (fn, (w, s, b), version)
        if fn is not None:  # a PyTorch pack made while our kernels were still being built is not needed now
            self.__dict__.pop("_tpack", None)
        return plan[:2] if fn is not None else None

    def _kernel_fits(self, w: torch.Tensor, s: torch.Tensor) -> bool:
        raise NotImplementedError

    def _bf16_gemm(self, x: torch.Tensor) -> torch.Tensor | None:
        """x (..., in) @ W.T (+ b) as a bf16 GEMM (float32 accumulation) on a bf16 copy of W, or None."""
        return None

    def _torch_rows(self, x2: torch.Tensor) -> torch.Tensor | None:
        raise NotImplementedError

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError


class Int8Linear(_KernelLinear):
    """y = x @ (q * scale).T + b with int8 ``q`` (out, in) and float32 ``scale`` (out,)."""

    _kernel, _weights = "int8_linear", ("qweight", "scale")

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                 compute_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2:
            raise ValueError(f"qweight must be a 2-D int8 tensor, got {qweight.dtype} {tuple(qweight.shape)}")
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale.float().contiguous())
        self.register_buffer("scale_c", scale.to(compute_dtype).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.compute_dtype = compute_dtype
        # (CPU only: checked per call, the module may move.) Its AVX512 version reads past a row of in % 16 != 0
        # inputs (torch 2.13 on a Xeon: 17 of 20 random 40-input layers wrong by 1e12): those dequantize instead
        self.use_kernel = _has_int8pack() and self.in_features % 16 == 0

    @staticmethod
    def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row symmetric int8: (q (out, in) int8, scale (out,) float32)."""
        return quantize_rows(w)

    @classmethod
    def from_linear(cls, lin: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16) -> Int8Linear:
        q, s = cls.quantize_weight(lin.weight)
        return cls(q, s, lin.bias, compute_dtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        q, s = self.qweight, self.scale
        k = cpu_kernels() if dtype == torch.float32 and q.device.type == "cpu" else None
        if k is not None and q.is_contiguous() and s.dtype == torch.float32 and s.is_contiguous():
            return k.dequantize_int8(q, s)  # (out, in): the same values, on the kernels' threads
        return q.to(dtype) * s.to(dtype)[:, None]  # (out, in)

    def _kernel_fits(self, w: torch.Tensor, s: torch.Tensor) -> bool:
        """Whole blocks of 32 along the input, float32 scales, no weight of -128 (outside the kernel's sign trick)."""
        return (self.in_features % 32 == 0 and s.dtype == torch.float32 and s.is_contiguous()
                and w.is_contiguous() and w.numel() > 0 and int(w.min()) > -128)

    def _bf16_gemm(self, x: torch.Tensor) -> torch.Tensor | None:
        k = cpu_kernels()
        q, s = self.qweight, self.scale
        if k is None or x.dtype not in (torch.float32, torch.bfloat16) or not (q.is_contiguous() and s.is_contiguous()):
            return None
        y = F.linear(x.to(torch.bfloat16), k.dequantize_int8_bf16(q, s)).to(x.dtype)  # (..., out)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _torch_rows(self, x2: torch.Tensor) -> torch.Tensor | None:
        """PyTorch's fused int8 weight-only kernel, with bfloat16 activations."""
        if not self.use_kernel:
            return None
        y = torch.ops.aten._weight_int8pack_mm(x2.to(self.compute_dtype).contiguous(), self.qweight, self.scale_c)
        return y.to(x2.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per-channel, compute={self.compute_dtype}"


def _has_int4pack() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


_PACK_ROWS = 64  # PyTorch's CPU int4 pack is blocked over 32 (AVX2) or 64 (AVX512) rows: chunks of 64 concatenate


def _torch_int4_pack(q: torch.Tensor) -> torch.Tensor:
    """``_convert_weight_to_int4pack_for_cpu`` of q (out, in) in 0..15, 64 rows at a time where that gives the
    same bytes (checked once): it wants int32 values, and one full-size int32 copy per layer, made and freed for
    ~200 layers, left ~200 MB of freed heap resident (bench/memory.py, STUDIO_KERNELS=0)."""
    conv = torch.ops.aten._convert_weight_to_int4pack_for_cpu
    ok = _torch_int4_pack.__dict__.get("chunks_ok")
    if ok is None:
        t = torch.randint(0, 16, (2 * _PACK_ROWS, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
        ok = _torch_int4_pack.__dict__["chunks_ok"] = torch.equal(
            conv(t, 1), torch.cat([conv(t[:_PACK_ROWS].contiguous(), 1), conv(t[_PACK_ROWS:].contiguous(), 1)]))
    if not ok or q.size(0) % _PACK_ROWS:
        return conv(q.to(torch.int32), 1)
    return torch.cat([conv(q[r:r + _PACK_ROWS].to(torch.int32), 1) for r in range(0, q.size(0), _PACK_ROWS)])


class Int4Linear(_KernelLinear):
    """y = x @ W.T + b with W (out, in) held as 4-bit ``q`` per group of 32 inputs: w = q * d + m (Q4_1).

    Stored in our own layout: ``packed`` (out, in/2) uint8, each group of 32 as 16 bytes, byte j holding q_j in
    its low nibble and q_{j+16} in its high one; ``scales_zeros`` (out, in/32, 2) float32, the (d, m) pairs.
    Up to ``kernel_m`` rows on CPU (decoding, a short prompt) run :mod:`llm_core.kernels`' ``int4_linear``
    (activations quantized to int8 per block of 32, integer dot products); more rows dequantize and run a float GEMM. Without the kernels
    (``STUDIO_KERNELS=0``, no compiler) a few rows go to PyTorch's ``_weight_int4pack_mm_for_cpu`` with bfloat16
    activations, on its own pack of the same 4-bit values, made on first use and kept (the 4-bit weights are then
    held twice)."""

    group: int = 32
    _kernel, _weights = "int4_linear", ("packed", "scales_zeros")

    def __init__(self, packed: torch.Tensor, scales_zeros: torch.Tensor, in_features: int,
                 bias: torch.Tensor | None = None, group: int = 32) -> None:
        super().__init__()
        if group != 32:
            raise ValueError(f"Int4Linear groups 32 inputs (Q4_1), got group={group}")
        out_f = packed.size(0)
        if packed.dtype != torch.uint8 or tuple(packed.shape) != (out_f, in_features // 2) or in_features % 32:
            raise ValueError(f"packed must be (out, in/2) uint8 with in % 32 == 0, got {packed.dtype} "
                             f"{tuple(packed.shape)} for in={in_features}")
        if tuple(scales_zeros.shape) != (out_f, in_features // 32, 2):
            raise ValueError(f"scales_zeros must be (out, in/32, 2), got {tuple(scales_zeros.shape)}")
        self.out_features, self.in_features, self.group = out_f, in_features, group
        self.register_buffer("packed", packed.contiguous())
        self.register_buffer("scales_zeros", scales_zeros.float().contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)

    @staticmethod
    def quantize_weight(w: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q (out, in) int32 in 0..15, d (out, in/group), m (out, in/group)) float32: min/max per group."""
        out_f, in_f = w.shape
        wg = w.detach().float().reshape(out_f, in_f // group, group)  # (out, G, group)
        m, mx = wg.amin(-1), wg.amax(-1)  # (out, G)
        d = ((mx - m) / 15).clamp_min_(1e-12)
        q = ((wg - m[..., None]) / d[..., None]).round_().clamp_(0, 15).to(torch.int32).reshape(out_f, in_f)
        return q, d, m

    @staticmethod
    def pack(q: torch.Tensor) -> torch.Tensor:
        """q (out, in) in 0..15 -> (out, in/2) uint8: per group of 32, byte j = q_j | q_{j+16} << 4."""
        g = q.to(torch.uint8).view(q.size(0), -1, 2, 16)  # (out, G, half, 16)
        return (g[:, :, 0] | (g[:, :, 1] << 4)).reshape(q.size(0), -1)

    def unpack(self) -> torch.Tensor:
        """The 4-bit values q (out, in) uint8 in 0..15."""
        p = self.packed.view(self.out_features, -1, 1, 16)  # (out, G, 1, 16)
        return torch.cat([p & 15, p >> 4], dim=2).reshape(self.out_features, self.in_features)

    @classmethod
    def from_weight(cls, w: torch.Tensor, bias: torch.Tensor | None = None, group: int = 32) -> Int4Linear:
        q, d, m = cls.quantize_weight(w, group)
        return cls(cls.pack(q), torch.stack([d, m], dim=-1), w.size(1), bias, group)

    @classmethod
    def from_linear(cls, lin: nn.Linear, group: int = 32) -> Int4Linear:
        return cls.from_weight(lin.weight, lin.bias, group)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight (out, in) these 4 bits stand for: q * d + m per group."""
        sz = self.scales_zeros.to(dtype)  # (out, G, 2)
        q = self.unpack().to(dtype).view(self.out_features, -1, self.group)  # (out, G, 32)
        return torch.addcmul(sz[..., 1:], q, sz[..., :1]).view(self.out_features, self.in_features)

    @classmethod
    def fits(cls, in_features: int, out_features: int) -> bool:
        """Whole groups along the input, outputs in blocks of 16 (PyTorch's int4 kernel, the fallback, wants it)."""
        return _has_int4pack() and in_features % cls.group == 0 and out_features % 16 == 0

    @classmethod
    def supports(cls, lin: nn.Module) -> bool:
        return type(lin) is nn.Linear and cls.fits(lin.in_features, lin.out_features) and lin.weight.device.type == "cpu"

    def _kernel_fits(self, w: torch.Tensor, s: torch.Tensor) -> bool:
        """Our layout as built (not cast by ``.to(dtype)``)."""
        return w.dtype == torch.uint8 and w.is_contiguous() and s.dtype == torch.float32 and s.is_contiguous()

    def _torch_rows(self, x2: torch.Tensor) -> torch.Tensor:
        """PyTorch's CPU int4 kernel, with bfloat16 activations, on its own pack of the same values."""
        packed, sz = self._torch_pack()
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16).contiguous(), packed, self.group,
                                                          sz).to(x2.dtype)

    def _torch_pack(self) -> tuple[torch.Tensor, torch.Tensor]:
        """PyTorch's int4 pack of the same values and its bfloat16 (scale d, zero m + 8d) (in/32, out, 2): it
        computes (q - 8) * d + zero. Made on first use (kernels off) and kept until the weights change."""
        w, s = self._buffers["packed"], self._buffers["scales_zeros"]
        version = _versions(w, s)
        cached = self.__dict__.get("_tpack")
        if cached is None or cached[0] is not w or cached[1] is not s or cached[2] != version:
            packed = _torch_int4_pack(self.unpack())  # (out, in/2) uint8, its own order
            d, m = s.float().unbind(-1)  # (out, G) each
            sz = torch.stack([d, m + 8 * d], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)  # (G, out, 2)
            cached = self.__dict__["_tpack"] = (w, s, version, packed, sz)
        return cached[3], cached[4]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int4 groups of {self.group} (q*d+m)"


class Int8Embedding(nn.Module):
    """Token embedding over an int8 table: row i = q[i] * scale[i], looked up then dequantized (a few rows).

    With tied embeddings it holds the *same* ``qweight``/``scale`` tensors as the lm_head's :class:`Int8Linear`,
    so the table exists once. ``.weight`` is a dequantized float copy built on each access (for code that only
    wants a shape, dtype or device; avoid it in hot paths)."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2:
            raise ValueError(f"qweight must be a 2-D int8 tensor, got {qweight.dtype} {tuple(qweight.shape)}")
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.out_dtype = dtype

    @classmethod
    def tied_to(cls, head: Int8Linear, dtype: torch.dtype = torch.float32) -> Int8Embedding:
        """An embedding that shares ``head``'s int8 matrix (vocab, C) and scales: no copy."""
        return cls(head.qweight, head.scale, dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.out_dtype

    @property
    def weight(self) -> torch.Tensor:
        return (self.qweight.to(self.out_dtype) * self.scale.to(self.out_dtype)[:, None]).requires_grad_(False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (...) -> (..., C) in ``dtype``."""
        return F.embedding(idx, self.qweight).to(self.out_dtype) * F.embedding(idx, self.scale[:, None]).to(
            self.out_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-row"


def _linear_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every plain nn.Linear, found by name so no reference to the module is kept."""
    slots = []
    for _, mod in model.named_modules():
        for name, child in mod.named_children():
            if type(child) is nn.Linear:
                slots.append((mod, name))
    return slots


@torch.no_grad()
def quantize_model(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Convert ``model`` in place for inference in ``mode`` ("fp32", "bf16", "int8", "int4"); returns it (eval).

    int4 is int8 with every linear whose input width divides by 32 in 4 bits instead (:class:`Int4Linear`).
    int8 replaces each plain ``nn.Linear`` weight by weight (the float weight is released as soon as its int8
    copy exists, unless the caller still holds it) and the token embedding of a GPT; a tied lm_head shares the
    embedding's int8 table."""
    m = parse_mode(mode)
    model.eval()
    if m == "fp32":
        return model.float()
    if m == "bf16":
        return model.to(torch.bfloat16)
    model.float()
    emb = getattr(model, "tok_emb", None)
    head = getattr(model, "lm_head", None)
    tied = (type(emb) is nn.Embedding and type(head) is nn.Linear and head.weight is emb.weight)
    if tied:  # quantize the shared (vocab, C) table once; both modules use it
        model.lm_head = Int8Linear.from_linear(head)
        del head
        model.tok_emb = Int8Embedding.tied_to(model.lm_head)
    elif type(emb) is nn.Embedding:
        model.tok_emb = Int8Embedding(*quantize_rows(emb.weight))
    del emb
    for parent, name in _linear_slots(model):
        lin = getattr(parent, name)
        four = m == "int4" and Int4Linear.supports(lin)
        setattr(parent, name, Int4Linear.from_linear(lin) if four else Int8Linear.from_linear(lin))
        del lin  # the old module is released here
    # the float tensors left (norms, biases, position table) get private copies: weights loaded from a file
    # mapping keep all of it resident (every page read so far) for as long as any one of them lives
    copies: dict[int, nn.Parameter] = {}
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                if id(p) not in copies:
                    copies[id(p)] = nn.Parameter(p.detach().clone(), requires_grad=False)
                mod._parameters[name] = copies[id(p)]
    return model


def model_mode(model: nn.Module) -> Mode:
    """Which precision a model is running in (for labels in the UI and benchmarks)."""
    if any(isinstance(m, Int4Linear) for m in model.modules()):
        return "int4"
    if any(isinstance(m, (Int8Linear, Int8Embedding)) for m in model.modules()):
        return "int8"
    p = next(model.parameters(), None)
    return "bf16" if p is not None and p.dtype == torch.bfloat16 else "fp32"


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes held by a model's parameters and buffers, per dtype (tensors shared by two modules count once)."""
    out: dict[str, int] = {}
    seen: set[int] = set()
    for t in list(model.parameters()) + list(model.buffers()):
        key = t.data_ptr() if t.device.type != "meta" and t.numel() else id(t)
        if key in seen:
            continue
        seen.add(key)
        name = str(t.dtype).removeprefix("torch.")
        out[name] = out.get(name, 0) + t.numel() * t.element_size()
    return out


def load_quantized(name_or_path: str, mode: str = "int8", progress=None):  # noqa: ANN001, ANN201 - (GPT, Tokenizer)
    """``quantize_model(*load_model(name_or_path))`` without the float32 model in memory beside the quantized
    one: see :func:`llm_core.weights.quantized_load.load_quantized`."""
    from llm_core.weights.quantized_load import load_quantized as _load

    return _load(name_or_path, mode, progress)
