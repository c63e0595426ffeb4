"""Give freed tensor memory back to the OS at once (glibc), for runs that opt into low memory.

PyTorch's CPU tensors come from ``malloc``. glibc serves big blocks from ``mmap`` only until the first one is
freed, then raises its threshold and keeps later blocks on the heap, where a long-lived tensor allocated between
short-lived ones (a gradient-checkpointing block input, say) pins the freed space around it. Measured on LoRA
fine-tuning of SmolLM2-135M, batch 8 x ~100 tokens, gradient checkpointing on (bench/finetune.py): peak RSS
2.20 GB with the default heap, 1.27 GB with big blocks always mmapped, at ~1.7x the step time (every block is
page-faulted in afresh). So this is part of the low-memory option, not a default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["eager_release"]

_M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's malloc.h
_SMALL = 128 * 1024  # glibc's starting threshold
_GLIBC_MAX = 32 * 1024 * 1024  # where glibc's adaptive threshold tops out on 64-bit (what a long run converges to)


def _mallopt():  # noqa: ANN202
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return None


@contextmanager
def eager_release(enabled: bool = True) -> Iterator[bool]:
    """Inside the block, allocations of 128 KiB and up are mmapped and unmapped on free (yields whether it could).

    Restores a 32 MiB threshold on exit (glibc's adaptive maximum); the process-wide setting is why this is a
    context manager around one training run rather than a switch."""
    fn = _mallopt() if enabled else None
    ok = bool(fn and fn(_M_MMAP_THRESHOLD, _SMALL) == 1)
    try:
        yield ok
    finally:
        if ok:
            fn(_M_MMAP_THRESHOLD, _GLIBC_MAX)  # type: ignore[misc]
