"""check --deep's algorithms on synthetic features: wrong labels, near-duplicates, outliers, folds, exclude lists."""

from __future__ import annotations

import numpy as np
import pytest

from flowerid.data import deep_check as dc
from flowerid.data.folders import exclude_photos, load_dataset
from flowerid.data.folds import fold_indices
from flowerid.errors import DataError


def clusters(n_per: int = 40, n_classes: int = 4, dim: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated Gaussian clusters: a head learns them perfectly."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per)
    return (centres[y] + rng.normal(0, 1, size=(len(y), dim))).astype(np.float32), y


# ------------------------------------------------------------------ the pieces


def test_folds_cover_every_row_once_and_spread_each_class():
    y = np.array([0] * 10 + [1] * 7 + [2] * 2)
    folds = fold_indices(y, 5, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(y)))
    for f in folds:
        assert (y[f] == 0).sum() == 2  # 10 photos over 5 folds
        assert 1 <= (y[f] == 1).sum() <= 2
    assert fold_indices(y, 5, seed=3)[0].tolist() == folds[0].tolist()  # seeded


def test_out_of_fold_probabilities_come_from_heads_that_never_saw_the_row():
    x, y = clusters()
    p = dc.out_of_fold_probabilities(x, y, 4, folds=5, seed=1)
    assert p.shape == (len(y), 4) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert (p.argmax(1) == y).mean() > 0.97
    held = fold_indices(y, 5, seed=1)[2]
    rest = np.setdiff1d(np.arange(len(y)), held)
    assert np.allclose(p[held], dc.fit_linear(x[rest], y[rest], 4)(x[held]), atol=1e-6)
    noisy = y.copy()
    noisy[held[0]] = (y[held[0]] + 1) % 4  # a wrong label: a head that saw it would have learnt it
    assert dc.out_of_fold_probabilities(x, noisy, 4)[held[0]].argmax() == y[held[0]]


def test_label_issues_finds_flipped_labels_and_suggests_the_true_class():
    x, y = clusters(n_per=50)
    noisy = y.copy()
    planted = [3, 60, 110, 170]
    for i in planted:
        noisy[i] = (y[i] + 1) % 4
    p = dc.out_of_fold_probabilities(x, noisy, 4)
    found, scores = dc.label_issues(noisy, p)
    assert set(planted) <= set(found.tolist())
    assert len(found) <= len(planted) + 2
    assert (p[planted].argmax(1) == y[planted]).all()
    assert list(scores[found]) == sorted(scores[found], reverse=True)  # most suspect first


def test_principal_components_whiten_and_keep_rows():
    x, _ = clusters(n_per=30, dim=40)
    z = dc.principal_components(x, 8)
    assert z.shape == (len(x), 8) and np.allclose(z.std(0, ddof=1), 1, atol=1e-3)
    assert np.allclose(dc.principal_components(x, 8), z)  # seeded


def test_near_duplicates_need_both_features_and_pixels():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(30, 8)).astype(np.float32)
    thumbs = rng.integers(0, 255, size=(30, 2, dc.THUMB, dc.THUMB), dtype=np.uint8)
    thumbs[7] = thumbs[3]  # same pixels...
    feats[7] = feats[3] + 0.01  # ...and features: a copy
    thumbs[20] = thumbs[3]  # same pixels but features far away: never a candidate
    feats[20] = -feats[3]
    found = dc.near_duplicates(feats, thumbs, k=2)
    assert [(i, j) for i, j, _ in found] == [(3, 7)] and found[0][2] > 0.999


def test_outlier_scores_single_out_the_photo_far_from_all():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    x = np.abs(rng.normal(0, 1, size=(len(y), 24))).astype(np.float32)  # non-negative, as pooled features are
    for c in range(4):
        x[y == c, 5 * c : 5 * c + 5] += 5  # each category lights up its own five features
    stray = np.zeros((1, 24), dtype=np.float32)
    stray[0, 20:] = 5  # lights up what no category does
    s = dc.outlier_scores(np.vstack([x, stray]))
    assert s.argmax() == len(x) and s[-1] >= dc.OUTLIER_Z
    assert (s >= dc.OUTLIER_Z).sum() == 1


def test_exclude_photos_drops_listed_ones_and_names_unknown_ones(image_folder):
    data = load_dataset(image_folder)
    listed = ["train/1/img_000.jpg", str(image_folder / "valid/2/img_001.jpg"), "train/1/no_such.jpg"]
    kept, left_out, unknown = exclude_photos(data, listed)
    assert left_out == 2 and unknown == ["train/1/no_such.jpg"]
    assert len(kept.train.samples) == len(data.train.samples) - 1
    assert len(kept.valid.samples) == len(data.valid.samples) - 1
    assert not any(p.name == "img_000.jpg" and p.parent.name == "1" for p in kept.train.paths)
    with pytest.raises(DataError, match="no train/ photo in categories: 10"):
        exclude_photos(data, [str(p.relative_to(image_folder)) for p in data.train.paths if p.parent.name == "10"])


@pytest.mark.parametrize("layout", ["split", "flat"])
def test_exclude_photos_matches_every_form_of_path_when_the_data_folder_is_relative(tmp_path, monkeypatch, layout):
    from ..conftest import build_folder

    root = build_folder(tmp_path / "base", {"train": 4} if layout == "flat" else {"train": 4, "valid": 2})
    if layout == "flat":
        for d in (root / "train").iterdir():
            d.rename(root / d.name)
        (root / "train").rmdir()
    monkeypatch.chdir(tmp_path)
    data = load_dataset("base")  # relative, as `flowerid train base` gives it
    inside = "" if layout == "flat" else "train/"
    listed = [
        f"{inside}1/img_000.jpg",  # relative to DATA_DIR (the docs, check --deep's issues.csv)
        f"base/{inside}10/img_000.jpg",  # relative to the working folder
        str(tmp_path / f"base/{inside}2/img_000.jpg"),  # absolute
        f"./{inside}2/img_001.jpg",
    ]
    kept, left_out, unknown = exclude_photos(data, listed)
    assert (left_out, unknown) == (4, [])
    assert len(kept.train.samples) + len(kept.valid.samples) == len(data.train.samples) + len(data.valid.samples) - 4
