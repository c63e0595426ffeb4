"""Causal self-attention for both families, with RoPE (llama), grouped-query attention and a KV cache.

Qwen options (``ModelConfig``): ``qkv_bias`` (Qwen2: biases on q/k/v, none on o), ``qk_norm`` (Qwen3: RMSNorm over
each head of q and k before RoPE) and a ``head_dim`` that need not be n_embd / n_head.

Shapes: B batch, T new tokens, S = cache.pos + T keys seen, nh query heads, nkv key/value heads, hs head size.

This is the only attention code: training, prompt prefill and one-token decoding all run
:meth:`CausalSelfAttention.forward`; the projections go through :func:`llm_core.fastpath.linear`, which picks
the matmul kernel for the case (training, one decoding row, a many-row prefill, int8/int4 weights).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_core.config import ModelConfig
from llm_core.fastpath import linear
from llm_core.norm import RMSNorm

# ---------------------------------------------------------------------------------------------------------------
# Rotary position embedding (Hugging Face Llama convention: the two halves of a head are rotated as pairs)
# ---------------------------------------------------------------------------------------------------------------


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for every position up to ``max_len``.

    One instance is shared by all layers (the tables are ~4 MB for SmolLM2's 8k context). The tables are
    non-persistent buffers kept in float32 whatever the model dtype, and cast to the activations' dtype on use,
    exactly like ``transformers``' ``LlamaRotaryEmbedding``. ``sin`` has rotate_half's sign folded into its first
    half (-sin, +sin), so :func:`apply_rope` needs one roll instead of a split, a negation and a concatenation.
    """

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, head_dim: int, max_len: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.max_len, self.theta = head_dim, max_len, theta
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        if self.cos.device.type != "meta":  # built on 'meta' for loading: GPT.from_state_dict calls reset()
            self.reset()

    def reset(self, device: torch.device | str | None = None) -> None:
        """(Re)build the tables in float32 on ``device`` (used after loading on the meta device)."""
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float()
                                         / self.head_dim))  # (hs/2,)
        t = torch.arange(self.max_len, dtype=torch.int64, device=device).float()  # (L,)
        freqs = torch.outer(t, inv_freq)  # (L, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (L, hs)
        sin = freqs.sin()  # (L, hs/2)
        self.cos, self.sin = emb.cos(), torch.cat((-sin, sin), dim=-1)  # (L, hs) each; sin signed

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module signature
        # model.to(bfloat16) would round the tables; rebuild them in float32 on the (possibly new) device instead
        super()._apply(fn, recurse)
        if self.cos.device.type != "meta":
            self.reset(self.cos.device)
        return self

    def forward(self, start: int, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/signed sin for positions ``start .. start+length-1``, each (length, hs)."""
        return self.cos[start:start + length].to(dtype), self.sin[start:start + length].to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys ``x`` (..., T, hs) by position; cos and the signed sin are (T, hs).

    HF's ``x * cos + rotate_half(x) * sin`` with rotate_half(x1, x2) = (-x2, x1): rolling x by hs/2 gives
    (x2, x1), and the sign lives in the table, so the result is bit-identical."""
    return x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin


# ---------------------------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------------------------


class KVCache:
    """Keys/values for every layer, so decoding one token costs O(S) instead of O(S^2).

    ``pos`` is how many positions are filled; the model advances it by T after each forward. ``max_len`` is the
    limit; memory is held only for what is used: the buffers start at ``min(max_len, initial)`` positions and
    double when a write needs more (a default cache for SmolLM2's 8,192-token context would otherwise take
    377 MB up front; a 262-token chat takes 12 MB).
    """

    initial: int = 256  # positions allocated at first

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        cap = min(max_len, self.initial)
        shape = (batch_size, n_kv_head, cap, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]  # (B, nkv, cap, hs) each
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.batch_size, self.max_len, self.pos = batch_size, max_len, 0

    @property
    def capacity(self) -> int:
        """Positions allocated now (<= max_len)."""
        return self.k[0].size(2) if self.k else self.max_len

    def _grow(self, need: int) -> None:
        cap = min(self.max_len, max(need, 2 * self.capacity))
        for buf in (self.k, self.v):
            for i, old in enumerate(buf):
                new = old.new_zeros(*old.shape[:2], cap, old.size(3))  # (B, nkv, cap, hs)
                new[:, :, :old.size(2)] = old  # all of it: other layers may already hold this step's k/v
                buf[i] = new

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new k/v (B, nkv, T, hs) at ``pos`` and return all keys/values so far (B, nkv, pos+T, hs)."""
        T = k.size(2)
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {self.pos} + {T} tokens > max_len {self.max_len}")
        if end > self.capacity:
            self._grow(end)
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def reset(self) -> None:
        self.pos = 0

    def crop(self, pos: int) -> None:
        """Forget everything after ``pos`` (e.g. to reuse a shared prompt prefix)."""
        if not 0 <= pos <= self.pos:
            raise ValueError(f"cannot crop the cache to {pos}: it holds {self.pos} positions")
        self.pos = pos


def causal_mask(T: int, S: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (T, S) mask, True = may attend: query i (at absolute position S-T+i) sees keys 0..S-T+i."""
    q_pos = torch.arange(S - T, S, device=device).unsqueeze(1)  # (T, 1)
    k_pos = torch.arange(S, device=device).unsqueeze(0)  # (1, S)
    return k_pos <= q_pos


# ---------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
          dropout_p: float, enable_gqa: bool) -> torch.Tensor:
    """Fused attention. bf16 training on the CPU runs it in fp32: PyTorch's CPU flash-attention backward is ~5x
    slower in bf16 than in fp32 at these sizes (the matmuls around it stay bf16 under autocast)."""
    cpu_bf16 = q.device.type == "cpu" and (torch.is_autocast_enabled("cpu") or v.dtype == torch.bfloat16)
    if cpu_bf16 and torch.is_grad_enabled() and (q.requires_grad or v.requires_grad):
        with torch.autocast("cpu", enabled=False):  # (autocast would cast the fp32 inputs back to bf16)
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=is_causal,
                                               dropout_p=dropout_p, enable_gqa=enable_gqa)
        return y.to(torch.bfloat16)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                                          enable_gqa=enable_gqa)


