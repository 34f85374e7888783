"""Why a photo was named so: the class activation map of a category, over the photo's cells.

Our heads are linear over globally averaged features, so a category's logit is exactly the mean over the
last feature map's cells of w_c . f[:, i, j], plus the bias (Zhou et al. 2016): the map is the logit split
by where it came from, not an approximation. An ensemble's members each give a map over their own part of
the crop at their own size; each is spread onto one common grid by area (every member cell's share of the
logit goes to the common cells it overlaps, in proportion), so the common grid's mean is still the sum of
the members' contributions. A head with a hidden layer is piecewise linear: its gradient at this photo
(Grad-CAM's weights, exact for a mean pooling) gives the same split, true only near this photo, and is
marked inexact.

Everything here is numpy on what the spatial graph gives (model/spatial.py), so explaining never needs torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UsageError

if TYPE_CHECKING:
    from ..backbones.spec import BackboneSpec

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in the photo's own pixels (after EXIF rotation)


@dataclass(frozen=True)
class Explanation:
    """One category's map of one photo: `grid` (H, W) is the category's logit contribution per cell, so
    `grid.mean() + bias == logit` (float error aside); `box` is the part of the photo the grid covers."""

    category: str
    grid: np.ndarray
    box: Box
    logit: float
    bias: float
    exact: bool
    name: str | None = None
    probability: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON fields: category, grid (rows of floats), box, logit, bias, exact."""
        return {
            "category": self.category,
            "grid": [[float(v) for v in row] for row in self.grid],
            "box": [round(float(v), 2) for v in self.box],
            "logit": float(self.logit),
            "bias": float(self.bias),
            "exact": self.exact,
        }

    def cell_boxes(self) -> np.ndarray:
        """(H, W, 4): each cell's x0, y0, x1, y1 in the photo's pixels (the box split evenly)."""
        h, w = self.grid.shape
        x0, y0, x1, y1 = self.box
        xs = np.linspace(x0, x1, w + 1)
        ys = np.linspace(y0, y1, h + 1)
        out = np.empty((h, w, 4))
        out[..., 0], out[..., 2] = xs[None, :-1], xs[None, 1:]
        out[..., 1], out[..., 3] = ys[:-1, None], ys[1:, None]
        return out


