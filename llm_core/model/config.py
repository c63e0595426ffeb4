"""One typed config drives the whole model: the GPT-2 family and the Llama family (SmolLM2, Qwen2/2.5, Qwen3,
Gemma 3).

Derived values (head size, defaults that depend on the family) are filled in
``__post_init__`` so a checkpoint only needs to store what was chosen.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

Arch = Literal["gpt2", "llama"]
LAYER_TYPES = ("full_attention", "sliding_attention")  # HF's names, per layer
# Gemma 3's options and their "off" values: to_dict leaves them out when off (older readers, same files)
_GEMMA_DEFAULTS: dict[str, Any] = {
    "norm_unit_offset": False, "sandwich_norm": False, "scale_embeddings": False, "sliding_window": None,
    "layer_types": None, "rope_local_theta": None, "rope_scaling_factor": None, "query_pre_attn_scalar": None,
    "final_logit_softcap": None,
}


def read_json_object(path: str | Path, what: str = "") -> dict[str, Any]:
    """A JSON file that must hold an object, with errors naming the file (``what`` prefixes them, e.g. the folder).

    Every config reader (ours, Hugging Face's, checkpoints') goes through here, so a missing, corrupt or wrong
    file reads the same everywhere: "<what>: config.json is missing / is not valid JSON / must hold an object"."""
    path = Path(path)
    where = f"{what}: {path.name}" if what else str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where} is missing")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where} is not valid JSON ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{where} must hold a JSON object")
    return d


@dataclass
class ModelConfig:
    """Hyper-parameters of a decoder-only transformer.

    ``arch="gpt2"``: learned absolute positions, LayerNorm, GELU MLP, biases.
    ``arch="llama"``: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, no biases.
    Qwen2/2.5 is ``arch="llama"`` with ``qkv_bias=True`` (biases on q/k/v only); Qwen3 adds ``qk_norm=True``
    (RMSNorm over each head of q and k, before RoPE) and may set ``head_dim`` != n_embd / n_head.
    Gemma 3 is ``arch="llama"`` with ``activation="gelu_tanh"`` (GeGLU), ``qk_norm``, and the Gemma options below.
    """

    arch: Arch = "gpt2"
    vocab_size: int = 50257
    block_size: int = 1024  # maximum context length in tokens
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int | None = None  # None -> n_head (plain multi-head attention)
    intermediate_size: int | None = None  # None -> 4 * n_embd (gpt2) / 8/3 * n_embd rounded (llama)
    rope_theta: float = 10000.0
    norm_eps: float | None = None  # None -> 1e-5
    bias: bool | None = None  # None -> True for gpt2, False for llama
    # MLP non-linearity. None -> "gelu_tanh" for gpt2 (GPT-2's "gelu_new"), "silu" for llama (SwiGLU).
    # "gelu" is the exact erf GELU (nanoGPT's nn.GELU), also ~3x cheaper than the tanh form on an AVX2 CPU.
    activation: str | None = None
    tie_embeddings: bool = True
    dropout: float = 0.0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    name: str = "custom"
    # attention extras (Qwen families). qkv_bias None -> same as ``bias``; the output projection and the MLP follow
    # ``bias``. head_dim None -> n_embd // n_head (Qwen3-0.6B: 16 heads of 128 on a 1024-wide stream).
    qkv_bias: bool | None = None
    qk_norm: bool = False
    head_dim: int | None = None
    # Gemma 3 options (all off for Llama/Qwen). norm_unit_offset: RMSNorm scales by (1 + weight), the weights
    # stored as offsets from 1. sandwich_norm: a norm on each sublayer's output too (post-attention,
    # post-feedforward), before the residual add. scale_embeddings: token embeddings times sqrt(n_embd).
    # layer_types: "sliding_attention" / "full_attention" per layer (None: all full); a sliding layer sees the last
    # ``sliding_window`` positions (its own included) and rotates by ``rope_local_theta`` (None: rope_theta).
    # rope_scaling_factor: linear RoPE scaling of the full layers (Gemma 3 4B and up: 8). query_pre_attn_scalar:
    # attention scale 1/sqrt(this) instead of 1/sqrt(head_dim). final_logit_softcap: logits = cap*tanh(logits/cap).
    norm_unit_offset: bool = False
    sandwich_norm: bool = False
    scale_embeddings: bool = False
    sliding_window: int | None = None
    layer_types: list[str] | None = None
    rope_local_theta: float | None = None
    rope_scaling_factor: float | None = None
    query_pre_attn_scalar: float | None = None
    final_logit_softcap: float | None = None

    def __post_init__(self) -> None:
        if self.arch not in ("gpt2", "llama"):
            raise ValueError(f"unknown arch {self.arch!r}: expected 'gpt2' or 'llama'")
        if self.head_dim is None and self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head} (or set head_dim)")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.arch == "gpt2" and self.n_kv_head != self.n_head:
            raise ValueError("the gpt2 family uses plain multi-head attention (n_kv_head == n_head)")
        if self.intermediate_size is None:
            if self.arch == "gpt2":
                self.intermediate_size = 4 * self.n_embd
            else:  # SwiGLU: 2/3 of 4*d, rounded up to a multiple of 64
                hidden = int(2 * 4 * self.n_embd / 3)
                self.intermediate_size = 64 * ((hidden + 63) // 64)
        if self.norm_eps is None:
            self.norm_eps = 1e-5
        if self.bias is None:
            self.bias = self.arch == "gpt2"
        if self.activation is None:
            self.activation = "gelu_tanh" if self.arch == "gpt2" else "silu"
        allowed = ("gelu_tanh", "gelu") if self.arch == "gpt2" else ("silu", "gelu_tanh")  # gelu_tanh: GeGLU
        if self.activation not in allowed:
            raise ValueError(f"activation {self.activation!r} is not available for arch {self.arch!r}: "
                             f"choose {' or '.join(allowed)}")
        if self.qkv_bias is None:
            self.qkv_bias = bool(self.bias)
        if self.head_dim is None:
            self.head_dim = self.n_embd // self.n_head
        if self.head_dim <= 0 or (self.arch == "llama" and self.head_dim % 2):
            raise ValueError(f"head_dim={self.head_dim} must be positive (and even for RoPE)")
        if self.arch == "gpt2":
            if self.head_dim * self.n_head != self.n_embd:
                raise ValueError("the gpt2 family needs head_dim == n_embd / n_head")
            if self.qk_norm or self.qkv_bias != self.bias:
                raise ValueError("qk_norm and a separate qkv_bias are Llama-family (Qwen) options, not gpt2 ones")
            gemma = sorted(k for k, off in _GEMMA_DEFAULTS.items() if getattr(self, k) != off)
            if gemma:
                raise ValueError(f"{gemma} are Llama-family (Gemma 3) options, not gpt2 ones")
        if self.layer_types is not None:
            self.layer_types = list(self.layer_types)
            bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if len(self.layer_types) != self.n_layer or bad:
                raise ValueError(f"layer_types needs one of {LAYER_TYPES} per layer ({self.n_layer}); got "
                                 f"{len(self.layer_types)} entries{f', unknown {bad}' if bad else ''}")
            if "sliding_attention" in self.layer_types and (self.sliding_window is None or self.sliding_window < 1):
                raise ValueError(f"sliding_attention layers need a sliding_window >= 1, got {self.sliding_window}")
        if self.final_logit_softcap is not None and self.final_logit_softcap <= 0:
            raise ValueError(f"final_logit_softcap must be positive, got {self.final_logit_softcap}")

    def is_sliding(self, layer: int) -> bool:
        """Does layer ``layer`` use sliding-window attention (Gemma 3's local layers)?"""
        return self.layer_types is not None and self.layer_types[layer] == "sliding_attention"

    @property
    def gelu_approximate(self) -> str:
        """``F.gelu``'s ``approximate`` argument for this activation (gpt2 family)."""
        return "tanh" if self.activation == "gelu_tanh" else "none"

    @property
    def n_rep(self) -> int:
        """How many query heads share one key/value head (GQA)."""
        return self.n_head // self.n_kv_head  # type: ignore[operator]

    # ---- (de)serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field; the Qwen extras only when they differ from their defaults (older readers, same files)."""
        d = asdict(self)
        if self.head_dim * self.n_head == self.n_embd:  # type: ignore[operator]
            d.pop("head_dim")
        if self.qkv_bias == self.bias:
            d.pop("qkv_bias")
        if not self.qk_norm:
            d.pop("qk_norm")
        for k, off in _GEMMA_DEFAULTS.items():
            if d[k] == off:
                d.pop(k)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(read_json_object(path))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        d = dict(PRESETS[name])
        d.update(overrides)
        d.setdefault("name", name)
        return cls(**d)


PRESETS: dict[str, dict[str, Any]] = {
    # Hugging Face GPT-2 family
    "gpt2": dict(arch="gpt2", vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768,
                 bos_token_id=50256, eos_token_id=50256),
    "gpt2-medium": dict(arch="gpt2", vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024,
                        bos_token_id=50256, eos_token_id=50256),
    # SmolLM2-135M (Llama family, GQA 9 query heads / 3 kv heads)
    "smollm2-135m": dict(arch="llama", vocab_size=49152, block_size=8192, n_layer=30, n_head=9, n_kv_head=3,
                         n_embd=576, intermediate_size=1536, rope_theta=100000.0, norm_eps=1e-5,
                         bos_token_id=1, eos_token_id=2),
    # Small models for pretraining from scratch on a CPU (vocab_size is set from the tokenizer)
    "nano": dict(arch="gpt2", vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128),
    "micro": dict(arch="gpt2", vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=192),
    "small": dict(arch="gpt2", vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384),
    "nano-llama": dict(arch="llama", vocab_size=65, block_size=64, n_layer=4, n_head=4, n_kv_head=2, n_embd=128),
    # Tiny configs for tests
    "tiny-gpt2": dict(arch="gpt2", vocab_size=128, block_size=64, n_layer=2, n_head=4, n_embd=32),
    "tiny-llama": dict(arch="llama", vocab_size=128, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                       intermediate_size=64),
}
