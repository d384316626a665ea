"""Schedules: small pure functions of the step (the learning rate; the MoE router's
temperature, balance coefficient and prior, see routing.py)."""
from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak value: linear warmup over `warmup` steps to 1, then cosine decay
    to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


ANNEAL_SHAPES = ("linear", "exponential", "cosine")


def anneal(step: int, total: int, start: float, end: float, shape: str = "cosine") -> float:
    """A value moving from `start` at step 0 to `end` at `total` (then held): the router's
    softmax temperature (high -> low) and the balance-loss coefficient alpha (-> 0).

    linear: straight line; exponential: geometric interpolation (needs start, end > 0; for a
    decay to 0 use linear or cosine); cosine: half a cosine, flat at both ends.
    """
    if shape not in ANNEAL_SHAPES:
        raise ValueError(f"unknown schedule shape {shape!r}; use one of {', '.join(ANNEAL_SHAPES)}")
    r = min(1.0, max(0.0, step / max(1, total)))
    if shape == "linear":
        return start + (end - start) * r
    if shape == "exponential":
        if start <= 0 or end <= 0:
            raise ValueError("an exponential schedule needs positive start and end values")
        return start * (end / start) ** r
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * r))
