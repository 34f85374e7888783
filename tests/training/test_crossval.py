"""Stratified folds and what a cross-validation reports."""

from __future__ import annotations

import numpy as np
import pytest

from flowerid.training.crossval import CVResult, combine, stratified_folds


def test_folds_are_stratified_balanced_and_repeatable() -> None:
    y = np.repeat(np.arange(7), [40, 23, 5, 9, 61, 12, 3])
    f = stratified_folds(y, 5, seed=0)
    assert np.array_equal(f, stratified_folds(y, 5, seed=0))
    assert not np.array_equal(f, stratified_folds(y, 5, seed=1))
    sizes = np.bincount(f, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for c in range(7):
        per = np.bincount(f[y == c], minlength=5)
        assert per.max() - per.min() <= 1  # each category spread over the folds


def test_one_fold_is_refused() -> None:
    with pytest.raises(ValueError):
        stratified_folds(np.zeros(10), 1)


def test_report_counts_hits_per_fold() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    folds = np.array([0, 0, 0, 1, 1, 1])
    logits = np.eye(3)[[0, 1, 1, 0, 1, 2]] * 5.0  # fold 0 misses one photo of three
    r = CVResult(logits, y, folds)
    assert r.top1 == pytest.approx([2 / 3, 1.0])
    assert r.top5 == pytest.approx([1.0, 1.0])
    assert "top-1 83.33%" in r.summary()


def test_combine_averages_log_probabilities_of_the_same_folds() -> None:
    y = np.array([0, 1])
    folds = np.array([0, 1])
    a = CVResult(np.array([[2.0, 0.0], [2.0, 0.0]]), y, folds)
    b = CVResult(np.array([[0.0, 0.0], [0.0, 6.0]]), y, folds)
    assert combine(a, b).logits.argmax(1).tolist() == [0, 1]
    with pytest.raises(ValueError):
        combine(a, CVResult(a.logits, y, np.array([1, 0])))


def test_cross_validate_trains_each_fold_as_train_does(image_folder):
    """Frozen tiny backbone, 2 folds over train+valid pooled: every photo predicted by the model that never saw it."""
    from flowerid.training.config import TrainConfig
    from flowerid.training.crossval import cross_validate

    from ..conftest import TINY

    lines: list[str] = []
    cfg = TrainConfig(arch=TINY, epochs=20, learning_rate=0.05, num_workers=0)
    r = cross_validate(image_folder, cfg, k=2, log=lines.append)
    assert r.logits.shape == (3 * (8 + 4), 3) and sorted(np.bincount(r.folds)) == [18, 18]
    assert np.bincount(r.labels).tolist() == [12, 12, 12]
    assert len(r.top1) == 2 and r.top1.mean() > 0.9  # the tiny colours are easy
    assert len(lines) == 2 and lines[0].startswith("fold 1/2")
    one = cross_validate(image_folder, cfg, k=2, only=[1], log=lambda s: None)
    assert len(one.labels) == 18 and np.array_equal(one.logits, r.logits[r.folds == 1])


def test_one_fold_has_no_out_of_fold_calibration_error() -> None:
    """A single fold leaves no other folds to fit its temperature on: the ECE is not measured, not made up."""
    r = CVResult(np.eye(3)[[0, 1, 2]] * 4.0, np.array([0, 1, 1]), np.zeros(3, dtype=int))
    assert np.isnan(r.ece())
    two = CVResult(np.eye(3)[[0, 1, 2, 0]] * 4.0, np.array([0, 1, 1, 0]), np.array([0, 0, 1, 1]))
    assert 0.0 <= two.ece() <= 1.0
