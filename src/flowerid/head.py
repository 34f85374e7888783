"""The head's shape, kept apart from torch so prediction can read it without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class HeadConfig:
    """The shape of a classifier head; stored in checkpoints to rebuild it."""

    in_features: int
    num_classes: int
    hidden_units: int = 0  # 0: a single linear layer
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadConfig:
        return cls(
            int(d["in_features"]), int(d["num_classes"]), int(d.get("hidden_units", 0)), float(d.get("dropout", 0.0))
        )
