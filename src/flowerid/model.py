"""A model is a frozen `features(x)` backbone plus a small trainable `head`."""

from __future__ import annotations

import torch
import torch.nn as nn

from .head import HeadConfig

__all__ = ["FlowerNet", "HeadConfig", "build_head"]


def build_head(cfg: HeadConfig) -> nn.Sequential:
    """Linear, or Linear-ReLU-Linear when hidden_units > 0 (dropout before each Linear)."""
    make = {
        "dropout": lambda i, o: nn.Dropout(cfg.dropout),
        "linear": nn.Linear,
        "relu": lambda i, o: nn.ReLU(inplace=True),
    }
    return nn.Sequential(*(make[kind](n_in, n_out) for kind, n_in, n_out in cfg.layers()))


class FlowerNet(nn.Module):
    """Backbone features followed by the head; forward returns logits."""

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = features
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
