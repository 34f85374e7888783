"""Per-category feature statistics kept in a checkpoint, so categories can be added later without the photos.

What `flowerid add` needs to fit a new category's row of the head beside the old ones, without
the old training photos: where each category's photos lie in the last layer's input space (its
mean and how many photos made it) and how photos of one category spread around their mean (one
covariance shared by all categories, as in linear discriminant analysis). The covariance is kept
as its top `RANK` eigenvectors plus one variance for the remaining directions: 1.3 MB instead of
6.5 MB for 1280 features, and a few photos could never estimate the small directions anyway.

`unit_norms` is the length of each category's mean of unit-length features: the unknown-photo
detector's class means (model/unknown.py) are those means made unit length, so with it and the
count a correction can update them exactly as if the photos had been there at training time.

Stored under the checkpoint's optional "class_stats" key (no format change: an older checkpoint
loads as before; `flowerid add` then says to retrain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._numeric import unit_rows
from ..errors import CheckpointError

RANK = 256  # covariance directions kept; the rest share one variance
KIND = "gaussian-shared-lowrank"


@dataclass(frozen=True)
class ClassStats:
    """Means and counts per category, and the shared within-category covariance in low-rank form."""

    means: np.ndarray = field(repr=False)  # (C, D) float64: mean of the last linear layer's inputs
    counts: np.ndarray = field(repr=False)  # (C,) int64: photos behind each mean
    unit_norms: np.ndarray = field(repr=False)  # (C,) length of the mean of unit-length head inputs
    basis: np.ndarray = field(repr=False)  # (R, D) orthonormal top eigenvectors of the covariance
    eigvals: np.ndarray = field(repr=False)  # (R,) their variances
    residual: float  # variance in every direction outside the basis

    @classmethod
    def fit(cls, z: np.ndarray, labels: np.ndarray, num_classes: int, raw: np.ndarray, rank: int = RANK) -> ClassStats:
        """From the training photos' last-layer inputs `z` and head inputs `raw` (the same rows for a linear head)."""
        z = np.asarray(z, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(labels, minlength=num_classes)
        sums = np.zeros((num_classes, z.shape[1]))
        np.add.at(sums, labels, z)
        means = sums / np.maximum(counts, 1)[:, None]
        centred = z - means[labels]
        dof = max(1, len(z) - int((counts > 0).sum()))
        cov = centred.T @ centred / dof
        vals, vecs = np.linalg.eigh(cov)
        order = np.argsort(vals)[::-1]
        vals, vecs = np.maximum(vals[order], 0.0), vecs[:, order]
        r = min(rank, z.shape[1])
        rest = vals[r:]
        residual = float(rest.mean()) if len(rest) else 0.0
        unit_sums = np.zeros((num_classes, raw.shape[1]))
        np.add.at(unit_sums, labels, unit_rows(raw))
        unit_norms = np.linalg.norm(unit_sums / np.maximum(counts, 1)[:, None], axis=1)
        return cls(means, counts.astype(np.int64), unit_norms, vecs[:, :r].T.copy(), vals[:r].copy(), residual)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def with_photos(
        self, index: int, z: np.ndarray, raw: np.ndarray, unit_mean: np.ndarray | None
    ) -> tuple[ClassStats, np.ndarray]:
        """These statistics with photos added to category `index` (one past the end: a new category),
        and that category's unit-length mean of unit-length head inputs as the unknown-photo detector keeps it.

        `z`: the photos' last-layer inputs; `raw`: their head inputs; `unit_mean`: the detector's
        current mean for the category (None for a new one).
        """
        means, counts, norms = self.means, self.counts, self.unit_norms
        if index == len(counts):
            means = np.vstack([means, np.zeros((1, self.dim))])
            counts, norms = np.append(counts, 0), np.append(norms, 0.0)
        means, counts, norms = means.copy(), counts.copy(), norms.copy()
        n, k = int(counts[index]), len(z)
        means[index] = (n * means[index] + np.asarray(z, dtype=np.float64).sum(axis=0)) / (n + k)
        counts[index] = n + k
        unit_sum = unit_rows(raw).sum(axis=0)
        if unit_mean is not None and n:
            unit_sum = unit_sum + n * norms[index] * np.asarray(unit_mean, dtype=np.float64)
        length = float(np.linalg.norm(unit_sum))
        norms[index] = length / (n + k)
        stats = ClassStats(means, counts, norms, self.basis, self.eigvals, self.residual)
        return stats, unit_sum / max(length, 1e-12)

    def sample(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One draw of each `labels` entry's Gaussian: its mean, the shared covariance times 1 + 1/count
        (the spread of a new photo around a mean estimated from count photos). All categories at once:
        per-category calls made `flowerid add` spend seconds in small matrix products."""
        labels = np.asarray(labels, dtype=np.int64)
        spread = np.sqrt(1.0 + 1.0 / np.maximum(self.counts[labels], 1))[:, None]
        return self.means[labels] + spread * self.noise(len(labels), rng)

    def sample_logits(
        self, labels: np.ndarray, weight: np.ndarray, bias: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """`sample(labels) @ weight.T + bias`, drawn in the (C,) logit space directly: the isotropic rest
        reaches the logits only through the rows' parts outside the kept directions, a C x C covariance,
        so no (N, D) draw is made (D = 1280 made these draws most of `flowerid add`'s own time)."""
        labels = np.asarray(labels, dtype=np.int64)
        spread = np.sqrt(1.0 + 1.0 / np.maximum(self.counts[labels], 1))[:, None]
        w_kept = self.basis @ weight.T  # (R, C)
        w_rest = weight - w_kept.T @ self.basis  # the rows outside the kept directions
        cov = self.residual * (w_rest @ w_rest.T) + 1e-12 * np.eye(len(weight))
        kept = (rng.standard_normal((len(labels), len(self.eigvals))) * np.sqrt(self.eigvals)) @ w_kept
        rest = rng.standard_normal((len(labels), len(weight))) @ np.linalg.cholesky(cov).T
        return self.means[labels] @ weight.T + bias + spread * (kept + rest)

    def noise(self, n: int, rng: np.random.Generator, q: np.ndarray | None = None) -> np.ndarray:
        """n draws of the shared covariance, in the coordinates of orthonormal rows `q` (the full space
        when None). `q` must span the kept directions: outside them there is only isotropic variance."""
        basis = self.basis if q is None else self.basis @ q.T
        kept = (rng.standard_normal((n, len(self.eigvals))) * np.sqrt(self.eigvals)) @ basis
        rest = rng.standard_normal((n, basis.shape[1]))
        rest -= (rest @ basis.T) @ basis
        return kept + np.sqrt(self.residual) * rest

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "means": np.ascontiguousarray(self.means, dtype=np.float32),
            "counts": np.ascontiguousarray(self.counts, dtype=np.int64),
            "unit_norms": np.ascontiguousarray(self.unit_norms, dtype=np.float32),
            "basis": np.ascontiguousarray(self.basis, dtype=np.float32),
            "eigvals": np.ascontiguousarray(self.eigvals, dtype=np.float32),
            "residual": float(self.residual),
        }

    @classmethod
    def from_state(cls, state: Any, num_classes: int, dim: int, where: str = "checkpoint") -> ClassStats:
        """Rebuild from `to_state` output (arrays may be torch tensors); CheckpointError when it does not fit."""
        bad = CheckpointError(f"{where} has damaged class statistics; retrain it, or load an older copy")
        if not isinstance(state, dict) or state.get("kind") != KIND:
            raise bad
        try:
            arrays = {k: np.asarray(state[k], dtype=np.float64) for k in ("means", "unit_norms", "basis", "eigvals")}
            counts = np.asarray(state["counts"], dtype=np.int64)
            residual = float(state["residual"])
        except (KeyError, TypeError, ValueError):
            raise bad from None
        r = len(arrays["eigvals"])
        if (
            arrays["means"].shape != (num_classes, dim)
            or counts.shape != (num_classes,)
            or arrays["unit_norms"].shape != (num_classes,)
            or arrays["basis"].shape != (r, dim)
            or not all(np.isfinite(a).all() for a in arrays.values())
            or not (math.isfinite(residual) and residual >= 0)
            or (counts < 0).any()
            or (arrays["eigvals"] < 0).any()
        ):
            raise bad
        return cls(arrays["means"], counts, arrays["unit_norms"], arrays["basis"], arrays["eigvals"], residual)


def last_layer_inputs(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """What the head's last linear layer sees: the features themselves for a linear head (NumpyHead.layers)."""
    for w, b in layers[:-1]:
        x = np.maximum(x @ w + b, 0.0)
    return np.asarray(x, dtype=np.float64)
