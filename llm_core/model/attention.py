"""Causal self-attention for both families, with RoPE (llama), grouped-query attention and a KV cache.

Qwen options (``ModelConfig``): ``qkv_bias`` (Qwen2: biases on q/k/v, none on o), ``qk_norm`` (Qwen3: RMSNorm over
each head of q and k before RoPE) and a ``head_dim`` that need not be n_embd / n_head. Gemma 3 options: sliding-window
layers (a query sees the last ``sliding_window`` positions) with their own RoPE base, and the attention scale
1/sqrt(query_pre_attn_scalar).

Shapes: B batch, T new tokens, S = cache.pos + T keys seen, nh query heads, nkv key/value heads, hs head size.

This is the only attention code: training, prompt prefill and one-token decoding all run
:meth:`CausalSelfAttention.forward`; the projections go through :func:`llm_core.model.fastpath.linear`, which picks
the matmul kernel for the case (training, one decoding row, a many-row prefill, int8/int4 weights).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_core.model.config import ModelConfig
from llm_core.model.fastpath import all_threads, linear, one_thread
from llm_core.model.kv_cache import KVCache
from llm_core.model.norm import RMSNorm, elementwise_kernels

# One new token's attention on a CPU runs on one thread up to this many keys (B x S). It is ~9 x S x hs
# multiply-adds, too little to share: with 2 threads, SDPA's CPU kernel splits it over both cores and waking the
# second one costs more than the work (SmolLM2, 128-1000 keys, shared 2-core VM: 50-290 us per call on one thread,
# 120-440 on two; 30 calls per token; 5-6% less time per int8 token). Only the calling thread's OpenMP setting
# changes (fastpath.one_thread), so other Python threads keep theirs; it is restored at once.
# A side effect: one-token attention no longer depends on the thread count (SDPA splits its sums by it).
ONE_THREAD_KEYS = 1024

# ---------------------------------------------------------------------------------------------------------------
# Rotary position embedding (Hugging Face Llama convention: the two halves of a head are rotated as pairs)
# ---------------------------------------------------------------------------------------------------------------


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for every position up to ``max_len``.

    One instance is shared by all layers (the tables are ~4 MB for SmolLM2's 8k context). The tables are
    non-persistent buffers kept in float32 whatever the model dtype, and cast to the activations' dtype on use,
    exactly like ``transformers``' ``LlamaRotaryEmbedding``. ``sin`` has rotate_half's sign folded into its first
    half (-sin, +sin), so :func:`apply_rope` needs one roll instead of a split, a negation and a concatenation.
    Gemma 3: ``factor`` is linear scaling (frequencies / factor) and ``local_theta`` a second pair of tables for
    the sliding-window layers (``forward(..., local=True)``).
    """

    cos: torch.Tensor
    sin: torch.Tensor
    cos_local: torch.Tensor
    sin_local: torch.Tensor

    def __init__(self, head_dim: int, max_len: int, theta: float, factor: float = 1.0,
                 local_theta: float | None = None) -> None:
        super().__init__()
        self.head_dim, self.max_len, self.theta = head_dim, max_len, theta
        self.factor, self.local_theta = factor, local_theta
        for name in ("cos", "sin", "cos_local", "sin_local"):
            self.register_buffer(name, torch.empty(0), persistent=False)
        if self.cos.device.type != "meta":  # built on 'meta' for loading: GPT.from_state_dict calls reset()
            self.reset()

    def _tables(self, theta: float, factor: float, device: torch.device | str | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float()
                                    / self.head_dim))  # (hs/2,)
        inv_freq = inv_freq / factor  # linear scaling (1: plain RoPE)
        t = torch.arange(self.max_len, dtype=torch.int64, device=device).float()  # (L,)
        freqs = torch.outer(t, inv_freq)  # (L, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (L, hs)
        sin = freqs.sin()  # (L, hs/2)
        return emb.cos(), torch.cat((-sin, sin), dim=-1)  # (L, hs) each; sin signed

    def reset(self, device: torch.device | str | None = None) -> None:
        """(Re)build the tables in float32 on ``device`` (used after loading on the meta device)."""
        self.cos, self.sin = self._tables(self.theta, self.factor, device)
        if self.local_theta is not None:
            self.cos_local, self.sin_local = self._tables(self.local_theta, 1.0, device)
        else:  # none: empty, but real (a loader checks that nothing is left on 'meta')
            self.cos_local, self.sin_local = torch.empty(0, device=device), torch.empty(0, device=device)

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module signature
        # model.to(bfloat16) would round the tables; rebuild them in float32 on the (possibly new) device instead
        super()._apply(fn, recurse)
        if self.cos.device.type != "meta":
            self.reset(self.cos.device)
        return self

    def forward(self, start: int | torch.Tensor, length: int, dtype: torch.dtype, local: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/signed sin for positions ``start .. start+length-1``, each (length, hs); ``local``: the sliding-window
        layers' tables (the global ones when there is no ``local_theta``). ``start`` may be per-row positions
        (B, length) instead (rows at their own lengths: ``KVCache(per_row=True)``)."""
        cos, sin = (self.cos_local, self.sin_local) if local and self.local_theta is not None else (self.cos, self.sin)
        if isinstance(start, torch.Tensor):  # per-row positions (B, T): (B, 1, T, hs) each, broadcast over heads
            return cos[start].unsqueeze(1).to(dtype), sin[start].unsqueeze(1).to(dtype)
        return cos[start:start + length].to(dtype), sin[start:start + length].to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys ``x`` (..., T, hs) by position; cos and the signed sin are (T, hs).

    HF's ``x * cos + rotate_half(x) * sin`` with rotate_half(x1, x2) = (-x2, x1): rolling x by hs/2 gives
    (x2, x1), and the sign lives in the table, so the result is bit-identical."""
    return x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin


def rope_kernel(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`apply_rope` of q (B, T, nh, hs) and k (B, T, nkv, hs), before their transpose, by
    :mod:`llm_core.kernels`' ``rope`` (the same math and rounding in one call instead of ~6 ATen ops each, 60 times
    per decoded SmolLM2 token); None where it does not apply (gradients, not a CPU, per-row positions, another
    dtype, more than ``norm.KERNEL_ROWS`` tokens, kernels not built), and the caller rotates with :func:`apply_rope`."""
    T, hs = q.size(1), q.size(-1)
    if cos.shape != (T, hs) or sin.shape != (T, hs):
        return None
    kern = elementwise_kernels(q.size(0) * T, q, k, cos, sin)
    return None if kern is None else (kern.rope(q, cos, sin), kern.rope(k, cos, sin))


# ---------------------------------------------------------------------------------------------------------------
# Causal mask (the KV cache is in kv_cache.py)
# ---------------------------------------------------------------------------------------------------------------


def causal_mask(T: int, S: int, device: torch.device | str | None = None, window: int | None = None) -> torch.Tensor:
    """Boolean (T, S) mask, True = may attend: query i (at absolute position S-T+i) sees keys 0..S-T+i; with a
    sliding ``window``, only the last ``window`` of them (its own position included)."""
    q_pos = torch.arange(S - T, S, device=device).unsqueeze(1)  # (T, 1)
    k_pos = torch.arange(S, device=device).unsqueeze(0)  # (1, S)
    mask = k_pos <= q_pos  # (T, S)
    return mask & (k_pos > q_pos - window) if window is not None else mask


# ---------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
          dropout_p: float, enable_gqa: bool, scale: float | None = None) -> torch.Tensor:
    """Fused attention. bf16 training on the CPU runs it in fp32: PyTorch's CPU flash-attention backward is ~5x
    slower in bf16 than in fp32 at these sizes (the matmuls around it stay bf16 under autocast)."""
    cpu_bf16 = q.device.type == "cpu" and (torch.is_autocast_enabled("cpu") or v.dtype == torch.bfloat16)
    if cpu_bf16 and torch.is_grad_enabled() and (q.requires_grad or v.requires_grad):
        with torch.autocast("cpu", enabled=False):  # (autocast would cast the fp32 inputs back to bf16)
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=is_causal,
                                               dropout_p=dropout_p, enable_gqa=enable_gqa, scale=scale)
        return y.to(torch.bfloat16)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                                          enable_gqa=enable_gqa, scale=scale)


class CausalSelfAttention(nn.Module):
    """Multi-head (gpt2) or grouped-query (llama) causal self-attention."""

    def __init__(self, config: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        # Gemma 3: a sliding layer sees the last ``sliding_window`` positions; scale 1/sqrt(query_pre_attn_scalar)
        self.sliding_window = config.sliding_window if config.is_sliding(layer) else None
        self.scale = config.query_pre_attn_scalar ** -0.5 if config.query_pre_attn_scalar else None  # None: 1/sqrt(hs)
        assert self.n_kv_head is not None and self.head_dim is not None
        d, kv_dim = config.n_embd, config.n_kv_head * self.head_dim
        self.q_proj = nn.Linear(d, config.n_head * self.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, kv_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, kv_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.n_head * self.head_dim, d, bias=config.bias)
        # Qwen3: one (hs,) RMSNorm weight shared by all heads of q (and one for k); None elsewhere
        off = config.norm_unit_offset  # Gemma: scale by (1 + weight)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps, off) if config.qk_norm else None  # type: ignore[arg-type]
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps, off) if config.qk_norm else None  # type: ignore[arg-type]
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def _plain_projections(self) -> bool:
        """True unless something (LoRA, quantization) has replaced a projection with its own module."""
        return all(type(m) is nn.Linear for m in (self.q_proj, self.k_proj, self.v_proj))

    def _qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project x (B, T, C) to q (B, nh, T, hs) and k, v (B, nkv, T, hs), rotated when ``rope`` is given."""
        B, T, _ = x.shape
        if self.training and torch.is_grad_enabled() and self._plain_projections():
            # training: one (C, (nh + 2 nkv) hs) matmul instead of three, forward and backward (nanoGPT's c_attn);
            # the concatenated weight is a fresh tensor each step, so the parameters stay separate for HF/LoRA
            w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
            b = (torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
                 if self.q_proj.bias is not None else None)
            nq, nkv = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
            q, k, v = F.linear(x, w, b).split([nq, nkv, nkv], dim=-1)  # (B, T, nq), (B, T, nkv) x2
        else:
            q, k, v = linear(self.q_proj, x), linear(self.k_proj, x), linear(self.v_proj, x)
        q = q.view(B, T, self.n_head, self.head_dim)  # (B, T, nh, hs)
        k = k.view(B, T, self.n_kv_head, self.head_dim)  # (B, T, nkv, hs)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        if self.q_norm is not None and self.k_norm is not None:  # per head, over hs, before the rotation
            q, k = self.q_norm(q), self.k_norm(k)
        rotated = rope is not None and rope_kernel(q, k, *rope)  # (B, T, nh, hs), (B, T, nkv, hs): the kernels'
        if rotated:
            q, k = rotated
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, nh, T, hs), (B, nkv, T, hs)
        if rope is not None and not rotated:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). With a cache, x holds the tokens at positions cache.pos .. cache.pos+T-1."""
        B, T, C = x.shape
        q, k, v = self._qkv(x, rope)
        past, mask = 0, None
        if cache is not None:
            past, mask = cache.pos, cache.mask  # mask: rows at their own lengths (B, 1, T, S); else None
            k, v = cache.update(layer, k, v, self.sliding_window)  # (B, nkv, S, hs); S = past + T (sliding: <= w-1+T)
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        win = self.sliding_window  # None: full attention
        if mask is not None and win is not None:
            mask = cache.window_mask(win)  # type: ignore[union-attr]  # per row, and only the last `win` keys
        if T == 1 and not (self.training and self.dropout > 0):
            # one new token sees every key (per-row: its row's, by the (B, 1, 1, S) mask). The query heads that share
            # a kv head go on the "time" axis, (B, nh, 1, hs) -> (B, nkv, n_rep, hs): one SDPA call serves them all
            if win is not None and mask is None and k.size(2) > win:  # sliding layer: only the last `win` keys
                k, v = k[:, :, -win:], v[:, :, -win:]  # (B, nkv, win, hs)
            q = q.reshape(B, nkv, nh // nkv, hs)  # (B, nkv, n_rep, hs)
            with one_thread(B * k.size(2) <= ONE_THREAD_KEYS and x.device.type == "cpu"):  # see ONE_THREAD_KEYS
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)  # (B, nkv, n_rep, hs)
        else:
            if mask is not None:  # rows at their own lengths: the cache's per-row mask
                is_causal = False
            elif past == 0 and (win is None or T <= win):  # plain prefill: the fused causal path
                mask, is_causal = None, True
            else:  # after a non-empty cache (SDPA's is_causal would align top-left) or past a sliding window
                mask, is_causal = causal_mask(T, k.size(2), x.device, win), False
            with all_threads():  # (a short prompt's elementwise ops run on one thread: fastpath.short_prompt_threads)
                y = _sdpa(q, k, v, mask, is_causal, self.dropout if self.training else 0.0, nkv != nh,
                          self.scale)  # (B, nh, T, hs)
            y = y.transpose(1, 2)  # (B, T, nh, hs)
        y = y.reshape(B, T, nh * hs)  # (B, T, nh*hs); by shape: CUDA kernels may return another memory layout
        y = linear(self.o_proj, y)  # (B, T, C)
        return self.resid_dropout(y) if self.training and self.dropout > 0 else y

    @torch.no_grad()
    def attention_probs(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
                        ) -> torch.Tensor:
        """Explicit softmax attention probabilities (B, nh, T, T) for the UI heatmap (no cache, no dropout)."""
        T = x.size(1)
        q, k, _ = self._qkv(x, rope)
        k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, nh, T, hs)
        scale = self.scale if self.scale is not None else 1 / math.sqrt(self.head_dim)
        att = (q @ k.transpose(-2, -1)).float() * scale  # (B, nh, T, T)
        att = att.masked_fill(~causal_mask(T, T, x.device, self.sliding_window), float("-inf"))
        return att.softmax(dim=-1)
