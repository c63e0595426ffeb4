"""Weight import (HF GPT-2, HF Llama/SmolLM2, HF Qwen2/2.5 and Qwen3, GGUF) and export to a Hugging Face folder.

Every importer maps foreign tensor names onto our stable names (see ``GPT``) and builds the model with
``GPT.from_state_dict``, which checks every name and shape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_core.checkpoint import replace_dir, staged_dir  # noqa: F401 (replace_dir lived here; kept importable)
from llm_core.config import ModelConfig, read_json_object
from llm_core.model import GPT

Progress = Callable[[int, int], None]  # (done, total)

# config.json model_type / GGUF general.architecture values we load; all but gpt2 are the Llama block with options
HF_MODEL_TYPES = ("gpt2", "llama", "qwen2", "qwen3")
GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3")

# ---------------------------------------------------------------------------------------------------------------
# Reading Hugging Face folders
# ---------------------------------------------------------------------------------------------------------------


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    return read_json_object(Path(folder) / "config.json", str(folder))


def load_hf_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder: ``*.safetensors`` (sharded too) or ``pytorch_model.bin`` (weights only)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # sharded: the index names the files
        files = [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        files = sorted(folder.glob("*.safetensors"))
    sd: dict[str, torch.Tensor] = {}
    if files:
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


def llama_state_dict_from_hf(sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    out = {"tok_emb.weight": sd["model.embed_tokens.weight"], "norm_f.weight": sd["model.norm.weight"]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for k, v in sd.items():
        if m := re.match(r"model\.layers\.(\d+)\.(.+)$", k):
            if m.group(2) in _LLAMA_LAYER:
                out[f"blocks.{m.group(1)}.{_LLAMA_LAYER[m.group(2)]}"] = v
            elif "rotary_emb" not in k:
                out[k] = v  # unknown: let GPT.from_state_dict name it
    return out


def from_hf_llama(folder: str | Path, dtype: torch.dtype = torch.float32) -> GPT:
    """A Llama-family model (SmolLM2, Qwen2/2.5, Qwen3 as published) from an HF folder: config.json + safetensors."""
    config = llama_config_from_hf(read_hf_config(folder), name=Path(folder).name)
    sd = {k: v.to(dtype) for k, v in load_hf_state_dict(folder).items()}
    return GPT.from_state_dict(config, llama_state_dict_from_hf(sd, config), source=str(folder))


def from_hf_folder(folder: str | Path, dtype: torch.dtype = torch.float32) -> GPT:
    """Dispatch on config.json's ``model_type`` (one of ``HF_MODEL_TYPES``)."""
    kind = read_hf_config(folder).get("model_type")
    if kind == "gpt2":
        return from_hf_gpt2(folder, dtype=dtype)
    if kind in HF_MODEL_TYPES:
        return from_hf_llama(folder, dtype=dtype)
    raise ValueError(f"{folder}: model_type {kind!r} is not supported (supported: {', '.join(HF_MODEL_TYPES)})")


