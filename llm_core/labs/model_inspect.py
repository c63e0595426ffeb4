"""Looking inside a model: its size and parameters grouped by module, where its attention goes for a prompt, and what
each head seems to do (attention sink, previous-token, self, induction). The Model tab formats these numbers; they
come from here so the UI holds no ML (the maps are numpy, so the caller needs no torch).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_ATTN_TOKENS = 64  # a heatmap with more labels is unreadable


def _gpt(model: Any) -> Any:
    from llm_core.model.gpt import base_gpt

    return base_gpt(model)


# ---- size and parameters ------------------------------------------------------------------------------------------
@dataclass
class ParamGroup:
    """Parameters of one module, summed over the repeated blocks (``blocks.*.attn.q_proj``)."""

    name: str
    shapes: list[str]  # "576×576" per tensor (weight, bias) of the first layer
    params: int  # over every layer
    layers: int  # 1 outside the blocks


@dataclass
class ModelSummary:
    config: Any  # llm_core.model.config.ModelConfig of the base GPT
    total: int  # parameters (tied weights once), LoRA ones included
    lora: int  # LoRA parameters (0 without an adapter)
    nbytes: int
    dtype: str  # "float32"
    device: str
    groups: list[ParamGroup] = field(default_factory=list)


_LAYER = re.compile(r"blocks\.(\d+)\.")


_QUANT_WEIGHTS = ("qweight", "packed")  # int8 / int4 weights of llm_core.generation.quantize's modules, held as buffers
_QUANT_AUX = ("scale", "scale_c", "scales_zeros")


def _weights(model: Any) -> list[tuple[str, Any]]:
    """(name, tensor) of every weight: the parameters, and a quantized model's int8/int4 weights (as ``.weight``;
    an int8 table shared by a tied embedding and lm_head once)."""
    out, seen = list(model.named_parameters()), set()
    for name, b in model.named_buffers():
        mod, _, attr = name.rpartition(".")
        if attr in _QUANT_WEIGHTS and b.data_ptr() not in seen:
            seen.add(b.data_ptr())
            out.append((f"{mod}.weight", b))
    return out


def param_groups(model: Any) -> list[ParamGroup]:
    """Parameters grouped by module over the repeated blocks, in the model's order (tied weights appear once)."""
    groups: OrderedDict[str, dict] = OrderedDict()
    for name, p in _weights(model):
        name = name.replace("base_model.model.", "").replace(".base_layer", "")
        key = re.sub(r"\.(weight|bias)$", "", _LAYER.sub("blocks.*.", name))
        g = groups.setdefault(key, {"shapes": [], "n": 0, "layers": set()})
        g["n"] += p.numel()
        if (m := _LAYER.search(name)) is not None:
            g["layers"].add(m.group(1))
        shape = "×".join(str(s) for s in p.shape)
        if shape not in g["shapes"] and (m is None or m.group(1) == min(g["layers"], key=int)):
            g["shapes"].append(shape)
    return [ParamGroup(k, g["shapes"], g["n"], len(g["layers"]) or 1) for k, g in groups.items()]


def model_summary(model: Any) -> ModelSummary:
    """Config, parameter counts, memory and parameter groups of ``model`` (a GPT, or one wrapped with LoRA)."""
    weights = [t for _, t in _weights(model)]
    aux, seen = [], set()  # a quantized model's scales count in its memory
    for name, b in model.named_buffers():
        if name.rpartition(".")[2] in _QUANT_AUX and b.data_ptr() not in seen:
            seen.add(b.data_ptr())
            aux.append(b)
    p0 = max(weights, key=lambda t: t.numel())  # the bulk of the weights says the precision (int8, bfloat16, ...)
    return ModelSummary(
        config=_gpt(model).config,
        total=sum(p.numel() for p in weights),
        lora=sum(p.numel() for n, p in model.named_parameters() if "lora_" in n),
        nbytes=sum(p.numel() * p.element_size() for p in weights + aux),
        dtype=str(p0.dtype).replace("torch.", ""),
        device=str(p0.device),
        groups=param_groups(model),
    )


