"""Where adapters and generated datasets go: ``llm_core.paths.data_dir()`` ($LLM_STUDIO_HOME or ./data)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_ASSETS = ROOT / "assets" / "finetune_demo"


def data_dir() -> Path:
    try:
        from llm_core.paths import data_dir as core_data_dir
    except ImportError:  # same rule as llm_core.paths
        return Path(os.environ.get("LLM_STUDIO_HOME", "data"))
    return Path(core_data_dir())
