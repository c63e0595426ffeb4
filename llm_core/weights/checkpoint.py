"""Our checkpoint folder: ``config.json`` (ModelConfig) + ``model.safetensors`` + tokenizer files + ``checkpoint.json``.

Writes are atomic: everything goes into a temporary sibling folder that replaces the target only when complete,
so a crash or a full disk never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llm_core.atomic import staged_dir
from llm_core.model.config import ModelConfig, read_json_object
from llm_core.model.gpt import GPT

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
TOKENIZER_FILE = "tokenizer_scratch.json"
GENERATION_FILE = "generation_config.json"  # HF's name and format: sampling defaults the model ships with
FORMAT_VERSION = 1


def model_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """CPU tensors to store; a tied lm_head is stored once (as tok_emb.weight)."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def save_checkpoint(folder: str | Path, model: GPT, tokenizer: Any = None, extra: dict[str, Any] | None = None
                    ) -> Path:
    """Save model (+ tokenizer via ``tokenizer.save(folder)``) + JSON ``extra`` (e.g. training step) atomically."""
    from safetensors.torch import save_file

    with staged_dir(folder) as tmp:
        model.config.save(tmp / CONFIG_FILE)
        save_file(model_state_dict(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp)
        if getattr(model, "generation_config", None) is not None:
            (tmp / GENERATION_FILE).write_text(json.dumps(model.generation_config.to_hf(), indent=2) + "\n")
        meta = {"format_version": FORMAT_VERSION, "tokenizer": tokenizer is not None, "extra": extra or {}}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def is_checkpoint(folder: str | Path) -> bool:
    """Our format (config.json with an ``arch`` field), as opposed to a Hugging Face folder (``model_type``)."""
    try:
        return "arch" in json.loads((Path(folder) / CONFIG_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return False


def read_meta(folder: str | Path) -> dict[str, Any]:
    """checkpoint.json: ``format_version``, ``tokenizer`` (bool), ``extra`` (what save_checkpoint was given)."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return {"format_version": FORMAT_VERSION, "tokenizer": (Path(folder) / TOKENIZER_FILE).is_file(), "extra": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: {META_FILE} is not valid JSON ({e})") from e


def read_generation_config(folder: str | Path) -> Any:
    """The sampling defaults saved with a model (HF ``generation_config.json``), or None when there are none."""
    from llm_core.generation.generate import GenerationConfig

    path = Path(folder) / GENERATION_FILE
    if not path.is_file():
        return None
    d = read_json_object(path, f"model {folder}")
    try:
        return GenerationConfig.from_hf(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model {folder}: {GENERATION_FILE} has invalid settings ({e})") from e


def load_config(folder: str | Path) -> ModelConfig:
    d = read_json_object(Path(folder) / CONFIG_FILE, f"checkpoint {folder}")
    try:
        return ModelConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {folder}: {CONFIG_FILE} has invalid settings ({e})") from e


def load_checkpoint(folder: str | Path, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> tuple[GPT, Any]:
    """(model in eval mode, tokenizer or None if none was saved). Clear errors name the bad file or tensor."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    config = load_config(folder)
    meta = read_meta(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint {folder}: {WEIGHTS_FILE} is missing")
    try:
        sd = load_file(str(weights), device=str(device) if device is not None else "cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint {folder}: {WEIGHTS_FILE} is corrupt or not a safetensors file ({e})") from e
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    model = GPT.from_state_dict(config, sd, source=f"checkpoint {folder}: {WEIGHTS_FILE}").eval()
    model.generation_config = read_generation_config(folder)
    return model, load_saved_tokenizer(folder, meta, config)


def load_saved_tokenizer(folder: Path, meta: dict[str, Any], config: ModelConfig) -> Any:
    """The tokenizer saved with a checkpoint (None when none was), checked against the model's vocabulary."""
    if not meta.get("tokenizer", True):
        return None
    if not (folder / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"checkpoint {folder}: {TOKENIZER_FILE} is missing")
    from llm_core.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(folder)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"checkpoint {folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                         f"vocab_size is {config.vocab_size}")
    return tokenizer
