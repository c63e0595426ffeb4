"""The matmul kernels behind every projection of the model: one entry point, :func:`linear`.

There is one implementation of the block math (``attention.py``, ``block.py``); training, prompt prefill and
one-token decoding all run it. What differs between them is only *which kernel* multiplies a plain
``nn.Linear``'s weight, and that choice lives here:

- training (gradients wanted) and anything not on a CPU: ``F.linear``, as autograd and autocast expect;
- one row in float32 (decoding): :func:`row_split`, so every core streams its share of the weight;
- many rows with bfloat16/float16 weights (prefill in bf16): on a CPU that multiplies bf16 in hardware
  (``NATIVE_BF16``: AMX or AVX512-BF16), oneDNN's bf16 GEMM as it is; elsewhere the weight is upcast to float32 on
  the fly (CPUs without native bf16 math run a bf16 GEMM ~8x slower than a float32 one);
- a batched decode step (one token in each of up to ``BATCH_ROWS`` rows): bf16 stays bf16, where upcasting the
  whole weight per step would cost more than it saves; float32 runs ``mm(W, x.T)``, which MKL runs without
  repacking W on every call (4 rows of a SmolLM2 step: 128 ms of matmuls instead of 239, one thread). Prompts
  keep ``F.linear``, so a prompt's logits do not depend on how many tokens it has;
- otherwise ``F.linear``.

Where :mod:`llm_core.kernels` is built (an AVX2 CPU with a compiler; ``STUDIO_KERNELS=0`` turns it off) and the
weight's dtype is in ``OWN_KERNEL_DTYPES`` (float32 and bfloat16), one row or a batched decode step
runs its GEMV (``float_linear``: float32 accumulation, output rows split over the kernels' own threads) instead of
``row_split`` / ``mm`` / ``F.linear``, and a bf16 prompt's weight is widened there (``widen_bf16``).

A short prompt (:func:`short_prompt_threads`, entered by ``GPT.forward``) runs its elementwise ops on one thread;
:func:`linear` gives the matmuls all threads back.

Modules that are not a plain ``nn.Linear`` (``Int8Linear``/``Int4Linear`` with their own weight-only kernels,
LoRA wrappers) and modules with hooks are called as modules, so quantized, fine-tuned and inspected models keep
working through the same code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_core.kernels import cpu_kernels

__all__ = ["all_threads", "linear", "one_thread", "row_blocks", "row_split", "short_prompt_threads", "thread_setter"]

BATCH_ROWS = 8  # the most rows a batched decode step runs with the step kernels
# weight dtypes that run llm_core.kernels' float GEMV. With OpenMP threads (session 9) it measured no better than
# row_split / F.linear; on the kernels' own spinning threads (session 10) SmolLM2 decodes a token in 38-45 ms instead
# of 74 (fp32) and 42-51 instead of 61 (bf16) on the shared 2-core VM, OMP_WAIT_POLICY=PASSIVE: each row_split bmm
# is an OpenMP region, and waking its sleeping worker costs more than the multiply
OWN_KERNEL_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)
SHORT_PROMPT_ROWS = 256  # up to this many rows, a prompt's elementwise ops run on one thread (short_prompt_threads)
_threads = threading.local()  # .inside: (thread setter, the count matmuls get back) in short_prompt_threads


def _native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16), where oneDNN runs a bf16 prompt's
    GEMM as it is. bf16 x bf16 products are exact in its float32 accumulators, so it computes what widening the
    weight does, in another order: 128 x 576 @ 576 x 1536 took 0.31 ms against 1.15 (float32) and 2.1 (widened)
    on a 2-core Xeon with AMX (SmolLM2's 128-token bf16 prefill: 0.11-0.15 s, llama.cpp's f16 0.23-0.30)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # (private helpers: absent in another torch means "do not rely on it")
        return False


NATIVE_BF16 = _native_bf16()


def linear(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``m(x)`` for a projection ``m``: x (..., in) -> (..., out), through the fastest exact kernel for the case,
    on all threads (also inside :func:`short_prompt_threads`)."""
    inside = _inside()
    if inside is None:
        return _linear(m, x)
    set_threads, P = inside
    prev = set_threads(P)
    try:
        return _linear(m, x)
    finally:
        set_threads(prev)