class CausalSelfAttention(nn.Module):
    """Multi-head (gpt2) or grouped-query (llama) causal self-attention."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        assert self.n_kv_head is not None and self.head_dim is not None
        d, kv_dim = config.n_embd, config.n_kv_head * self.head_dim
        self.q_proj = nn.Linear(d, config.n_head * self.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, kv_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, kv_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.n_head * self.head_dim, d, bias=config.bias)
        # Qwen3: one (hs,) RMSNorm weight shared by all heads of q (and one for k); None elsewhere
        self.q_norm = RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else None  # type: ignore[arg-type]
        self.k_norm = RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else None  # type: ignore[arg-type]
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
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        if self.q_norm is not None and self.k_norm is not None:  # per head, over hs, before the rotation
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). With a cache, x holds the tokens at positions cache.pos .. cache.pos+T-1."""
        B, T, C = x.shape
        q, k, v = self._qkv(x, rope)
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(layer, k, v)  # (B, nkv, S, hs) with S = past + T
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        if T == 1 and not (self.training and self.dropout > 0):
            # one new token sees every key: no mask. The query heads that share a kv head go on the "time" axis,
            # (B, nh, 1, hs) -> (B, nkv, n_rep, hs), so a single plain SDPA call serves all of them (exact for T=1)
            y = F.scaled_dot_product_attention(q.reshape(B, nkv, nh // nkv, hs), k, v)  # (B, nkv, n_rep, hs)
        else:
            if past == 0:  # plain prefill: the fused causal path
                mask, is_causal = None, True
            else:  # chunk after a non-empty cache: SDPA's is_causal would align top-left, so build the offset mask
                mask, is_causal = causal_mask(T, k.size(2), x.device), False
            y = _sdpa(q, k, v, mask, is_causal, self.dropout if self.training else 0.0, nkv != nh)  # (B, nh, T, hs)
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
        att = (q @ k.transpose(-2, -1)).float() / math.sqrt(self.head_dim)  # (B, nh, T, T)
        att = att.masked_fill(~causal_mask(T, T, x.device), float("-inf"))
        return att.softmax(dim=-1)
