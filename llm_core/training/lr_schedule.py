"""The learning-rate schedule of every run: linear warmup, then a cosine (or linear, or no) decay to a floor.

Pretraining uses nanoGPT's form (:func:`cosine_lr`, or :func:`cosine_lr_by_progress` under a time budget); LoRA
fine-tuning the same :func:`schedule_lr` with its own warmup convention, so saved runs resume on the same rates.
"""

from __future__ import annotations

import math

SHAPES = ("cosine", "linear", "constant")


def schedule_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, decay_steps: int,
                shape: str = "cosine", peak_in_warmup: bool = False) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Warmup ramps ``max_lr * (step + 1) / (warmup_steps + 1)`` so step 0 already moves the weights (nanoGPT);
    with ``peak_in_warmup`` the ramp is ``(step + 1) / warmup_steps`` and its last step is at the peak (LoRA's
    convention). From ``warmup_steps`` to ``decay_steps`` the rate goes down to ``min_lr`` along half a cosine,
    a straight line, or not at all (``constant``), and stays there.
    """
    if shape not in SHAPES:
        raise ValueError(f"schedule must be one of {SHAPES}, got {shape!r}")
    if step < warmup_steps:
        return max_lr * (step + 1) / (warmup_steps if peak_in_warmup else warmup_steps + 1)
    if shape == "constant":
        return max_lr
    ratio = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
    if shape == "linear":
        return min_lr + (1.0 - ratio) * (max_lr - min_lr)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def cosine_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """nanoGPT's schedule: :func:`schedule_lr` with a cosine down to ``min_lr`` at ``decay_steps``."""
    if step >= max(decay_steps, warmup_steps):
        return min_lr
    return schedule_lr(step, max_lr, min_lr, warmup_steps, decay_steps)


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
