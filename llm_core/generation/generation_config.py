"""How to pick tokens and when to stop, and the sampling defaults a model is known to ship with.

Kept free of torch so that a UI can show these settings before any model (or torch) is loaded; generation itself
is ``llm_core.generation.generate``, which re-exports ``GenerationConfig``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_ALIASES = {"smollm2-135m-instruct", "smollm2", "smollm2-135m", "default"}


@dataclass
class GenerationConfig:
    """How to pick tokens and when to stop. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # HF semantics; 1.0 = off
    stop: list[str] = field(default_factory=list)  # stop strings, never included in the output
    seed: int | None = None  # None = nondeterministic sampling
    use_cache: bool = True
    stop_on_eos: bool = True
    eos_token_ids: list[int] | None = None  # None = the tokenizer's end-of-sequence / end-of-turn tokens
    fast: bool = True  # kept for callers; there is one decoder (the model's forward), so it changes nothing

    @classmethod
    def from_hf(cls, d: dict, base: GenerationConfig | None = None) -> GenerationConfig:
        """Sampling settings from a Hugging Face ``generation_config.json`` dict, over ``base``.

        HF semantics: ``do_sample`` false (or absent) is greedy; sampling without a ``top_k`` uses HF's 50."""
        cfg = dataclasses.replace(base) if base is not None else cls()
        if not d.get("do_sample", False):
            cfg.temperature = 0.0
            return cfg
        cfg.temperature = float(d.get("temperature", 1.0))
        cfg.top_k = int(d.get("top_k", 50) or 0)
        cfg.top_p = float(d.get("top_p", 1.0))
        cfg.repetition_penalty = float(d.get("repetition_penalty", 1.0))
        return cfg

    def to_hf(self) -> dict:
        """The sampling part as a Hugging Face ``generation_config.json`` dict (inverse of :meth:`from_hf`)."""
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "repetition_penalty": self.repetition_penalty}

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if isinstance(self.stop, str):
            raise ValueError("stop must be a list of strings, e.g. ['\\n\\n'], not a single string")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be a whole number from 0 to 2^63 - 1 (or none for random), got {self.seed:.6g}")


# SmolLM2's published generation settings (its model card: do_sample, temperature 0.2, top_p 0.9); the GGUF carries
# none, and the HF repo's generation_config.json names only token ids
SMOLLM2_GENERATION = GenerationConfig(temperature=0.2, top_p=0.9)


def is_default_name(name: str | Path) -> bool:
    """Does ``name`` mean the bundled default model (``smollm2``, ``default``, ...)?"""
    return str(name).lower() in DEFAULT_ALIASES


def known_generation_config(name: str | Path) -> GenerationConfig | None:
    """The sampling defaults a model ships with when they are known without loading it (the bundled SmolLM2's),
    so a UI can show them before the first load finishes; None for anything else."""
    return dataclasses.replace(SMOLLM2_GENERATION) if is_default_name(name) else None