def thread_setter() -> Callable[[int], int]:
    """A function that sets the calling thread's thread count for ATen's ops and returns the previous one.

    Our kernels' ``set_thread_count`` changes only this thread's OpenMP setting. ``torch.set_num_threads`` (the
    fallback without them) also stores a process-wide count that every thread starting its first parallel op
    copies, so a thread started while a short section had set 1 would keep one thread for good."""
    k = cpu_kernels()
    if k is not None:
        return k.set_thread_count

    def set_torch(n: int) -> int:
        prev = torch.get_num_threads()
        torch.set_num_threads(n)
        return prev
    return set_torch


@contextmanager
def short_prompt_threads(x: torch.Tensor) -> Iterator[None]:
    """Run the block containing this on one thread, except :func:`linear` and :func:`all_threads` sections, when x
    (B, T, C) is a short prompt on a CPU without gradients (T >= 2, B * T <= ``SHORT_PROMPT_ROWS``, more than one
    thread).

    Why: a prompt's elementwise ops (norms, RoPE, SiLU, residual adds: ~800 per SmolLM2 prefill) are each an
    OpenMP region when their tensor passes ATen's grain size, and for a short prompt waking the second core costs
    more than the op (~160 us each on the shared 2-core VM under OMP_WAIT_POLICY=PASSIVE); matmuls and attention
    are big enough to share. Only the calling thread's setting changes (:func:`thread_setter`)."""
    # (checked first: training under torch.compile must find nothing here to trace)
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or x.device.type != "cpu":
        yield
        return
    P = torch.get_num_threads()
    rows = x.numel() // max(1, x.size(-1))
    if P < 2 or x.dim() < 2 or x.size(-2) < 2 or rows > SHORT_PROMPT_ROWS or _inside() is not None:
        yield  # (a decode step, B rows of one token, keeps its threads: its attention decides for itself)
        return
    set_threads = thread_setter()
    try:
        _threads.inside = (set_threads, P)
        set_threads(1)
        yield
    finally:
        _threads.inside = None
        set_threads(P)


@contextmanager
def one_thread(when: bool = True) -> Iterator[None]:
    """This thread's ATen ops on one thread inside (restored after), when ``when`` and it has more than one: for work
    too small to share (a decoded token's attention, ``attention.ONE_THREAD_KEYS``). :func:`thread_setter`."""
    if not when or torch.get_num_threads() < 2:
        yield
        return
    set_threads = thread_setter()
    prev = set_threads(1)
    try:
        yield
    finally:
        set_threads(prev)


@contextmanager
def all_threads() -> Iterator[None]:
    """All threads back for the work inside (attention of a prompt), within :func:`short_prompt_threads`."""
    inside = _inside()
    if inside is None:
        yield
        return
    set_threads, P = inside
    prev = set_threads(P)
    try:
        yield
    finally:
        set_threads(prev)


