"""Our own CPU kernels for decoding (a few activation rows times a big weight), built on first use.

``cpu_kernels()`` returns the compiled module or None (disabled by ``STUDIO_KERNELS=0``, no compiler, not an
AVX2 x86 CPU, or the build failed: logged once). It has

- ``int8_linear(x (M, in), qweight (out, in) int8, scale (out,) float32, bias | None) -> (M, out) float32``:
  the activation rows quantized to int8 per block of 32 (llama.cpp's q8_0), integer dot products;
  ``in`` must divide by 32 and the weights must lie in -127..127;
- ``int4_linear(x (M, in), packed (out, in/2) uint8, scales_zeros (out, in/32, 2) float32, bias | None)
  -> (M, out) float32``: Q4_1 weights (w = q * d + m per block of 32, q in 0..15; per block 16 bytes, byte j =
  q_j | q_{j+16} << 4, and the (d, m) pairs) times the same q8 activations;
- ``float_linear(x (M, in), w (out, in) bf16 | fp32, bias | None) -> (M, out) float32``;
- ``dequantize_int8`` / ``dequantize_int8_bf16`` / ``widen_bf16``: whole weights in float32 / bf16, on all threads;
- ``rms_norm(x, w, eps)`` and ``rope(x (B, T, H, hs), cos, sin)``: a decode step's norms and rotations in one call
  each, single-threaded (used up to ``llm_core.model.norm.KERNEL_ROWS`` rows by ``norm.RMSNorm`` and
  ``attention.rope_kernel``).

The GEMVs split the output rows over ``torch.get_num_threads()`` threads. ``isa()`` says which build runs: "avx2" (8 lanes)
or "avx512" (16 lanes with VNNI, where the CPU has AVX512 F/BW/VL/DQ/VNNI; ``STUDIO_KERNELS_AVX512=0`` forces avx2). The algorithms are explained in
``gemv.cpp``; :class:`llm_core.generation.quantize.Int8Linear`, :class:`~llm_core.generation.quantize.Int4Linear`
and :func:`llm_core.model.fastpath.linear` use them.
"""

from llm_core.kernels.build import (
    cpu_kernels,
    enabled,
    identity,
    prepare_in_background,
    unavailable_reason,
)

__all__ = ["cpu_kernels", "enabled", "identity", "unavailable_reason", "prepare_in_background"]
