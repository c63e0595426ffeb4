"""Learning-rate schedule: linear warmup, then cosine decay to a floor (nanoGPT's schedule)."""

from __future__ import annotations

import math


def cosine_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Warmup ramps ``max_lr * (step + 1) / (warmup_steps + 1)`` so step 0 already moves the weights; from
    ``warmup_steps`` to ``decay_steps`` the rate follows half a cosine down to ``min_lr`` and stays there.
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_lr
    ratio = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def cosine_lr_by_progress(step: int, progress: float, max_lr: float, min_lr: float, warmup_steps: int,
                          warmup_progress: float = 0.0) -> float:
    """Same shape, driven by the fraction of the budget used (``progress`` in [0, 1]).

    Used when a run is bounded by wall-clock time: the cosine reaches ``min_lr`` exactly when the time
    budget runs out, whatever the step rate. ``warmup_progress`` is where the cosine starts.
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / (warmup_steps + 1)
    ratio = min(1.0, max(0.0, (progress - warmup_progress) / max(1e-12, 1.0 - warmup_progress)))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)
