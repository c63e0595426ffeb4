"""A lean inference-time decoder over a GPT's own weights: same math as ``GPT.forward``, less Python per token.

SmolLM2-135M has 30 layers of small matrices, so on a CPU the per-op and per-module overhead of a readable
``nn.Module`` forward is a large share of each decode step. This decoder walks the same parameters (no copies,
so later weight updates are seen) with plain functional calls:

- fused ``F.rms_norm`` / ``F.layer_norm``; RoPE as ``x*cos + roll(x)*sin_signed`` with tables cut once per call;
- one preallocated KV cache written in place; decoding one token needs no mask, and grouped-query attention
  folds the query heads that share a key/value head into the "time" axis of a single SDPA call (exact for T=1);
- logits only for the last position;
- the Qwen options: q/k/v biases (a bias on any projection is added after its matmul), Qwen3's per-head q/k
  RMSNorm before RoPE, and a head size other than n_embd / n_head (attention output width nh * hs).

Projections that are not plain ``nn.Linear`` (``Int8Linear``, LoRA wrappers) and a quantized token embedding
(``Int8Embedding``) are called as modules, so quantized and fine-tuned models keep working. Anything unusual (hooks, subclasses, training-mode dropout) makes
:func:`make_fast_step` return None and the caller falls back to ``model.forward`` with ``model.new_cache``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_core.quantize import Int8Linear

__all__ = ["FastDecoder", "make_fast_step"]

Linear = Callable[[torch.Tensor], torch.Tensor]


def _linear(m: nn.Module, many_rows: bool = False) -> Linear:
    """A callable for one projection: a bare matmul against the transposed weight (a view, no copy: it skips
    F.linear's per-call transpose) for nn.Linear, the module itself otherwise.

    ``many_rows`` (prompt prefill) with half-precision weights: CPUs without native bf16 math run a bf16 GEMM
    ~8x slower than float32, so the weight is upcast on the fly (cheap next to the GEMM) and the result rounded
    back; one-row decoding is memory-bound and stays in bf16, reading half the bytes."""
    if type(m) is nn.Linear:
        wt, b = m.weight.t(), m.bias  # (in, out) view
        split = _row_split(m.weight, b) if not many_rows else None
        if split is not None:
            return split
        if many_rows and wt.dtype in (torch.bfloat16, torch.float16) and wt.device.type == "cpu":
            def upcast(x: torch.Tensor) -> torch.Tensor:
                y = torch.matmul(x.float(), wt.float())
                return (y if b is None else y.add_(b.float())).to(x.dtype)
            return upcast
        if b is None:
            return lambda x: torch.matmul(x, wt)
        return lambda x: torch.matmul(x, wt).add_(b)
    if type(m) is Int8Linear and m.use_kernel and m.bias is None and not many_rows and m.qweight.device.type == "cpu":
        q, s, cd = m.qweight, m.scale_c, m.compute_dtype
        int8mm = torch.ops.aten._weight_int8pack_mm
        return lambda x: int8mm(x.to(cd), q, s).to(x.dtype)  # x (B, in) contiguous -> (B, out)
    return m


def _row_split(w: torch.Tensor, b: torch.Tensor | None) -> Linear | None:
    """One-row decoding as a batched matmul over P row blocks of the weight, P = the thread count.

    MKL runs a one-row float32 matmul (a GEMV) on a single core, and decoding is bound by reading weights from
    memory: one core draws ~20 GB/s here, two ~35 GB/s. ``bmm`` parallelises over its batch axis, so viewing
    W (out, in) as P blocks (P, out/P, in) -- a view, no copy -- lets every core stream its own share of the rows.
    Measured on SmolLM2-135M with 2 threads: 21.5 ms of matmuls per token instead of 36.7 (bench/generate.py)."""
    P = torch.get_num_threads()
    out_f, in_f = w.shape
    if P < 2 or w.dtype != torch.float32 or w.device.type != "cpu" or not w.is_contiguous() or out_f % P:
        return None
    blocks = w.view(P, out_f // P, in_f).transpose(1, 2)  # (P, in, out/P) view

    def mm(x: torch.Tensor) -> torch.Tensor:
        B = x.size(0)
        y = torch.bmm(x.expand(P, B, in_f), blocks)  # (P, B, out/P)
        y = y.view(B, out_f) if B == 1 else y.transpose(0, 1).reshape(B, out_f)
        return y if b is None else y.add_(b)

    return mm


def _has_hooks(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class FastDecoder:
    """Prefill + one-token decode for a plain ``llm_core.model.GPT`` with its own KV cache of ``max_len``."""

    def __init__(self, model: nn.Module, max_len: int, batch_size: int = 1) -> None:
        from llm_core.block import RMSNorm

        cfg = model.config
        self.cfg = cfg
        self.llama = cfg.arch == "llama"
        self.nh, self.nkv, self.hs = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.C, self.eps = cfg.n_embd, cfg.norm_eps
        self.attn_width = cfg.n_head * cfg.head_dim  # nh * hs, the o_proj input (!= C for e.g. Qwen3-0.6B)
        self.gelu_approximate = cfg.gelu_approximate
        emb = model.tok_emb
        if type(emb) is nn.Embedding:
            wte = emb.weight  # (V, C)
            self.embed: Callable[[torch.Tensor], torch.Tensor] = lambda i: F.embedding(i, wte)
            dtype, device = wte.dtype, wte.device
        else:  # Int8Embedding (or another module): its own lookup; dtype/device of its output
            self.embed = emb
            dtype = emb.dtype
            device = next(iter(emb.buffers()), next(iter(emb.parameters()), None)).device
        self.wpe = model.pos_emb.weight if model.pos_emb is not None else None
        if not dtype.is_floating_point:
            raise ValueError("embedding weights must be floating point")
        self.dtype = dtype
        self.max_len = max_len
        # (n_layer, B, nkv, L, hs): one allocation for the whole cache
        self.k = torch.zeros(cfg.n_layer, batch_size, self.nkv, max_len, self.hs, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.pos = 0
        if self.llama:
            cos = model.rope.cos[:max_len].to(device=device, dtype=torch.float32)  # (L, hs)
            sin = model.rope.sin[:max_len].to(device=device, dtype=torch.float32)
            half = self.hs // 2
            self.cos = cos.to(dtype)
            self.sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1).to(dtype)  # rotate_half's sign folded in

        def norm(m: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
            if type(m) is RMSNorm:
                w, eps = m.weight, m.eps
                return lambda x: F.rms_norm(x, (w.numel(),), w, eps)
            if type(m) is nn.LayerNorm:
                w, b, eps, shape = m.weight, m.bias, m.eps, m.normalized_shape
                return lambda x: F.layer_norm(x, shape, w, b, eps)
            return m

        def layers(many: bool) -> list[tuple]:
            out = []
            for blk in model.blocks:
                a, mlp = blk.attn, blk.mlp
                out.append((
                    norm(blk.attn_norm), _linear(a.q_proj, many), _linear(a.k_proj, many), _linear(a.v_proj, many),
                    _linear(a.o_proj, many), norm(blk.mlp_norm),
                    _linear(mlp.gate_proj, many) if mlp.swiglu else None, _linear(mlp.up_proj, many),
                    _linear(mlp.down_proj, many),
                ))
            return out

        # Qwen3: per-head RMSNorm of q and k (over hs, before RoPE), else None
        self.qk_norms = [(norm(b.attn.q_norm), norm(b.attn.k_norm)) if b.attn.q_norm is not None else None
                         for b in model.blocks]
        self.layers = layers(False)  # decoding: one row per matmul
        self.prefill_layers = layers(True)  # the prompt: many rows
        self.norm_f = norm(model.norm_f)
        self.lm_head = _linear(model.lm_head)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + x.roll(self.hs // 2, dims=-1) * sin

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) at positions pos..pos+T-1 -> logits of the last position (B, V); advances pos."""
        B, T = idx.shape
        if self.pos + T > self.max_len:
            raise ValueError(f"KV cache is full: {self.pos} + {T} tokens > max_len {self.max_len}")
        return self._decode(idx) if T == 1 else self._prefill(idx)

    def _decode(self, idx: torch.Tensor) -> torch.Tensor:
        """One new token per sequence, kept 2-D (B, C) throughout: the per-token hot loop."""
        B = idx.size(0)
        p0, p1 = self.pos, self.pos + 1
        nkv, hs, W = self.nkv, self.hs, self.attn_width
        n_rep = self.nh // nkv
        x = self.embed(idx.view(B))  # (B, C)
        if self.wpe is not None:
            x = x + self.wpe[p0]
        rope = self.llama
        if rope:
            cos, sin = self.cos[p0], self.sin[p0]  # (hs,)
        for i, (n1, wq, wk, wv, wo, n2, wg, wu, wd) in enumerate(self.layers):
            h = n1(x)  # (B, C)
            # query heads sharing a kv head go on the "time" axis: (B, nkv, n_rep, hs); one token needs no mask
            q = wq(h).view(B, nkv, n_rep, hs)
            k = wk(h).view(B, nkv, 1, hs)
            v = wv(h).view(B, nkv, 1, hs)
            if (qkn := self.qk_norms[i]) is not None:
                q, k = qkn[0](q), qkn[1](k)
            if rope:
                q = q * cos + q.roll(hs // 2, dims=-1) * sin
                k = k * cos + k.roll(hs // 2, dims=-1) * sin
            kc, vc = self.k[i], self.v[i]  # (B, nkv, L, hs)
            kc.narrow(2, p0, 1).copy_(k)
            vc.narrow(2, p0, 1).copy_(v)
            y = F.scaled_dot_product_attention(q, kc.narrow(2, 0, p1), vc.narrow(2, 0, p1))  # (B, nkv, n_rep, hs)
            x = x + wo(y.reshape(B, W))  # (CUDA kernels may hand y back in another memory layout)
            h = n2(x)
            if wg is not None:
                h = F.silu(wg(h)) * wu(h)  # SwiGLU (B, hidden)
            else:
                h = F.gelu(wu(h), approximate=self.gelu_approximate)
            x = x + wd(h)
        self.pos = p1
        return self.lm_head(self.norm_f(x))  # (B, V)

    def _prefill(self, idx: torch.Tensor) -> torch.Tensor:
        """Many tokens at once (the prompt, or a chunk after cached tokens)."""
        B, T = idx.shape
        p0, p1 = self.pos, self.pos + T
        nh, nkv, hs, W = self.nh, self.nkv, self.hs, self.attn_width
        x = self.embed(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe[p0:p1]
        mask = None
        if p0 > 0:  # a chunk after cached tokens: offset causal mask (T, S)
            mask = torch.arange(p1, device=idx.device)[None, :] <= torch.arange(p0, p1, device=idx.device)[:, None]
        last = len(self.prefill_layers) - 1
        for i, (n1, wq, wk, wv, wo, n2, wg, wu, wd) in enumerate(self.prefill_layers):
            h = n1(x)  # (B, T, C)
            k = wk(h).view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
            v = wv(h).view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
            q0 = p0
            if i == last and T > 1:
                # only the final position's output is ever read, and the cache needs this layer's k/v alone:
                # the rest of the last block runs on one row (llama.cpp does the same), ~3% of a long prefill
                x, h, q0, T, mask = x[:, -1:], h[:, -1:], p1 - 1, 1, None
            q = wq(h).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
            if (qkn := self.qk_norms[i]) is not None:
                q, k = qkn[0](q), qkn[1](k)
            if self.llama:
                q = self._rope(q, self.cos[q0:p1], self.sin[q0:p1])  # tables (T, hs)
                k = self._rope(k, self.cos[p0:p1], self.sin[p0:p1])
            kc, vc = self.k[i], self.v[i]
            kc[:, :, p0:p1] = k
            vc[:, :, p0:p1] = v
            # causal within the block; a single last query sees every cached key, so it needs no mask
            y = F.scaled_dot_product_attention(q, kc[:, :, :p1], vc[:, :, :p1], attn_mask=mask,
                                               is_causal=mask is None and T > 1, enable_gqa=nkv != nh)  # (B, nh, T, hs)
            x = x + wo(y.transpose(1, 2).reshape(B, T, W))
            h = n2(x)
            if wg is not None:
                h = F.silu(wg(h)) * wu(h)  # (B, T, hidden)
            else:
                h = F.gelu(wu(h), approximate=self.gelu_approximate)
            x = x + wd(h)
        self.pos = p1
        return self.lm_head(self.norm_f(x[:, -1]))  # (B, V)


# ModelConfig fields this decoder reproduces. Any other field set away from its default (a future option) makes
# make_fast_step fall back to model.forward rather than compute different numbers
_KNOWN_FIELDS = {"arch", "vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_kv_head", "intermediate_size",
                 "rope_theta", "norm_eps", "bias", "activation", "tie_embeddings", "dropout", "bos_token_id",
                 "eos_token_id", "name", "qkv_bias", "qk_norm", "head_dim"}


def _supported(config: object) -> bool:
    """True when every field outside ``_KNOWN_FIELDS`` has the value it takes when left at its default."""
    import dataclasses

    from llm_core.config import ModelConfig

    if type(config) is not ModelConfig:
        return False
    for f in dataclasses.fields(config):
        if f.name in _KNOWN_FIELDS or not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        plain = dataclasses.replace(config, **{f.name: default})  # the same config without this option
        if getattr(plain, f.name) != getattr(config, f.name):
            return False
    return True


def make_fast_step(model: nn.Module, max_len: int) -> FastDecoder | None:
    """A :class:`FastDecoder` when ``model`` is a plain GPT in a state it can reproduce exactly, else None."""
    try:
        from llm_core.attention import CausalSelfAttention
        from llm_core.block import MLP, Block
        from llm_core.model import GPT
    except ImportError:
        return None
    if type(model) is not GPT or _has_hooks(model):
        return None
    if not _supported(model.config):
        return None
    if model.training and model.config.dropout > 0:
        return None
    from llm_core.norm import RMSNorm

    for blk in model.blocks:
        if type(blk) is not Block or type(blk.attn) is not CausalSelfAttention or type(blk.mlp) is not MLP:
            return None
        if any(n is not None and type(n) is not RMSNorm for n in (blk.attn.q_norm, blk.attn.k_norm)):
            return None  # a replaced q/k norm: only model.forward knows what it does
    if model.config.arch == "llama" and model.rope is None:
        return None
    return FastDecoder(model, max_len)
