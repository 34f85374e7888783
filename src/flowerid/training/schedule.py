"""The one learning-rate schedule every training loop uses."""

from __future__ import annotations

import math


def warmup_cosine(step: int, steps_per_epoch: int, epochs: int) -> float:
    """Factor of the peak rate at `step`: linear warm-up over the first epoch, then cosine decay to 0.

    The warm-up lasts at most half the run, so a one-epoch run still decays.
    """
    total = max(1, steps_per_epoch * epochs)
    warmup = max(1, min(steps_per_epoch, total // 2))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
