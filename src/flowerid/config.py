"""Training settings, apart from torch so the CLI can show defaults without importing it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UsageError
from .registry import DEFAULT_BACKBONE


@dataclass
class TrainConfig:
    """Everything that decides a training run; stored in the checkpoint."""

    arch: str = DEFAULT_BACKBONE
    epochs: int = 20
    learning_rate: float = 3e-3
    hidden_units: int = 0
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    engine: str = "auto"
    weights: str | None = None
    category_names: str | None = None
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    dropout: float = 0.0
    num_workers: int | None = None
    use_cache: bool = True
    resume: bool = False  # continue head training from save_dir's train_state.pt

    def check(self) -> None:
        if self.epochs < 1:
            raise UsageError("--epochs must be at least 1")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise UsageError("--learning-rate must be a positive number")
        if self.hidden_units < 0:
            raise UsageError("--hidden-units must be 0 (a linear head) or more")
        if self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError("dropout must be in [0, 1)")
