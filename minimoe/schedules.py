"""Schedules: small pure functions of the step (learning rates now; the MoE router's
temperature and balance coefficient later)."""
from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak value: linear warmup over `warmup` steps to 1, then cosine decay
    to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