@dataclass(frozen=True)
class MapLayout:
    """How a network's maps make its features: each map's span of the crop (fractions, the same across and
    down), its feature columns, the ensemble's scaling of each member's features and its mirror averaging."""

    extents: tuple[tuple[float, float], ...]
    widths: tuple[int, ...]
    member_norm: float | None = None
    flip: bool = False

    @classmethod
    def of_spec(cls, spec: BackboneSpec) -> MapLayout:
        """One map over the whole crop, or one per ensemble member over the part its view shows it."""
        from ..backbones.spec import get_spec

        if spec.family != "ensemble":
            return cls(((0.0, 1.0),), (spec.num_features,))
        ens = spec.preprocessing
        extents, widths = [], []
        for name in spec.members:
            member = get_spec(name)
            mine = member.preprocessing
            if mine == ens or spec.member_view != "own":
                extents.append((0.0, 1.0))  # the whole crop, resized to the member's input
            else:  # ensemble.OwnView: the central span its own crop would cover
                span = mine.crop_size * ens.resize_size / mine.resize_size / ens.crop_size
                extents.append(((1.0 - span) / 2, (1.0 + span) / 2))
            widths.append(member.num_features)
        return cls(tuple(extents), tuple(widths), spec.member_norm, spec.flip_tta)

    def scales(self, maps: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(N,) per map: what the ensemble multiplies that member's pooled features by (1 when it does not)."""
        if self.member_norm is None:
            return [np.ones(len(m)) for m in maps]
        return [self.member_norm / np.maximum(np.linalg.norm(m.mean(axis=(2, 3)), axis=1), 1e-12) for m in maps]

    def pooled(self, maps: Sequence[np.ndarray], mirrored: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """(N, F): the features the maps stand for (means, scaled, mirror-averaged), to check against the graph."""

        def once(ms: Sequence[np.ndarray]) -> np.ndarray:
            return np.concatenate(
                [m.mean(axis=(2, 3), dtype=np.float64) * s[:, None] for m, s in zip(ms, self.scales(ms), strict=True)],
                axis=1,
            )

        feats = once(maps)
        return feats if mirrored is None else 0.5 * (feats + once(mirrored))

    def grid_size(self, maps: Sequence[np.ndarray]) -> tuple[int, int]:
        """The common grid: the finest of the maps."""
        return max(m.shape[2] for m in maps), max(m.shape[3] for m in maps)


def head_slope(layers: Sequence[tuple[np.ndarray, np.ndarray]], feats: np.ndarray, c: int) -> tuple[np.ndarray, float]:
    """(g, b) with logit_c = g . feats + b at this photo's features, exactly.

    A linear head: its row and bias, the same for every photo. A hidden ReLU layer: the gradient at
    `feats` (Grad-CAM's weights) and the offset of the linear piece the photo falls in.
    """
    (w1, b1), *rest = layers
    if not rest:
        return w1[:, c].astype(np.float64), float(b1[c])
    ((w2, b2),) = rest
    active = (feats @ w1 + b1) > 0
    out = w2[:, c].astype(np.float64) * active
    return w1.astype(np.float64) @ out, float(b1.astype(np.float64) @ out + b2[c])


def spread_matrix(n_in: int, n_out: int, start: float, end: float) -> np.ndarray:
    """(n_out, n_in): a row of n_in cells spanning [start, end) of [0, 1) onto n_out cells spanning all of it,
    each cell's value shared out by overlap so that the mean of the row is kept (start=0, end=1, n_in=n_out: I)."""
    edges_in = start + (end - start) * np.arange(n_in + 1) / n_in
    edges_out = np.arange(n_out + 1) / n_out
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    overlap = np.clip(hi - lo, 0.0, None)
    return overlap / ((end - start) / n_in) * (n_out / n_in)


def member_grid(fmap: np.ndarray, g: np.ndarray, scale: float) -> np.ndarray:
    """(h, w): one map's cells dotted with its columns of the slope; its mean is that member's share of the logit."""
    return scale * np.einsum("chw,c->hw", fmap.astype(np.float64, copy=False), g)


def common_grid(
    layout: MapLayout,
    maps: Sequence[np.ndarray],
    g: np.ndarray,
    row: int,
    mirrored: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """The photo `row`'s grid for slope `g`: every member's grid spread onto the finest one and summed
    (a mirrored photo's grid, flipped back, averaged in when the network averages with the mirror)."""
    size = layout.grid_size(maps)
    starts = np.cumsum((0, *layout.widths))
    total = np.zeros(size)
    views = [(maps, 1.0)] if mirrored is None else [(maps, 0.5), (mirrored, 0.5)]
    for k, (ms, weight) in enumerate(views):
        scales = layout.scales(ms)
        for m, fmap in enumerate(ms):
            grid = member_grid(fmap[row], g[starts[m] : starts[m + 1]], weight * scales[m][row])
            if k == 1:
                grid = grid[:, ::-1]
            lo, hi = layout.extents[m]
            rows = spread_matrix(grid.shape[0], size[0], lo, hi)
            cols = spread_matrix(grid.shape[1], size[1], lo, hi)
            total += rows @ grid @ cols.T
    return total


def check_maps(layout: MapLayout, maps: Sequence[np.ndarray], pooled: np.ndarray, mirrored: Sequence[np.ndarray] | None,
               backbone: str) -> None:  # fmt: skip
    """UsageError unless the maps' means are the features the head sees (VGG's fc7 features are not)."""
    scale = np.maximum(np.abs(pooled).max(axis=1, keepdims=True), 1e-6)
    if [m.shape[1] for m in maps] != list(layout.widths) or not np.allclose(
        layout.pooled(maps, mirrored) / scale, pooled / scale, atol=2e-3
    ):
        raise UsageError(
            f"{backbone}'s features are not the average of a feature map (as VGG's fully connected ones are not), "
            "so its answers cannot be split by place; explanations need an EfficientNet, ResNet, DenseNet or ConvNeXt"
        )


def explain_rows(
    layout: MapLayout,
    layers: Sequence[tuple[np.ndarray, np.ndarray]],
    maps: Sequence[np.ndarray],
    pooled: np.ndarray,
    wanted: Sequence[Sequence[int]],
    mirrored: Sequence[np.ndarray] | None = None,
) -> list[list[tuple[np.ndarray, float, float, bool]]]:
    """For each photo, (grid, logit, bias, exact) of each category index it wants; the logit is the head's on
    `pooled` (what `predict` computes), and the grid's mean plus the bias equals it."""
    exact = len(layers) == 1
    out = []
    feats64 = np.asarray(pooled, dtype=np.float64)
    for row, cats in enumerate(wanted):
        items = []
        for c in cats:
            g, bias = head_slope(layers, feats64[row], c)
            grid = common_grid(layout, maps, g, row, mirrored)
            items.append((grid, float(g @ feats64[row] + bias), bias, exact))
        out.append(items)
    return out
