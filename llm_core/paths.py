"""Where the app keeps user data (checkpoints, adapters, RAG collections) and the converted-model cache."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """``$LLM_STUDIO_HOME`` or ``./data``: checkpoints/, adapters/, rag/ live here."""
    return Path(os.environ.get("LLM_STUDIO_HOME") or "data").expanduser()


def cache_dir() -> Path:
    """``$LLM_STUDIO_CACHE`` or ``~/.cache/llm-scratch-studio``: converted weights (e.g. the dequantized GGUF)."""
    env = os.environ.get("LLM_STUDIO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llm-scratch-studio"


def checkpoints_dir() -> Path:
    return data_dir() / "checkpoints"