# ---------------------------------------------------------------------------------------------------------------
# GGUF (llama.cpp)
# ---------------------------------------------------------------------------------------------------------------


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_config(reader: Any, name: str = "gguf") -> ModelConfig:
    """ModelConfig from a GGUF file's metadata (``<arch>.*`` keys; arch one of ``GGUF_ARCHITECTURES``)."""
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} is not supported (supported: {', '.join(GGUF_ARCHITECTURES)})")
    p = f"{arch}."
    names = {t.name for t in reader.tensors}
    vocab = _field(reader, p + "vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    eps = float(f"{_field(reader, p + 'attention.layer_norm_rms_epsilon', 1e-5):.7g}")  # float32 -> 1e-05
    C, nh = int(_field(reader, p + "embedding_length")), int(_field(reader, p + "attention.head_count"))
    hs = int(_field(reader, p + "attention.key_length", C // nh))  # Qwen3 sets it (e.g. 128 on a 1024 stream)
    rope_dim = _field(reader, p + "rope.dimension_count")
    if rope_dim is not None and rope_dim != hs:
        raise ValueError(f"GGUF rope.dimension_count={rope_dim} != head size {hs} (partial RoPE unsupported)")
    return ModelConfig(
        arch="llama", vocab_size=int(vocab), block_size=int(_field(reader, p + "context_length", 2048)),
        n_layer=int(_field(reader, p + "block_count")), n_head=nh,
        n_kv_head=int(_field(reader, p + "attention.head_count_kv", nh)), n_embd=C,
        intermediate_size=int(_field(reader, p + "feed_forward_length")),
        rope_theta=float(_field(reader, p + "rope.freq_base", 10000.0)), norm_eps=eps, bias=False,
        qkv_bias="blk.0.attn_q.bias" in names, qk_norm="blk.0.attn_q_norm.weight" in names, head_dim=hs,
        tie_embeddings="output.weight" not in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"), name=name,
    )


def _interleave_order(rows: int, n_head: int) -> np.ndarray:
    """Row order of the GGUF q/k layout: per head of ``hs`` rows, rows i and i + hs/2 of the HF (rotate-half)
    layout become neighbours 2i and 2i + 1 (RoPE pairs (x_i, x_{i+hs/2}) vs adjacent pairs (x_2i, x_2i+1))."""
    hs = rows // n_head
    half = np.arange(hs // 2)
    in_head = np.stack([half, half + hs // 2], axis=1).reshape(-1)  # (hs,) 0, hs/2, 1, hs/2+1, ...
    return (np.arange(n_head)[:, None] * hs + in_head).reshape(-1)  # (rows,)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half layout -> GGUF's interleaved pairs (what llama.cpp's converter stores), per head, on rows."""
    return w[_interleave_order(w.shape[0], n_head)]


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of ``permute_qk``: interleaved pairs (GGUF) -> the HF rotate-half layout our RoPE uses."""
    out = np.empty_like(w)
    out[_interleave_order(w.shape[0], n_head)] = w
    return out


_GGUF_LAYER = {"attn_norm": "attn_norm", "attn_q": "attn.q_proj", "attn_k": "attn.k_proj", "attn_v": "attn.v_proj",
               "attn_output": "attn.o_proj", "ffn_norm": "mlp_norm", "ffn_gate": "mlp.gate_proj",
               "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
               "attn_q_norm": "attn.q_norm", "attn_k_norm": "attn.k_norm"}  # the last two: Qwen3


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32, progress: Progress | None = None) -> GPT:
    """A Llama, Qwen2 or Qwen3 GGUF (any type ``gguf.quants`` can dequantize: F32/F16/BF16/Q4_0/Q4_1/Q8_0/K-quants).

    llama.cpp's converter interleaves the RoPE pairs of q/k rows only for ``llama`` files (its rope type NORM);
    Qwen files keep the Hugging Face rotate-half layout (NEOX), so their q/k are taken as they are."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - the gguf package raises plain ValueError/struct errors
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e
    config = gguf_config(reader, name=path.stem)
    interleaved = _field(reader, "general.architecture") == "llama"
    sd: dict[str, torch.Tensor] = {}
    for n, t in enumerate(reader.tensors):
        w = gguf.quants.dequantize(t.data, t.tensor_type)  # float32 numpy, row-major
        w = w.reshape(tuple(int(s) for s in reversed(t.shape)))  # GGML lists dims innermost first
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            key = "tok_emb.weight"
        elif t.name == "output_norm.weight":
            key = "norm_f.weight"
        elif t.name == "output.weight":
            key = "lm_head.weight"
        elif parts[0] == "blk" and parts[2] in _GGUF_LAYER:
            key = f"blocks.{parts[1]}.{_GGUF_LAYER[parts[2]]}.{parts[3]}"
            if parts[2] == "attn_q" and interleaved:
                w = unpermute_qk(w, config.n_head)
            elif parts[2] == "attn_k" and interleaved:
                w = unpermute_qk(w, config.n_kv_head)  # type: ignore[arg-type]
        elif t.name == "rope_freqs.weight":
            continue
        else:
            key = t.name  # unknown: GPT.from_state_dict names it
        w = np.ascontiguousarray(w)
        sd[key] = torch.from_numpy(w if w.flags.writeable else w.copy()).to(dtype)
        if progress is not None:
            progress(n + 1, len(reader.tensors))
    return GPT.from_state_dict(config, sd, source=str(path))


# ---------------------------------------------------------------------------------------------------------------
# Export to a Hugging Face folder
# ---------------------------------------------------------------------------------------------------------------


def hf_config_and_state_dict(model: GPT) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Our model as a ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` / ``Qwen3ForCausalLM``
    config.json dict and state dict (the Qwen classes for the Qwen options, which Llama cannot express)."""
    c = model.config
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    dtype = str(sd["tok_emb.weight"].dtype).removeprefix("torch.")
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
    or qwen3 (q/k norm, no biases)."""
    if c.qk_norm:
        if c.bias or c.qkv_bias:
            raise ValueError("q/k norm with biases has no transformers class (Qwen3 has no biases)")
        return "qwen3"
    if c.qkv_bias == c.bias:
        return "llama"
    if c.qkv_bias and not c.bias:
        return "qwen2"
    raise ValueError("biases on o_proj/MLP without q/k/v biases have no transformers class")


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
