"""Several backbones as one network: their features side by side, optionally averaged with the mirror image."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data.preprocess import _RESAMPLE, Preprocessing


class Resize(nn.Module):
    """A batch of square crops resized to `size` px (bilinear): how a smaller member sees the ensemble's crop."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[-1] == self.size else F.interpolate(x, size=(self.size, self.size), mode="bilinear")


def resampling_matrix(size_in: int, size_out: int, start: float, end: float, interpolation: str) -> np.ndarray:
    """(size_out, size_in): Pillow's resampling of the span [start, end) of a row of `size_in` pixels to
    `size_out` pixels, as a matrix (each identity row resampled: the filter is linear and separable)."""
    eye = Image.fromarray(np.eye(size_in, dtype=np.float32))
    out = eye.resize((size_out, size_in), _RESAMPLE[interpolation], box=(start, 0, end, size_in))
    return np.asarray(out, dtype=np.float32).T.copy()


class OwnView(nn.Module):
    """The part of the ensemble's crop a member sees in its own preprocessing, resampled as it would be.

    A member cropped at 0.875 of a photo's shorter side (Lite0) sees the central 255.5 of the
    ensemble's 260 pixels (Lite2's 0.890); that span is resampled to 224 with the member's own
    filter (bicubic, antialiased as Pillow does it) by two fixed matrix products, which export
    to ONNX as they are. None of it is weights: the buffer stays out of the state dict.
    """

    def __init__(self, ensemble: Preprocessing, member: Preprocessing) -> None:
        super().__init__()
        span = member.crop_size * ensemble.resize_size / member.resize_size  # in the ensemble's pixels
        start = (ensemble.crop_size - span) / 2
        matrix = resampling_matrix(ensemble.crop_size, member.crop_size, start, start + span, member.interpolation)
        self.size = member.crop_size
        self.register_buffer("matrix", torch.from_numpy(matrix), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matrix @ x @ self.matrix.T


class Ensemble(nn.Module):
    """Each member fed its view of the photo (`views`: the crop resized to its input size, or the part it
    would crop itself, resampled as it would), its features scaled to `member_norm` (None: as they come),
    concatenated.

    With `flip_tta` the features are averaged with those of the mirrored photo, inside
    the network, so caches, exports and `predict` all see the same features.
    """

    def __init__(
        self,
        members: list[nn.Module],
        views: list[nn.Module],
        flip_tta: bool = False,
        member_norm: float | None = None,
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.views = nn.ModuleList(views)  # Resize, OwnView or Identity: no weights, so no state-dict entries
        self.flip_tta = flip_tta
        self.member_norm = member_norm

    def features(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for member, view in zip(self.members, self.views, strict=True):
            out = member(view(x))
            outs.append(out if self.member_norm is None else F.normalize(out, dim=1) * self.member_norm)
        return torch.cat(outs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_tta:
            return 0.5 * (self.features(x) + self.features(torch.flip(x, dims=[3])))
        return self.features(x)
