"""GPT: one decoder-only transformer class for both the GPT-2 and the Llama (SmolLM2) family.

Read top to bottom: token (+ position) embeddings -> n_layer Blocks -> final norm -> lm_head (tied to tok_emb).

One forward for everything: training (``targets``), prompt prefill and one-token decoding (``cache``) run the
same blocks; only the matmul kernels differ, chosen per call by :func:`llm_core.model.fastpath.linear`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from llm_core.model.attention import RotaryEmbedding
from llm_core.model.block import Block, make_norm
from llm_core.model.config import ModelConfig
from llm_core.model.fastpath import linear, short_prompt_threads
from llm_core.model.kv_cache import KVCache


def base_gpt(model: Any) -> Any:
    """The GPT itself, also under a PEFT (LoRA) wrapper, which keeps it as ``get_base_model()``."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # embeddings start empty: _init_weights fills them below (saves a second random init, and building on
        # the 'meta' device for fast loading then needs no random ops at all)
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd, _weight=torch.empty(config.vocab_size,
                                                                                          config.n_embd))
        if config.arch == "gpt2":  # learned absolute positions
            self.pos_emb = nn.Embedding(config.block_size, config.n_embd,
                                        _weight=torch.empty(config.block_size, config.n_embd))
            self.rope = None
        else:  # rotary positions, applied inside attention
            self.pos_emb = None
            self.rope = RotaryEmbedding(config.head_dim, config.block_size, config.rope_theta,
                                        factor=config.rope_scaling_factor or 1.0, local_theta=config.rope_local_theta)
        self.drop = nn.Dropout(config.dropout)
        # training-time choice, not architecture: recompute each block in backward instead of keeping its
        # activations (~1/30 of them kept for SmolLM2), trading ~1/3 more compute for most activation memory
        self.gradient_checkpointing = False
        # the sampling settings the model ships with (HF's generation_config.json), set by the loaders; None = ours
        self.generation_config = None
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if self.tok_emb.weight.device.type != "meta":  # on 'meta' (from_state_dict) the weights come from a file
            self.apply(self._init_weights)
            # GPT-2 paper: scale the residual projections by 1/sqrt(2 * n_layer) so the residual stream stays ~unit
            for name, p in self.named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T) -> (B, T, C); Gemma scales them by sqrt(C), rounded to their dtype as in HF."""
        x = self.tok_emb(idx)  # (B, T, C)
        if self.config.scale_embeddings:
            x = x * torch.tensor(self.config.n_embd ** 0.5, dtype=x.dtype)
        return x

    def _ropes(self, start: int | torch.Tensor, T: int, dtype: torch.dtype
               ) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """The cos/sin tables each layer rotates by: the sliding-window layers' own base when they have one."""
        if self.rope is None:
            return [None] * len(self.blocks)
        full = self.rope(start, T, dtype)  # 2 x (T, hs)
        local = self.rope(start, T, dtype, local=True) if self.config.rope_local_theta is not None else full
        return [local if self.config.is_sliding(i) else full for i in range(len(self.blocks))]

    def _softcap(self, logits: torch.Tensor) -> torch.Tensor:
        cap = self.config.final_logit_softcap  # Gemma 2 style; None in Gemma 3
        return logits if cap is None else torch.tanh(logits / cap) * cap

    # -----------------------------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False, loss_only: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, V), loss or None).

        With ``cache``, idx holds the tokens at positions cache.pos .. cache.pos+T-1 and cache.pos advances by T;
        a per-row cache (``new_cache(B, per_row=True)``) gives each row its own positions and key mask instead.
        ``last_only`` computes logits for the last position only (B, 1, V): the cheap path for generation.
        ``loss_only`` (with targets) returns (None, loss) and runs the lm_head only on positions whose target is
        not -100: fine-tuning masks the prompt, and with a 49k vocabulary those logits are a large share of the
        step's compute and activation memory. Same loss as the full path.
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds the model's context "
                             f"(block_size={self.config.block_size})")
        # rows at their own lengths (a per-row cache): positions (B, T); else every row at start .. start+T-1
        rows = cache.positions(T) if cache is not None and cache.lens is not None else None
        x = self._embed(idx)  # (B, T, C)
        if self.pos_emb is not None:
            pos = torch.arange(start, start + T, device=idx.device) if rows is None else rows  # (T,) or (B, T)
            x = x + self.pos_emb(pos)  # (B, T, C)
        if self.training and self.drop.p > 0:
            x = self.drop(x)
        ropes = self._ropes(start if rows is None else rows, T, x.dtype)  # per layer: 2 x (T, hs) / (B, 1, T, hs)
        ckpt = self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        with short_prompt_threads(x):  # a short prompt on a CPU: elementwise ops on one thread, matmuls on all
            for i, block in enumerate(self.blocks):
                if ckpt:  # keep only each block's input; its insides are recomputed during backward
                    x = torch.utils.checkpoint.checkpoint(block, x, ropes[i], None, i, use_reentrant=False)
                else:
                    x = block(x, ropes[i], cache, i)  # (B, T, C)
        if cache is not None:
            cache.advance(T)
        if last_only and targets is None:
            x = x[:, -1:]  # (B, 1, C): generation reads only the last position
        x = self.norm_f(x)
        if loss_only and targets is not None:
            keep = targets.reshape(-1) != -100  # (B*T,)
            h = x.reshape(-1, x.size(-1))[keep]  # (N, C): only the positions that count
            return None, F.cross_entropy(self._softcap(self.lm_head(h)).float(), targets.reshape(-1)[keep])
        logits = self._softcap(linear(self.lm_head, x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def new_cache(self, batch_size: int, max_len: int | None = None, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None, per_row: bool = False) -> KVCache:
        """An empty KV cache for ``max_len`` positions (default: the full context; pass less to save memory).
        ``per_row``: rows at their own lengths, joining and leaving (batched serving; see ``KVCache``)."""
        p = self.norm_f.weight  # a float parameter in every precision (an int8 embedding's .weight dequantizes)
        max_len = self.config.block_size if max_len is None else min(max_len, self.config.block_size)
        return KVCache(self.config.n_layer, batch_size, self.config.n_kv_head, max_len,  # type: ignore[arg-type]
                       self.config.head_dim, device=device or p.device, dtype=dtype or p.dtype, per_row=per_row)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """Softmax attention probabilities of every layer and head for one sequence: (n_layer, n_head, T, T)."""
        if idx.dim() != 2 or idx.size(0) != 1:
            raise ValueError(f"attention_maps expects idx of shape (1, T), got {tuple(idx.shape)}")
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds the model's context (block_size={self.config.block_size})")
        x = self._embed(idx)  # (1, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        ropes = self._ropes(0, T, x.dtype)
        maps = []
        for i, block in enumerate(self.blocks):
            maps.append(block.attn.attention_probs(block.attn_norm(x), ropes[i])[0])  # (nh, T, T)
            x = block(x, ropes[i])
        return torch.stack(maps)  # (n_layer, nh, T, T)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once); ``non_embedding`` leaves out token/position embeddings (an untied
        lm_head is a real matrix multiply, so it stays)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n

    # -----------------------------------------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, config: ModelConfig, state_dict: dict[str, torch.Tensor], source: str = "state dict"
                        ) -> GPT:
        """Build a model directly from tensors in our naming, without random init (fast: built on 'meta').

        Missing, unexpected or wrongly shaped tensors raise a ValueError that names them and ``source``.
        """
        with torch.device("meta"):
            model = cls(config)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        sd = dict(state_dict)
        if config.tie_embeddings:  # stored once, as tok_emb.weight
            expected.pop("lm_head.weight")
            sd.pop("lm_head.weight", None)
        missing = sorted(set(expected) - set(sd))
        unexpected = sorted(set(sd) - set(expected))
        if missing:
            raise ValueError(f"{source}: missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            raise ValueError(f"{source}: unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        for k, shape in expected.items():
            if tuple(sd[k].shape) != tuple(shape):
                raise ValueError(f"{source}: tensor {k!r} has shape {tuple(sd[k].shape)}, "
                                 f"the config expects {tuple(shape)}")
        if config.tie_embeddings:
            sd["lm_head.weight"] = sd["tok_emb.weight"]
        model.load_state_dict(sd, strict=True, assign=True)  # adopts the tensors as they are: no copy
        if config.tie_embeddings:
            model.lm_head.weight = model.tok_emb.weight
        if model.rope is not None:
            model.rope.reset(model.tok_emb.weight.device)
        return model
