"""Several backbones as one network: their features side by side, optionally averaged with the mirror image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Each member's features are scaled to this length so that none dominates the head by size alone
# (flowers valid split, linear head, best epoch: 97.80% top-1 for lite0+lite2 against 97.56% unscaled);
# 10 is about their usual length (12 to 15), so the head's learning rate carries over.
ENSEMBLE_MEMBER_NORM = 10.0


class Ensemble(nn.Module):
    """Each member fed the photo at its own input size, its features scaled to ENSEMBLE_MEMBER_NORM, concatenated.

    With `flip_tta` the features are averaged with those of the mirrored photo, inside
    the network, so caches, exports and `predict` all see the same features.
    """

    def __init__(self, members: list[nn.Module], sizes: list[int], flip_tta: bool = False) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.sizes = sizes
        self.flip_tta = flip_tta

    def features(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for member, size in zip(self.members, self.sizes, strict=True):
            xi = x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear")
            outs.append(F.normalize(member(xi), dim=1) * ENSEMBLE_MEMBER_NORM)
        return torch.cat(outs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_tta:
            return 0.5 * (self.features(x) + self.features(torch.flip(x, dims=[3])))
        return self.features(x)
