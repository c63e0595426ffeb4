"""GGUF (llama.cpp) import: metadata to ModelConfig, tensor names to ours, the q/k RoPE row order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.tokenizer.gguf_vocab import gguf_field
from llm_core.weights.fits import ensure_fits
from llm_core.weights.hf import Progress

GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")



def _gemma3_options(reader: Any, p: str, n_layer: int, C: int, nh: int, hs: int) -> dict[str, Any]:
    """Gemma 3's ModelConfig options from llama.cpp's metadata. llama.cpp fixes what the file does not say: every
    6th layer global, the sliding layers' RoPE base 10000, the attention scale 1/sqrt(head_dim) except for the 27B
    (62 layers: 1/sqrt(n_embd / n_head), its query_pre_attn_scalar)."""
    window = gguf_field(reader, p + "attention.sliding_window")
    pattern = gguf_field(reader, p + "attention.sliding_window_pattern", 6)
    if isinstance(pattern, list):  # one flag per layer, True = sliding
        sliding = [bool(s) for s in pattern]
    else:
        sliding = [bool((i + 1) % int(pattern)) for i in range(n_layer)]
    kind = gguf_field(reader, p + "rope.scaling.type")
    factor = float(gguf_field(reader, p + "rope.scaling.factor", 1.0))
    if kind not in (None, "none", "linear"):
        raise ValueError(f"gemma3 GGUF rope.scaling.type {kind!r} is not supported (none or linear)")
    types = ["sliding_attention" if s else "full_attention" for s in sliding] if window and any(sliding) else None
    return dict(activation="gelu_tanh", norm_unit_offset=True, sandwich_norm=True, scale_embeddings=True,
                sliding_window=int(window) if types else None, layer_types=types,
                rope_local_theta=float(gguf_field(reader, p + "rope.freq_base_swa", 10000.0)),
                rope_scaling_factor=factor if kind == "linear" and factor != 1.0 else None,
                query_pre_attn_scalar=float(C // nh if n_layer == 62 else hs))


def gguf_config(reader: Any, name: str = "gguf") -> ModelConfig:
    """ModelConfig from a GGUF file's metadata (``<arch>.*`` keys; arch one of ``GGUF_ARCHITECTURES``)."""
    arch = gguf_field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} is not supported (supported: {', '.join(GGUF_ARCHITECTURES)})")
    p = f"{arch}."
    names = {t.name for t in reader.tensors}
    vocab = gguf_field(reader, p + "vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    eps = float(f"{gguf_field(reader, p + 'attention.layer_norm_rms_epsilon', 1e-5):.7g}")  # float32 -> 1e-05
    C, nh = int(gguf_field(reader, p + "embedding_length")), int(gguf_field(reader, p + "attention.head_count"))
    hs = int(gguf_field(reader, p + "attention.key_length", C // nh))  # Qwen3 sets it (e.g. 128 on a 1024 stream)
    rope_dim = gguf_field(reader, p + "rope.dimension_count")
    if rope_dim is not None and rope_dim != hs:
        raise ValueError(f"GGUF rope.dimension_count={rope_dim} != head size {hs} (partial RoPE unsupported)")
    n_layer = int(gguf_field(reader, p + "block_count"))
    gemma = _gemma3_options(reader, p, n_layer, C, nh, hs) if arch == "gemma3" else {}
    return ModelConfig(**gemma,
        arch="llama", vocab_size=int(vocab), block_size=int(gguf_field(reader, p + "context_length", 2048)),
        n_layer=int(gguf_field(reader, p + "block_count")), n_head=nh,
        n_kv_head=int(gguf_field(reader, p + "attention.head_count_kv", nh)), n_embd=C,
        intermediate_size=int(gguf_field(reader, p + "feed_forward_length")),
        rope_theta=float(gguf_field(reader, p + "rope.freq_base", 10000.0)), norm_eps=eps, bias=False,
        qkv_bias="blk.0.attn_q.bias" in names, qk_norm="blk.0.attn_q_norm.weight" in names, head_dim=hs,
        tie_embeddings="output.weight" not in names,
        bos_token_id=gguf_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=gguf_field(reader, "tokenizer.ggml.eos_token_id"), name=name,
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
               "attn_q_norm": "attn.q_norm", "attn_k_norm": "attn.k_norm",  # Qwen3, Gemma 3
               "post_attention_norm": "post_attn_norm", "post_ffw_norm": "post_mlp_norm"}  # Gemma 3


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
    ensure_fits(sum(int(t.n_elements) for t in reader.tensors), str(path))
    interleaved = gguf_field(reader, "general.architecture") == "llama"
    norm_shift = 1.0 if config.norm_unit_offset else 0.0  # llama.cpp stores Gemma's norm weights as 1 + w
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
        if norm_shift and t.name.endswith("norm.weight"):  # attn_norm, post_ffw_norm, attn_q_norm, output_norm...
            w = w - norm_shift
        w = np.ascontiguousarray(w)
        sd[key] = torch.from_numpy(w if w.flags.writeable else w.copy()).to(dtype)
        if progress is not None:
            progress(n + 1, len(reader.tensors))
    return GPT.from_state_dict(config, sd, source=str(path))
