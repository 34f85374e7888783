"""A model is a frozen `features(x)` backbone plus a small trainable `head`."""

from __future__ import annotations

import torch
import torch.nn as nn

from .head import HeadConfig

__all__ = ["FlowerNet", "HeadConfig", "build_head"]


def build_head(cfg: HeadConfig) -> nn.Sequential:
    """Linear, or Linear-ReLU-Linear when hidden_units > 0 (dropout before each Linear)."""
    layers: list[nn.Module] = []
    width = cfg.in_features
    if cfg.hidden_units > 0:
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        layers += [nn.Linear(width, cfg.hidden_units), nn.ReLU(inplace=True)]
        width = cfg.hidden_units
    if cfg.dropout > 0:
        layers.append(nn.Dropout(cfg.dropout))
    layers.append(nn.Linear(width, cfg.num_classes))
    return nn.Sequential(*layers)


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
