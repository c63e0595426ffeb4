"""Weight import (HF GPT-2, HF Llama/SmolLM2, HF Qwen2/2.5 and Qwen3, HF Gemma 3) and export to a Hugging Face folder.

Every importer maps foreign tensor names onto our stable names (see ``GPT``) and builds the model with
``GPT.from_state_dict``, which checks every name and shape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llm_core.atomic import staged_dir
from llm_core.model.config import ModelConfig, read_json_object
from llm_core.model.gpt import GPT
from llm_core.weights.fits import ensure_fits, safetensors_numel

Progress = Callable[[int, int], None]  # (done, total)

# config.json model_type / GGUF general.architecture values we load; all but gpt2 are the Llama block with options
HF_MODEL_TYPES = ("gpt2", "llama", "qwen2", "qwen3", "gemma3_text", "gemma3")

# ---------------------------------------------------------------------------------------------------------------
# Reading Hugging Face folders
# ---------------------------------------------------------------------------------------------------------------


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    return read_json_object(Path(folder) / "config.json", str(folder))


def hf_weight_files(folder: Path) -> list[Path]:
    """An HF folder's safetensors files: those its shard index names, else ``model.safetensors``, else all."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # sharded: the index names the files
        return [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    return sorted(folder.glob("*.safetensors"))


def load_hf_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder: ``*.safetensors`` (sharded too) or ``pytorch_model.bin`` (weights only)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    files = hf_weight_files(folder)
    sd: dict[str, torch.Tensor] = {}
    if files:
        ensure_fits(safetensors_numel(files, str(folder)), str(folder))  # and a clear error for a corrupt file
        for f in files:
            sd.update(load_file(f))
        return sd
    binf = folder / "pytorch_model.bin"
    if binf.is_file():
        return torch.load(binf, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no *.safetensors or pytorch_model.bin weights found")


def _rope_theta(cfg: dict[str, Any]) -> float:
    """rope_theta from either the transformers 4 (``rope_theta``) or 5 (``rope_parameters``) layout."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    for p in (params, scaling):
        kind = p.get("rope_type", p.get("type", "default"))
        if kind not in ("default", None):
            raise ValueError(f"RoPE scaling type {kind!r} is not supported (only plain RoPE)")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


# ---------------------------------------------------------------------------------------------------------------
# GPT-2
# ---------------------------------------------------------------------------------------------------------------


def gpt2_config_from_hf(cfg: dict[str, Any], name: str = "gpt2") -> ModelConfig:
    act = cfg.get("activation_function", "gelu_new")
    acts = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
    if act not in acts:
        raise ValueError(f"GPT-2 activation {act!r} is not supported (only 'gelu_new' (tanh) or exact 'gelu')")
    return ModelConfig(
        arch="gpt2", vocab_size=cfg["vocab_size"], block_size=cfg.get("n_positions", 1024), n_layer=cfg["n_layer"],
        n_head=cfg["n_head"], n_embd=cfg["n_embd"], intermediate_size=cfg.get("n_inner") or 4 * cfg["n_embd"],
        norm_eps=cfg.get("layer_norm_epsilon", 1e-5), bias=True, tie_embeddings=cfg.get("tie_word_embeddings", True),
        activation=acts[act],
        bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"), name=name,
    )


def _strip_gpt2(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``transformer.`` prefix (GPT2LMHeadModel vs GPT2Model files) and the old attention-mask buffers."""
    out = {}
    for k, v in sd.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")) and v.dim() != 1:
            continue
        out[k.removeprefix("transformer.")] = v
    return out


def gpt2_config_from_state_dict(sd: dict[str, torch.Tensor]) -> ModelConfig:
    """Infer the shape from the tensors; the head count is not in them, so assume head size 64 (every published
    GPT-2). Pass an explicit config for anything else."""
    sd = _strip_gpt2(sd)
    V, C = sd["wte.weight"].shape
    if C % 64:
        raise ValueError(f"cannot infer n_head for n_embd={C} (not a multiple of 64): pass config=")
    n_layer = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"h\.(\d+)\.", k)))
    return ModelConfig(arch="gpt2", vocab_size=V, block_size=sd["wpe.weight"].shape[0], n_layer=n_layer,
                       n_head=max(1, C // 64), n_embd=C, intermediate_size=sd["h.0.mlp.c_fc.weight"].shape[1],
                       tie_embeddings="lm_head.weight" not in sd or torch.equal(sd["lm_head.weight"], sd["wte.weight"]))


# GPT-2's names and ours, one table for import and export. Top level: HF name (under ``transformer.``) -> ours.
_GPT2_TOP = {"wte.weight": "tok_emb.weight", "wpe.weight": "pos_emb.weight", "ln_f.weight": "norm_f.weight",
             "ln_f.bias": "norm_f.bias"}
# Per layer: HF name under ``h.{i}.`` -> (ours under ``blocks.{i}.``, transposed?). GPT-2's Conv1D stores a weight
# as (in, out), ours (out, in). Its ``attn.c_attn`` holds q, k and v side by side: see _GPT2_QKV.
_GPT2_LAYER = {
    "ln_1.weight": ("attn_norm.weight", False), "ln_1.bias": ("attn_norm.bias", False),
    "attn.c_proj.weight": ("attn.o_proj.weight", True), "attn.c_proj.bias": ("attn.o_proj.bias", False),
    "ln_2.weight": ("mlp_norm.weight", False), "ln_2.bias": ("mlp_norm.bias", False),
    "mlp.c_fc.weight": ("mlp.up_proj.weight", True), "mlp.c_fc.bias": ("mlp.up_proj.bias", False),
    "mlp.c_proj.weight": ("mlp.down_proj.weight", True), "mlp.c_proj.bias": ("mlp.down_proj.bias", False),
}
_GPT2_QKV = ("attn.c_attn", ("attn.q_proj", "attn.k_proj", "attn.v_proj"))  # (C, 3C) Conv1D <-> 3 x (C, C)


def gpt2_state_dict_from_hf(sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """HF GPT-2 names -> ours (the tables above)."""
    sd = _strip_gpt2(sd)
    C = config.n_embd
    out = {ours: sd[hf] for hf, ours in _GPT2_TOP.items()}
    if not config.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    fused, parts = _GPT2_QKV
    for i in range(config.n_layer):
        h, b = f"h.{i}.", f"blocks.{i}."
        for hf, (ours, transposed) in _GPT2_LAYER.items():
            out[b + ours] = sd[h + hf].t() if transposed else sd[h + hf]
        ws = sd[h + fused + ".weight"].t().split(C, dim=0)  # (3C, C) -> 3 x (C, C)
        bs = sd[h + fused + ".bias"].split(C, dim=0)
        for part, w, bias in zip(parts, ws, bs, strict=True):
            out[b + part + ".weight"], out[b + part + ".bias"] = w, bias
    return {k: v.contiguous() for k, v in out.items()}


def from_hf_gpt2(source: str | Path | dict[str, torch.Tensor], config: ModelConfig | dict[str, Any] | None = None,
                 dtype: torch.dtype = torch.float32) -> GPT:
    """A GPT-2 from an HF state dict (``GPT2LMHeadModel().state_dict()``) or an HF folder (config.json + weights).

    ``config`` may be our ModelConfig or an HF config dict (``GPT2Config().to_dict()``)."""
    if isinstance(config, dict):
        config = gpt2_config_from_hf(config)
    if isinstance(source, dict):
        sd = source
        config = config or gpt2_config_from_state_dict(sd)
    else:
        config = config or gpt2_config_from_hf(read_hf_config(source), name=Path(source).name)
        sd = load_hf_state_dict(source)
    ours = gpt2_state_dict_from_hf({k: v.to(dtype) for k, v in sd.items()}, config)
    return GPT.from_state_dict(config, ours, source=str(source) if not isinstance(source, dict) else "GPT-2 state dict")


# ---------------------------------------------------------------------------------------------------------------
# Llama / SmolLM2
# ---------------------------------------------------------------------------------------------------------------


def _check_full_attention(cfg: dict[str, Any], kind: str) -> None:
    """Qwen2 can use sliding-window attention in its upper layers; published Qwen2.5/Qwen3 configs turn it off."""
    types = cfg.get("layer_types") or []
    if any(t != "full_attention" for t in types) or (cfg.get("use_sliding_window") and not types):
        raise ValueError(f"{kind} with sliding-window attention layers is not supported (only full attention)")


def llama_config_from_hf(cfg: dict[str, Any], name: str = "llama") -> ModelConfig:
    """ModelConfig from an HF config.json of model_type "llama", "qwen2" or "qwen3" (all the Llama block):
    Qwen2: biases on q/k/v only; Qwen3: RMSNorm on each head of q and k, and its own head_dim."""
    kind = cfg.get("model_type") or "llama"
    if kind not in ("llama", "qwen2", "qwen3"):
        raise ValueError(f"model_type {kind!r} is not a Llama-family config (llama, qwen2, qwen3)")
    C, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{kind} activation {cfg['hidden_act']!r} is not supported (only silu / SwiGLU)")
    qkv_bias = qk_norm = False
    if kind == "llama":
        if cfg.get("attention_bias", False) != cfg.get("mlp_bias", False):
            raise ValueError("attention_bias != mlp_bias is not supported (one bias setting for all linears)")
        bias = bool(cfg.get("attention_bias", False))
        qkv_bias = bias
    else:
        _check_full_attention(cfg, kind)
        bias = False  # o_proj and the MLP: no biases in either Qwen family
        if kind == "qwen2":
            qkv_bias = True  # Qwen2Attention: q/k/v always biased
        else:
            qk_norm = True
            if cfg.get("attention_bias", False):
                raise ValueError("qwen3 with attention_bias=true is not supported (no published Qwen3 uses it)")
    eos = cfg.get("eos_token_id")
    return ModelConfig(
        arch="llama", vocab_size=cfg["vocab_size"], block_size=cfg.get("max_position_embeddings", 2048),
        n_layer=cfg["num_hidden_layers"], n_head=nh, n_kv_head=cfg.get("num_key_value_heads") or nh, n_embd=C,
        intermediate_size=cfg["intermediate_size"], rope_theta=_rope_theta(cfg), norm_eps=cfg.get("rms_norm_eps", 1e-6),
        bias=bias, qkv_bias=qkv_bias, qk_norm=qk_norm, head_dim=cfg.get("head_dim") or C // nh,
        tie_embeddings=cfg.get("tie_word_embeddings", False),
        bos_token_id=cfg.get("bos_token_id"), eos_token_id=eos[0] if isinstance(eos, list) else eos, name=name,
    )


_LLAMA_LAYER = {  # HF suffix -> our suffix (inside model.layers.{i}. / blocks.{i}.)
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "mlp_norm.weight",
    **{f"self_attn.{p}.{t}": f"attn.{p}.{t}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")
       for t in ("weight", "bias")},
    "self_attn.q_norm.weight": "attn.q_norm.weight", "self_attn.k_norm.weight": "attn.k_norm.weight",  # Qwen3
    **{f"mlp.{p}.{t}": f"mlp.{p}.{t}" for p in ("gate_proj", "up_proj", "down_proj") for t in ("weight", "bias")},
}


def llama_state_dict_from_hf(sd: dict[str, torch.Tensor], config: ModelConfig,
                             table: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """HF Llama-block names -> ours; ``table``: the per-layer names (default ``_LLAMA_LAYER``; Gemma's own)."""
    table = _LLAMA_LAYER if table is None else table
    out = {"tok_emb.weight": sd["model.embed_tokens.weight"], "norm_f.weight": sd["model.norm.weight"]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for k, v in sd.items():
        if m := re.match(r"model\.layers\.(\d+)\.(.+)$", k):
            if m.group(2) in table:
                out[f"blocks.{m.group(1)}.{table[m.group(2)]}"] = v
            elif "rotary_emb" not in k:
                out[k] = v  # unknown: let GPT.from_state_dict name it
    return out


def from_hf_llama(folder: str | Path, dtype: torch.dtype = torch.float32) -> GPT:
    """A Llama-family model (SmolLM2, Qwen2/2.5, Qwen3 as published) from an HF folder: config.json + safetensors."""
    config = llama_config_from_hf(read_hf_config(folder), name=Path(folder).name)
    sd = {k: v.to(dtype) for k, v in load_hf_state_dict(folder).items()}
    return GPT.from_state_dict(config, llama_state_dict_from_hf(sd, config), source=str(folder))


# ---------------------------------------------------------------------------------------------------------------
# Gemma 3 (the Llama block with options: GeGLU, (1 + w) RMSNorms before and after each sublayer, scaled embeddings,
# q/k norm, sliding-window layers with their own RoPE base)
# ---------------------------------------------------------------------------------------------------------------

# Gemma3TextConfig's defaults: a config.json lists only what differs (a gemma3 one, only in its text_config)
_GEMMA3_DEFAULTS: dict[str, Any] = dict(
    vocab_size=262_208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
    num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131_072,
    rms_norm_eps=1e-6, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, rope_scaling=None,
    query_pre_attn_scalar=256, sliding_window=4096, sliding_window_pattern=6, final_logit_softcapping=None,
    attn_logit_softcapping=None, attention_bias=False, use_bidirectional_attention=False, tie_word_embeddings=True,
    bos_token_id=2, eos_token_id=1,
)
_GEMMA_LAYER = {  # HF suffix -> ours: Gemma's four norms, then the same attention and MLP names as Llama
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "post_attn_norm.weight",
    "pre_feedforward_layernorm.weight": "mlp_norm.weight", "post_feedforward_layernorm.weight": "post_mlp_norm.weight",
    **{k: v for k, v in _LLAMA_LAYER.items() if k.startswith(("self_attn.", "mlp."))},
}


def _gemma3_rope(c: dict[str, Any]) -> tuple[float, float, float | None]:
    """(full layers' theta, sliding layers' theta, linear scaling factor or None) from transformers 5's
    ``rope_parameters`` per layer type or 4's ``rope_theta`` / ``rope_local_base_freq`` / ``rope_scaling``."""
    params = c.get("rope_parameters") or {}
    full, local = dict(params.get("full_attention") or {}), dict(params.get("sliding_attention") or {})
    scaling = full if full.get("rope_type", full.get("type")) not in (None, "default") else (c.get("rope_scaling") or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "linear") or local.get("rope_type", "default") != "default":
        raise ValueError(f"gemma3 RoPE scaling {kind!r} is not supported (plain or linear, as published)")
    factor = float(scaling["factor"]) if kind == "linear" and float(scaling.get("factor", 1.0)) != 1.0 else None
    return (float(full.get("rope_theta", c["rope_theta"])), float(local.get("rope_theta", c["rope_local_base_freq"])),
            factor)


def gemma3_config_from_hf(cfg: dict[str, Any], name: str = "gemma3") -> ModelConfig:
    """ModelConfig from a Gemma 3 config.json: model_type "gemma3_text" (Gemma3ForCausalLM: 270M, 1B) or "gemma3"
    (Gemma3ForConditionalGeneration, 4B and up: its ``text_config``; the vision tower is not loaded)."""
    kind = cfg.get("model_type")
    if kind not in ("gemma3_text", "gemma3"):
        raise ValueError(f"model_type {kind!r} is not a Gemma 3 config (gemma3_text, gemma3)")
    text = (cfg.get("text_config") or {}) if kind == "gemma3" else cfg
    c = {**_GEMMA3_DEFAULTS, **{k: v for k, v in text.items() if k != "model_type"}}
    if kind == "gemma3" and "tie_word_embeddings" in cfg and "tie_word_embeddings" not in text:
        c["tie_word_embeddings"] = cfg["tie_word_embeddings"]
    act = c.get("hidden_activation") or c.get("hidden_act")
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ValueError(f"gemma3 activation {act!r} is not supported (only gelu_pytorch_tanh / GeGLU)")
    for key in ("attn_logit_softcapping", "use_bidirectional_attention", "attention_bias"):
        if c.get(key):
            raise ValueError(f"gemma3 with {key}={c[key]!r} is not supported (Gemma 3 as published has none)")
    n_layer = int(c["num_hidden_layers"])
    types = c.get("layer_types")
    if types is None:
        every = int(c.get("sliding_window_pattern") or c.get("_sliding_window_pattern") or 6)
        types = ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n_layer)]
    theta, local_theta, factor = _gemma3_rope(c)
    eos = c.get("eos_token_id")
    nh = int(c["num_attention_heads"])
    return ModelConfig(
        arch="llama", vocab_size=int(c["vocab_size"]), block_size=int(c["max_position_embeddings"]), n_layer=n_layer,
        n_head=nh, n_kv_head=int(c.get("num_key_value_heads") or nh), n_embd=int(c["hidden_size"]),
        intermediate_size=int(c["intermediate_size"]), rope_theta=theta, norm_eps=float(c["rms_norm_eps"]),
        bias=False, qkv_bias=False, qk_norm=True, head_dim=int(c.get("head_dim") or c["hidden_size"] // nh),
        activation="gelu_tanh", tie_embeddings=bool(c["tie_word_embeddings"]),
        bos_token_id=c.get("bos_token_id"), eos_token_id=eos[0] if isinstance(eos, list) else eos, name=name,
        norm_unit_offset=True, sandwich_norm=True, scale_embeddings=True,
        sliding_window=int(c["sliding_window"]) if "sliding_attention" in types else None,
        layer_types=list(types) if "sliding_attention" in types else None, rope_local_theta=local_theta,
        rope_scaling_factor=factor, query_pre_attn_scalar=float(c["query_pre_attn_scalar"]),
        final_logit_softcap=c.get("final_logit_softcapping"),
    )


def gemma3_state_dict_from_hf(sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """HF Gemma 3 names -> ours. A Gemma3ForConditionalGeneration keeps the text model under
    ``model.language_model.`` (older files: ``language_model.model.``); its vision tower and projector are skipped."""
    text: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith(("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                         "model.multi_modal_projector.")):
            continue
        for pre in ("model.language_model.", "language_model.model."):
            if k.startswith(pre):
                k = "model." + k.removeprefix(pre)
        text[k.removeprefix("language_model.")] = v  # language_model.lm_head.weight -> lm_head.weight
    return llama_state_dict_from_hf(text, config, _GEMMA_LAYER)


def from_hf_gemma3(folder: str | Path, dtype: torch.dtype = torch.float32) -> GPT:
    """Gemma 3 (the text model) from an HF folder: config.json + safetensors."""
    config = gemma3_config_from_hf(read_hf_config(folder), name=Path(folder).name)
    sd = {k: v.to(dtype) for k, v in load_hf_state_dict(folder).items()}
    return GPT.from_state_dict(config, gemma3_state_dict_from_hf(sd, config), source=str(folder))


def from_hf_folder(folder: str | Path, dtype: torch.dtype = torch.float32) -> GPT:
    """Dispatch on config.json's ``model_type`` (one of ``HF_MODEL_TYPES``)."""
    kind = read_hf_config(folder).get("model_type")
    if kind == "gpt2":
        return from_hf_gpt2(folder, dtype=dtype)
    if kind in ("gemma3_text", "gemma3"):
        return from_hf_gemma3(folder, dtype=dtype)
    if kind in HF_MODEL_TYPES:
        return from_hf_llama(folder, dtype=dtype)
    raise ValueError(f"{folder}: model_type {kind!r} is not supported (supported: {', '.join(HF_MODEL_TYPES)})")


# ---------------------------------------------------------------------------------------------------------------
# Export to a Hugging Face folder
# ---------------------------------------------------------------------------------------------------------------


def hf_config_and_state_dict(model: GPT) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Our model as a ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` / ``Qwen3ForCausalLM``
    config.json dict and state dict (the Qwen classes for the Qwen options, which Llama cannot express)."""
    c = model.config
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    dtype = str(sd["tok_emb.weight"].dtype).removeprefix("torch.")
    if c.arch == "llama" and _llama_family(c) == "gemma3_text":
        return _gemma3_to_hf(c, sd, dtype)
    out: dict[str, torch.Tensor] = {}
    if c.arch == "gpt2":
        if not c.bias:
            raise ValueError("GPT-2 without biases cannot be exported: transformers' GPT-2 always has biases")
        if c.intermediate_size is None:
            raise ValueError("intermediate_size must be set")
        cfg: dict[str, Any] = {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
            "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
            "n_inner": c.intermediate_size, "layer_norm_epsilon": c.norm_eps,
            "activation_function": "gelu_new" if c.activation == "gelu_tanh" else "gelu",
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        }
        out.update({"transformer." + hf: sd[ours] for hf, ours in _GPT2_TOP.items()})
        fused, parts = _GPT2_QKV
        for i in range(c.n_layer):
            b, h = f"blocks.{i}.", f"transformer.h.{i}."
            for hf, (ours, transposed) in _GPT2_LAYER.items():
                out[h + hf] = sd[b + ours].t() if transposed else sd[b + ours]
            out[h + fused + ".weight"] = torch.cat([sd[b + p + ".weight"] for p in parts], dim=0).t()  # (C, 3C)
            out[h + fused + ".bias"] = torch.cat([sd[b + p + ".bias"] for p in parts])
    else:
        kind = _llama_family(c)
        cfg = {
            "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                               "qwen3": "Qwen3ForCausalLM"}[kind]], "model_type": kind, "vocab_size": c.vocab_size,
            "hidden_size": c.n_embd, "intermediate_size": c.intermediate_size, "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim,
            "hidden_act": "silu", "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps,
            "rope_theta": c.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
            "rope_scaling": None, "attention_bias": bool(c.bias), "mlp_bias": bool(c.bias), "attention_dropout": 0.0,
        }
        if kind != "llama":
            cfg.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": c.n_layer})
        out["model.embed_tokens.weight"] = sd["tok_emb.weight"]
        out["model.norm.weight"] = sd["norm_f.weight"]
        inverse = {v: k for k, v in _LLAMA_LAYER.items()}
        for k, v in sd.items():
            if m := re.match(r"blocks\.(\d+)\.(.+)$", k):
                out[f"model.layers.{m.group(1)}.{inverse[m.group(2)]}"] = v
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    cfg.update({"tie_word_embeddings": c.tie_embeddings, "bos_token_id": c.bos_token_id,
                "eos_token_id": c.eos_token_id, "dtype": dtype, "torch_dtype": dtype, "use_cache": True})
    return cfg, {k: v.contiguous() for k, v in out.items()}


def _llama_family(c: ModelConfig) -> str:
    """Which transformers class holds a Llama-block config: llama (one bias setting), qwen2 (q/k/v biases only)
    or qwen3 (q/k norm, no biases); gemma3_text (all of Gemma's options, no biases)."""
    gemma = {"sandwich_norm": c.sandwich_norm, "norm_unit_offset": c.norm_unit_offset,
             "scale_embeddings": c.scale_embeddings, "qk_norm": c.qk_norm, "GeGLU": c.activation == "gelu_tanh"}
    if any(v for k, v in gemma.items() if k != "qk_norm") or c.layer_types or c.query_pre_attn_scalar:
        if not all(gemma.values()) or c.bias or c.qkv_bias:
            raise ValueError(f"this mix of Gemma options has no transformers class (Gemma3 needs all of "
                             f"{sorted(gemma)} and no biases; this model has {gemma})")
        return "gemma3_text"
    if c.qk_norm:
        if c.bias or c.qkv_bias:
            raise ValueError("q/k norm with biases has no transformers class (Qwen3 has no biases)")
        return "qwen3"
    if c.qkv_bias == c.bias:
        return "llama"
    if c.qkv_bias and not c.bias:
        return "qwen2"
    raise ValueError("biases on o_proj/MLP without q/k/v biases have no transformers class")


def _gemma3_to_hf(c: ModelConfig, sd: dict[str, torch.Tensor], dtype: str
                  ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A Gemma 3 model as a ``Gemma3ForCausalLM`` config.json dict (transformers 4 and 5 keys) and state dict."""
    local = c.rope_local_theta if c.rope_local_theta is not None else c.rope_theta
    f, q = c.rope_scaling_factor, c.query_pre_attn_scalar or c.head_dim
    full = {"rope_type": "linear", "factor": f} if f else {"rope_type": "default"}
    cfg: dict[str, Any] = {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd, "intermediate_size": c.intermediate_size, "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim,
        "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta, "rope_local_base_freq": local, "rope_scaling": full if f else None,
        "rope_parameters": {"full_attention": dict(full, rope_theta=c.rope_theta),
                            "sliding_attention": {"rope_type": "default", "rope_theta": local}},
        "query_pre_attn_scalar": int(q) if float(q).is_integer() else q,  # transformers wants an int for 256
        "sliding_window": c.sliding_window or c.block_size,
        "layer_types": c.layer_types or ["full_attention"] * c.n_layer,
        "final_logit_softcapping": c.final_logit_softcap, "attn_logit_softcapping": None, "attention_bias": False,
        "attention_dropout": 0.0, "use_bidirectional_attention": False, "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "dtype": dtype, "torch_dtype": dtype,
        "use_cache": True,
    }
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["norm_f.weight"]}
    inverse = {v: k for k, v in _GEMMA_LAYER.items()}
    for k, v in sd.items():
        if m := re.match(r"blocks\.(\d+)\.(.+)$", k):
            out[f"model.layers.{m.group(1)}.{inverse[m.group(2)]}"] = v
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return cfg, {k: v.contiguous() for k, v in out.items()}


def export_tokenizer_hf(tokenizer: Any, folder: str | Path) -> list[str]:
    """Write the tokenizer in an HF-loadable form if it can; returns the files written (may be empty)."""
    folder = Path(folder)
    for method in ("save_hf", "export_hf"):
        if callable(getattr(tokenizer, method, None)):
            getattr(tokenizer, method)(folder)
            return sorted(p.name for p in folder.iterdir() if "token" in p.name)
    if callable(getattr(tokenizer, "to_tokenizer_json", None)):
        data = tokenizer.to_tokenizer_json()
        (folder / "tokenizer.json").write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False))
        return ["tokenizer.json"]
    return []


def export_hf(model: GPT, folder: str | Path, tokenizer: Any = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ tokenizer files when possible) that
    ``transformers.AutoModelForCausalLM.from_pretrained(folder)`` loads with the same logits. Atomic."""
    from safetensors.torch import save_file

    folder = Path(folder)
    cfg, sd = hf_config_and_state_dict(model)
    with staged_dir(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}, indent=2) + "\n")
        if tokenizer is not None:
            export_tokenizer_hf(tokenizer, tmp)
    return folder
