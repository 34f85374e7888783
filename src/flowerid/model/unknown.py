"""Telling "not one of my categories" apart: a score of how unlike the training photos a photo is.

Two signals, each strong where the other is weak (measured in benchmarks/bench_unknown.py):

* near: the generalized entropy (GEN, Liu et al., 2023) of the head's top probabilities.
  A flower of a species the model never saw spreads its probability over a few look-alikes.
* far: the cosine distance from the photo's features to the nearest class mean (the shared,
  identity-covariance special case of Lee et al., 2018, on unit-length features). A cat, a
  face or a screenshot lies far from every flower whatever the head says about it.

Both are standardised on the valid photos; far only counts beyond its valid range (a hinge at
its 99th percentile), so it flags what is far out without adding noise to near's ranking.
The threshold accepts `accept_rate` of the valid photos, so any user's categories get one
with no "other" photos at all. Photos of other things (`negatives`) sharpen far where a user
has them: being closer to one of them than to every class adds to it.

Everything here is numpy on the head's input features and its logits, so `predict` stays
torch-free; the export builds the same arithmetic into its graph. Fitting is in
training/unknown.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._numeric import softmax, unit_rows
from ..errors import CheckpointError
from .head import HeadConfig

METHOD = "gen+cosine"
GEN_GAMMA = 0.1  # Liu et al.'s gamma and top-M; a sweep over 0.02-0.5 and 3-92 changed AUROC by < 0.002
GEN_TOP = 10
KNEE_QUANTILE = 0.99  # far counts only beyond this quantile of its valid values
DEFAULT_ACCEPT_RATE = 0.95


def gen_score(logits: np.ndarray, gamma: float = GEN_GAMMA, top: int = GEN_TOP) -> np.ndarray:
    """Generalized entropy of the top probabilities: sum p^g (1-p)^g; high when no class stands out."""
    p = softmax(logits)
    m = min(top, p.shape[1])
    q = -np.partition(-p, m - 1, axis=1)[:, :m] if m < p.shape[1] else p
    return (q**gamma * (1.0 - q) ** gamma).sum(axis=1)


def nearest_cosine(features: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Cosine similarity of each feature row to its nearest prototype (rows already unit length)."""
    return (unit_rows(features) @ np.asarray(prototypes, dtype=np.float64).T).max(axis=1)


@dataclass(frozen=True)
class UnknownDetector:
    """The fitted statistics; `score(features, logits)` is higher for photos less like the training ones."""

    means: np.ndarray = field(repr=False)  # (C, D) unit-length class means of the training features
    negatives: np.ndarray = field(repr=False)  # (K, D) unit-length prototypes of negative photos; K may be 0
    near_mean: float
    near_std: float
    far_mean: float
    far_std: float
    knee: float  # standardised far below this adds nothing
    threshold: float  # known when score <= threshold
    accept_rate: float
    method: str = METHOD
    # (C,) subtracted from the score of a photo whose top category is c: an added category's own
    # humility (a head fitted from a few photos spreads its probability more), set by model/add.py
    offsets: np.ndarray | None = field(default=None, repr=False)

    def near(self, logits: np.ndarray) -> np.ndarray:
        return gen_score(logits)

    def near_z(self, logits: np.ndarray) -> np.ndarray:
        """near standardised on the valid photos, as the score adds it."""
        return (self.near(logits) - self.near_mean) / self.near_std

    def far(self, features: np.ndarray) -> np.ndarray:
        known = nearest_cosine(features, self.means)
        far = 1.0 - known
        if len(self.negatives):
            far = far + np.maximum(nearest_cosine(features, self.negatives) - known, 0.0)
        return far

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """(N,) float64: standardised near, plus standardised far beyond its knee."""
        z_near = self.near_z(logits)
        z_far = (self.far(features) - self.far_mean) / self.far_std
        score = z_near + np.maximum(z_far - self.knee, 0.0)
        if self.offsets is not None:
            score = score - self.offsets[np.asarray(logits).argmax(axis=1)]
        return score

    def known(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) <= self.threshold

    def with_threshold(self, threshold: float, accept_rate: float) -> UnknownDetector:
        from dataclasses import replace

        return replace(self, threshold=float(threshold), accept_rate=float(accept_rate))

    def to_state(self) -> dict[str, Any]:
        """Plain data for a checkpoint: the arrays float32, the rest numbers and text."""
        return {
            "method": self.method,
            "means": np.ascontiguousarray(self.means, dtype=np.float32),
            "negatives": np.ascontiguousarray(self.negatives, dtype=np.float32),
            **{k: float(getattr(self, k)) for k in _SCALARS},
            **({} if self.offsets is None else {"offsets": np.ascontiguousarray(self.offsets, dtype=np.float32)}),
        }

    @classmethod
    def of_checkpoint(cls, checkpoint: dict[str, Any]) -> UnknownDetector | None:
        """The checkpoint's detector, or None for one trained before flowerid could tell photos of other things."""
        state = checkpoint.get("unknown")
        if state is None:
            return None
        cfg = HeadConfig.from_dict(checkpoint["head"]["config"])
        return cls.from_state(state, cfg.num_classes, cfg.in_features)

    @classmethod
    def from_state(cls, state: Any, num_classes: int, num_features: int, where: str = "checkpoint") -> UnknownDetector:
        """Rebuild from `to_state` output (arrays may be torch tensors); CheckpointError when it does not fit."""
        bad = CheckpointError(f"{where} has a damaged unknown-photo detector; retrain, or load an older copy")
        if not isinstance(state, dict) or state.get("method") != METHOD:
            method = state.get("method") if isinstance(state, dict) else None
            if isinstance(method, str):
                raise CheckpointError(
                    f"{where}: unknown-photo method {method!r} is not one this flowerid knows ({METHOD})"
                )
            raise bad
        try:
            means = np.asarray(state["means"], dtype=np.float32)
            negatives = np.asarray(state["negatives"], dtype=np.float32)
            scalars = {k: float(state[k]) for k in _SCALARS}
            offsets = None if state.get("offsets") is None else np.asarray(state["offsets"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise bad from None
        if offsets is not None and (offsets.shape != (num_classes,) or not np.isfinite(offsets).all()):
            raise bad
        if (
            means.shape != (num_classes, num_features)
            or negatives.ndim != 2
            or (len(negatives) and negatives.shape[1] != num_features)
            or not all(math.isfinite(v) for v in scalars.values())
            or scalars["near_std"] <= 0
            or scalars["far_std"] <= 0
            or not np.isfinite(means).all()
        ):
            raise bad
        return cls(means, negatives.reshape(-1, num_features), **scalars, offsets=offsets)

    def describe(self) -> str:
        extra = f", {len(self.negatives)} negative prototypes" if len(self.negatives) else ""
        return f"{self.method} (threshold {self.threshold:.4g}, accepts {self.accept_rate:.0%} of valid{extra})"


_SCALARS = ("near_mean", "near_std", "far_mean", "far_std", "knee", "threshold", "accept_rate")
