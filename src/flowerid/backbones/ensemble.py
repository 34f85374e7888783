"""Several backbones as one network: their features side by side, optionally averaged with the mirror image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Resize(nn.Module):
    """A batch of square crops resized to `size` px (bilinear): how a smaller member sees the ensemble's crop."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[-1] == self.size else F.interpolate(x, size=(self.size, self.size), mode="bilinear")


class Ensemble(nn.Module):
    """Each member fed the photo at its own input size, its features scaled to `member_norm` (None: as they
    come), concatenated.

    With `flip_tta` the features are averaged with those of the mirrored photo, inside
    the network, so caches, exports and `predict` all see the same features.
    """

    def __init__(
        self, members: list[nn.Module], sizes: list[int], flip_tta: bool = False, member_norm: float | None = None
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.resizes = [Resize(size) for size in sizes]  # no weights: kept out of the state dict
        self.sizes = sizes
        self.flip_tta = flip_tta
        self.member_norm = member_norm

    def features(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for member, resize in zip(self.members, self.resizes, strict=True):
            out = member(resize(x))
            outs.append(out if self.member_norm is None else F.normalize(out, dim=1) * self.member_norm)
        return torch.cat(outs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_tta:
            return 0.5 * (self.features(x) + self.features(torch.flip(x, dims=[3])))
        return self.features(x)
