"""Shared test fixtures. Tests never touch the network or the user's real data folders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the bundled model in fp32 unless a test asks otherwise: "auto" measures every precision once per machine (about a
# minute), and answers asserted word for word come from fp32 (tests/test_precision_choice.py covers "auto")
os.environ.setdefault("STUDIO_PRECISION", "fp32")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))



@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread: their matmuls are dominated by thread synchronisation (20-50x
    slower with 2 threads on a busy machine). Modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """An empty studio data folder ($LLM_STUDIO_HOME) for one test."""
    monkeypatch.setenv("LLM_STUDIO_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture()
def registry(home):
    """A model registry whose default model is a tiny checkpoint in ``home`` (UI handler tests; no real model)."""
    from tests.test_app import make_tiny_checkpoint
    from ui.models import ModelRegistry

    return ModelRegistry(default_model=str(make_tiny_checkpoint(home / "checkpoints" / "tiny")))


@pytest.fixture(scope="module")
def k():  # noqa: ANN201 - the compiled module
    """llm_core.kernels' compiled module; the test is skipped, with the reason, where it is unavailable."""
    from llm_core import kernels

    mod = kernels.cpu_kernels(wait=True)
    if mod is None:
        pytest.skip(f"CPU kernels unavailable here: {kernels.unavailable_reason() or 'STUDIO_KERNELS=0'}")
    return mod


@pytest.fixture(scope="session", autouse=True)
def _kernels_ready():  # noqa: ANN202
    """Build (or load) our CPU kernels before the first test. A decode never waits for the compiler (it runs
    PyTorch's kernels meanwhile), so without this which kernel a test ran would depend on its timing."""
    from llm_core import kernels

    kernels.cpu_kernels(wait=True)
