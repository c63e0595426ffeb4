"""llm_core.training.heap: the low-memory option really hands freed tensor memory back to the OS (Linux/glibc)."""

from __future__ import annotations

import sys

import pytest
import torch

from llm_core.training.heap import eager_release


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_freed_tensors_leave_the_resident_set() -> None:
    with eager_release() as ok:
        if not ok:
            pytest.skip("not glibc")
        keep = []
        base = rss_mb()
        for _ in range(20):  # 20 x 8 MB temporaries, each with a small long-lived tensor after it
            t = torch.ones(2 * 2**20)
            keep.append(torch.ones(1000))
            del t
        grown = rss_mb() - base
    assert grown < 40, f"resident set grew {grown:.0f} MB though every big tensor was freed"
    assert len(keep) == 20
    with eager_release(False) as ok:
        assert ok is False  # opt-in: nothing changes unless asked
