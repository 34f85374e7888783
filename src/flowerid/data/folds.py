"""Stratified folds: which fold each photo falls in, for cross-validation and out-of-fold predictions."""

from __future__ import annotations

import numpy as np

FOLDS = 5
SEED = 0


def stratified_folds(labels: np.ndarray, k: int = FOLDS, seed: int = SEED) -> np.ndarray:
    """A fold number 0..k-1 for every photo; each category is dealt round the folds in a seeded order.

    Each category continues the deal where the last one stopped, so folds differ in size by at most one.
    """
    labels = np.asarray(labels)
    if k < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    dealt = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        fold[idx] = (dealt + np.arange(len(idx))) % k
        dealt += len(idx)
    return fold


def fold_indices(labels: np.ndarray, k: int = FOLDS, seed: int = SEED) -> list[np.ndarray]:
    """The rows each fold holds out (`stratified_folds`' numbers as k index arrays)."""
    fold = stratified_folds(labels, k, seed)
    return [np.flatnonzero(fold == f) for f in range(k)]