def _inside() -> tuple[Callable[[int], int], int] | None:
    """(thread setter, all threads) inside :func:`short_prompt_threads` on this thread, else None. Training and
    torch.compile never look (a thread-local would break a compiled graph; sections are inference-only)."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    return getattr(_threads, "inside", None)


def _linear(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(m) is not nn.Linear or m._forward_hooks or m._forward_pre_hooks:
        return m(x)  # quantized / LoRA / hooked: the module knows best
    w, b = m._parameters["weight"], m._parameters["bias"]  # (nn.Module.__getattr__ is slow: ~200 calls a token)
    if x.device.type != "cpu" or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)):
        return F.linear(x, w, b)  # training: autograd and autocast see the usual op
    in_f = x.size(-1)
    rows = x.numel() // in_f
    step = x.dim() == 3 and x.size(1) == 1 and rows <= BATCH_ROWS  # a batched decode step: one token per row
    if OWN_KERNEL_DTYPES and (rows == 1 or step) and w.dtype in OWN_KERNEL_DTYPES:
        k = cpu_kernels()
        if k is not None and w.is_contiguous():
            return k.float_linear(x, w, b)  # (..., out) in x's dtype
    if rows == 1 and w.dtype == torch.float32:
        blocks = _cached_blocks(m, w)
        if blocks is not None:
            y = torch.bmm(x.reshape(1, 1, in_f).expand(blocks.size(0), 1, in_f), blocks)  # (P, 1, out/P)
            y = y.view(*x.shape[:-1], w.size(0))  # (..., out)
            return y if b is None else y.add_(b)
    if rows > 1 and not step and w.dtype in (torch.bfloat16, torch.float16):
        if NATIVE_BF16 and w.dtype == x.dtype == torch.bfloat16:
            return F.linear(x, w, b)  # oneDNN on AMX / AVX512-BF16: float32 accumulation
        k = cpu_kernels() if w.dtype == torch.bfloat16 and w.is_contiguous() else None
        wf = k.widen_bf16(w) if k is not None else w.float()  # (out, in) float32, exact either way
        y = F.linear(x.float(), wf, None if b is None else b.float())
        return y.to(x.dtype)
    if rows > 1 and step and w.dtype == torch.float32:
        y = torch.mm(w, x.reshape(rows, in_f).t()).t().reshape(*x.shape[:-1], w.size(0))  # (..., out)
        return y if b is None else y.add_(b)
    return F.linear(x, w, b)


def row_blocks(w: torch.Tensor, P: int) -> torch.Tensor | None:
    """W (out, in) viewed as P row blocks, transposed for bmm: (P, in, out/P), a view; None when it cannot be."""
    out_f, in_f = w.shape
    if P < 2 or out_f % P or not w.is_contiguous():
        return None
    return w.view(P, out_f // P, in_f).transpose(1, 2)


def _cached_blocks(m: nn.Module, w: torch.Tensor) -> torch.Tensor | None:
    """:func:`row_blocks` of ``m``'s weight, kept on the module: two view ops less per projection per token.

    Keyed on the weight's memory address, shape and the thread count, so a new weight (loading, ``.to(dtype)``,
    which swaps ``param.data``) or another thread count is seen; in-place updates show through the view."""
    P = torch.get_num_threads()
    key = (w.data_ptr(), w.shape, P)
    hit = m.__dict__.get("_row_blocks")
    if hit is None or hit[0] != key:
        hit = m.__dict__["_row_blocks"] = (key, row_blocks(w, P))
    return hit[1]


def row_split(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor | None:
    """x (1, in) @ w.T (+ b) as a batched matmul over P row blocks of ``w`` (out, in), P = the thread count;
    None when that does not apply (one thread, rows not divisible by P, a non-contiguous weight).

    MKL runs a one-row float32 matmul (a GEMV) on a single core, and decoding is bound by reading weights from
    memory: one core draws ~20 GB/s here, two ~35 GB/s. ``bmm`` parallelises over its batch axis, so viewing
    W (out, in) as P blocks (P, out/P, in) -- a view, no copy -- lets every core stream its own share of the rows.
    Measured on SmolLM2-135M with 2 threads: 21.5 ms of matmuls per token instead of 36.7."""
    P = torch.get_num_threads()
    out_f, in_f = w.shape
    blocks = row_blocks(w, P)  # (P, in, out/P) view
    if blocks is None:
        return None
    y = torch.bmm(x.expand(P, 1, in_f), blocks).view(1, out_f)  # (P, 1, out/P) -> (1, out)
    return y if b is None else y.add_(b)
