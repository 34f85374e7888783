"""The classifier head: its shape (torch-free, so prediction can read it) and `build_head` (imports torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass(frozen=True)
class HeadConfig:
    """The shape of a classifier head; stored in checkpoints to rebuild it."""

    in_features: int
    num_classes: int
    hidden_units: int = 0  # 0: a single linear layer
    dropout: float = 0.0

    def layers(self) -> list[tuple[str, int, int]]:
        """The head as (kind, in, out) steps; build_head and the checkpoint checker both follow it."""
        steps: list[tuple[str, int, int]] = []
        width = self.in_features
        if self.hidden_units > 0:
            if self.dropout > 0:
                steps.append(("dropout", width, width))
            steps += [("linear", width, self.hidden_units), ("relu", self.hidden_units, self.hidden_units)]
            width = self.hidden_units
        if self.dropout > 0:
            steps.append(("dropout", width, width))
        steps.append(("linear", width, self.num_classes))
        return steps

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """The parameter names and shapes of build_head(self).state_dict(), without torch."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (kind, n_in, n_out) in enumerate(self.layers()):
            if kind == "linear":
                shapes[f"{i}.weight"], shapes[f"{i}.bias"] = (n_out, n_in), (n_out,)
        return shapes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadConfig:
        return cls(
            int(d["in_features"]), int(d["num_classes"]), int(d.get("hidden_units", 0)), float(d.get("dropout", 0.0))
        )


def linear_layers(state: dict[str, Any]) -> list[str]:
    """The names of a head state's Linear layers in order ("0", or "1" and "4"): their weights are
    f"{name}.weight" and f"{name}.bias". Prediction (numpy) and calibration (the last one) read them so."""
    return sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".weight")}, key=int)


def build_head(cfg: HeadConfig) -> nn.Sequential:
    """Linear, or Linear-ReLU-Linear when hidden_units > 0 (dropout before each Linear)."""
    import torch.nn as nn

    make = {
        "dropout": lambda i, o: nn.Dropout(cfg.dropout),
        "linear": nn.Linear,
        "relu": lambda i, o: nn.ReLU(inplace=True),
    }
    return nn.Sequential(*(make[kind](n_in, n_out) for kind, n_in, n_out in cfg.layers()))
