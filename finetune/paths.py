"""Where adapters and generated datasets go (``llm_core.paths.data_dir()``: $LLM_STUDIO_HOME or ./data)."""

from __future__ import annotations

from pathlib import Path

from llm_core.paths import data_dir

ROOT = Path(__file__).resolve().parents[1]
DEMO_ASSETS = ROOT / "assets" / "finetune_demo"  # committed copy of `python -m finetune.demo` output


def adapters_dir() -> Path:
    return data_dir() / "adapters"


__all__ = ["DEMO_ASSETS", "ROOT", "adapters_dir", "data_dir"]
