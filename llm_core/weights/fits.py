"""Say before loading when a model would not fit in the memory this machine has free.

Loading a model that is too large does not fail cleanly: the machine swaps for minutes and the process is killed
mid-way. So every loader counts the weights' elements from the file headers first (safetensors headers, GGUF tensor
infos: no tensor is read) and compares their float32 size, which is what loading builds, with the free memory.
``STUDIO_SKIP_MEMORY_CHECK=1`` skips the check (for a machine whose swap the user trusts).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path


class ModelTooLarge(ValueError):
    """The model's float32 weights alone need more memory than is free."""


def free_bytes() -> int:
    """Memory available to a new allocation without swapping (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def ensure_fits(numel: int, source: str, bytes_per_param: int = 4) -> None:
    """Raise :class:`ModelTooLarge` naming the sizes when ``numel`` parameters at ``bytes_per_param`` exceed the
    free memory."""
    if os.environ.get("STUDIO_SKIP_MEMORY_CHECK", "") not in ("", "0"):
        return
    need, free = numel * bytes_per_param, free_bytes()
    if need > free:
        raise ModelTooLarge(
            f"{source}: this model has {numel / 1e9:.2f}B parameters, which need {_gib(need)} of memory as float32, "
            f"but only {_gib(free)} is free. Pick a smaller model, or close other programs and try again "
            f"(STUDIO_SKIP_MEMORY_CHECK=1 loads it anyway).")


def safetensors_numel(files: Iterable[Path], source: str) -> int:
    """Elements in these safetensors files, from their headers. A corrupt or truncated file raises a ValueError that
    names it, before torch ever sees it."""
    from llm_core.weights.quantized_load import SafetensorsFile

    total = 0
    for f in files:
        with SafetensorsFile(f, source=f"{source} ({Path(f).name})") as sf:
            total += sum(math.prod(sf.shape(k)) for k in sf.keys())
    return total
