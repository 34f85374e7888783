"""The torch network of a checkpoint: its backbone (with the tuned weights it was trained with, an ensemble's
members and their views) and its head, as one module. Exports, explanations, teaching new categories and
distillation all start from it.

    net = build_network(load_checkpoint(path))    # eval mode, on the CPU, gradients off
    logits = net(x)                               # x: (N, 3, crop, crop) float32, as net.preprocessing makes it
    feats = net.features(x)                       # (N, F): what the head sees
    maps, feats = net.feature_maps(x)             # the spatial feature map(s) before global pooling, and feats

`feature_maps` returns a list: one (N, C, H, W) map for one network; for an ensemble one map per member,
in `spec.members` order, each at its own size (efficientnet_lite012: 7x7, 8x8, 9x9), never resized.
`feats` is then exactly `net.features(x)`: the members' pooled features side by side (the head's columns
follow the same order, `net.member_slices()` says which), scaled and mirror-averaged as the ensemble does
(the maps are of the photo as given). Importing this module imports torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .._text import first_line
from ..backbones import BackboneSpec, get_spec
from ..backbones.anatomy import feature_maps
from ..backbones.build import build_backbone
from ..data.preprocess import Preprocessing
from ..errors import CheckpointError
from .checkpoint import backbone_spec, check_weights
from .head import HeadConfig, build_head


class Network(nn.Module):
    """A checkpoint's backbone and head: photo batch -> logits (`forward`), pooled features or feature maps."""

    def __init__(self, spec: BackboneSpec, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.head = head

    @property
    def preprocessing(self) -> Preprocessing:
        """How a photo becomes the (3, crop, crop) input: the spec's, which the checkpoint records."""
        return self.spec.preprocessing

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F): the backbone's pooled features, what the head sees (and the unknown-photo score)."""
        return self.backbone(x)

    def feature_maps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(maps, features): the spatial map(s) before global pooling (one per ensemble member) and `features(x)`."""
        return feature_maps(self.spec, self.backbone, x)

    def member_slices(self) -> list[slice]:
        """Which feature columns (and head input columns) each map's pooled features fill, in map order."""
        widths = [get_spec(m).num_features for m in self.spec.members] or [self.spec.num_features]
        starts = [sum(widths[:i]) for i in range(len(widths))]
        return [slice(s, s + w) for s, w in zip(starts, widths, strict=True)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) logits; softmax gives the probabilities `predict` reports (before any flip averaging)."""
        return self.head(self.backbone(x))


def build_head_of(checkpoint: dict[str, Any]) -> nn.Module:
    """The checkpoint's trained head as a torch module in eval mode."""
    head_info = checkpoint["head"]
    head = build_head(HeadConfig.from_dict(head_info["config"]))
    # A checkpoint read before torch was imported holds numpy arrays (model/_torchfile.py): tensors for torch.
    state = {
        k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v))
        for k, v in head_info["state_dict"].items()
    }
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"the head weights do not fit the recorded head: {first_line(exc)}") from None
    return head.eval()


def build_network(checkpoint: dict[str, Any]) -> Network:
    """The checkpoint's network in eval mode with gradients off, its backbone checked by weights digest.

    `checkpoint` as `model.checkpoint.load_checkpoint` returns it (a tuned backbone's weights path
    resolved beside the checkpoint). CheckpointError when the backbone found here is not the one it
    was trained on, or the head does not fit.
    """
    spec = backbone_spec(checkpoint)
    backbone, digest = build_backbone(spec, checkpoint["backbone"].get("weights_path"))
    check_weights(checkpoint, digest)
    net = Network(spec, backbone, build_head_of(checkpoint)).eval()
    net.requires_grad_(False)
    return net