# ---- attention ----------------------------------------------------------------------------------------------------
@dataclass
class AttentionMaps:
    maps: np.ndarray  # (n_layer, n_head, T, T), rows sum to 1
    ids: list[int]  # the T token ids
    truncated: bool  # the prompt was cut to max_tokens


def attention_maps(model: Any, tokenizer: Any, prompt: str, max_tokens: int = MAX_ATTN_TOKENS) -> AttentionMaps:
    """Attention probabilities of every layer and head for ``prompt`` (its first ``max_tokens`` tokens, at most the
    model's context), computed on the model's own device. A ValueError in words when there is no prompt."""
    import torch

    prompt = prompt or ""
    if not prompt.strip():
        raise ValueError("Type a prompt to see where the model attends.")
    encode = getattr(tokenizer, "encode_prompt", tokenizer.encode)  # BOS first where the model expects it (Gemma)
    ids = encode(prompt, allowed_special="all")
    truncated = len(ids) > max_tokens
    ids = ids[:max_tokens][:_gpt(model).config.block_size]
    device = next(model.parameters()).device
    with torch.no_grad():
        maps = model.attention_maps(torch.tensor([ids], dtype=torch.long, device=device))  # (L, H, T, T)
    return AttentionMaps(maps.float().cpu().numpy(), ids, truncated)


def induction_targets(ids: list[int]) -> list[tuple[int, int]]:
    """(query, key) pairs an induction head attends: from a repeated token to the token that followed its
    previous occurrence (``A B ... A`` -> from the second ``A`` to ``B``)."""
    last: dict[int, int] = {}
    pairs = []
    for q, t in enumerate(ids):
        if t in last and last[t] + 1 < q:
            pairs.append((q, last[t] + 1))
        last[t] = q
    return pairs


@dataclass
class HeadStats:
    """Where one head's attention goes, averaged over query positions 1.. (position 0 can only see itself)."""

    layer: int
    head: int
    entropy: float  # nats
    first: float  # share on the first token (an attention sink)
    previous: float
    self_: float
    induction: float | None  # share on the induction target; None when the prompt repeats no token
    role: str  # "first-token (sink)", "previous-token", "self", "induction", "broad / content", "focused / content"


def head_stats(maps: np.ndarray, ids: list[int] | None = None) -> list[HeadStats]:
    """Per head of every layer: entropy and where the attention goes, and the role that best explains it.

    maps: (L, H, T, T) with rows summing to 1; empty for fewer than two tokens.
    """
    L, H, T, _ = maps.shape
    if T < 2:
        return []
    q = np.arange(1, T)
    pairs = induction_targets(ids) if ids is not None else []
    pq = np.array([a for a, _ in pairs], dtype=int)
    pk = np.array([b for _, b in pairs], dtype=int)
    out = []
    for layer in range(L):
        for h in range(H):
            a = maps[layer, h, 1:, :]  # (T-1, T)
            ent = float(np.mean(-(a * np.log(a + 1e-12)).sum(-1)))
            first = float(np.mean(a[:, 0]))
            prev = float(np.mean(a[np.arange(T - 1), q - 1]))
            self_ = float(np.mean(a[np.arange(T - 1), q]))
            ind = float(np.mean(maps[layer, h, pq, pk])) if len(pairs) else None
            scores = [("first-token (sink)", first), ("previous-token", prev), ("self", self_)]
            if ind is not None:
                scores.append(("induction", ind * 1.5))  # sparse pattern: a smaller share is already telling
            kind = max(scores, key=lambda kv: kv[1])
            role = kind[0] if kind[1] >= 0.4 else ("broad / content" if ent > 1.0 else "focused / content")
            out.append(HeadStats(layer, h, ent, first, prev, self_, ind, role))
    return out
