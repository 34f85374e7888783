"""Data folders as people lay them out: split names, one folder per category, a held-out valid split."""

import shutil

import pytest

from flowerid.data.folders import load_dataset
from flowerid.data.layout import MIN_TO_SPLIT, find_layout, split_role
from flowerid.errors import DataError

from ..conftest import build_folder


@pytest.mark.parametrize(
    "name, role",
    [
        ("train", "train"), ("Training", "train"), ("training_set", "train"), ("TRAIN-data", "train"),
        ("val", "valid"), ("Valid", "valid"), ("validation", "valid"), ("dev", "valid"), ("val_images", "valid"),
        ("test", "test"), ("Testing", "test"), ("test_set", "test"),
        ("trains", None), ("eval", None), ("roses", None),
    ],
)  # fmt: skip
def test_split_names_people_use(name, role):
    assert split_role(name) == role


@pytest.mark.parametrize(
    "train, valid, test",
    [("train", "val", None), ("Train", "Validation", "Test"), ("training", "dev", "testing"), ("train", "valid", None)],
)
def test_given_splits_are_used_as_they_are(tmp_path, train, valid, test):
    build_folder(tmp_path, {train: 4, valid: 2, **({test: 2} if test else {})}, names=False)
    data = load_dataset(tmp_path)
    assert data.split is None and len(data.train.samples) == 12 and len(data.valid.samples) == 6
    assert data.layout.train.name == train and data.layout.valid.name == valid
    assert (data.test is not None) == (test is not None)


def test_cats_dogs_layout_holds_valid_out_of_training_set(tmp_path):
    """Keras' tutorial layout: training_set/ and test_set/, no validation folder."""
    CATS = {"cats": (200, 0, 0), "dogs": (0, 0, 200)}
    build_folder(tmp_path, {"training_set": 10, "test_set": 3}, classes=CATS, names=False)
    data = load_dataset(tmp_path)
    assert data.categories == ["cats", "dogs"]
    assert len(data.test.samples) == 6 and data.test.root.name == "test_set"
    assert data.split["per_category"] == {"cats": [8, 2], "dogs": [8, 2]}
    assert data.split["held_out_of"] == "training_set" and data.split["train"] == 16 and data.split["valid"] == 4
    assert not set(data.train.paths) & set(data.valid.paths)
    assert set(data.train.paths) | set(data.valid.paths) == {p for p in (tmp_path / "training_set").rglob("*.*")}


def test_flat_folder_is_split_stratified_and_the_same_every_run(tmp_path):
    classes = {"a": (200, 0, 0), "b": (0, 200, 0), "c": (0, 0, 200)}
    build_folder(tmp_path / "tmp", {"x": 1}, classes=classes, names=False)
    for cat, n in (("a", 20), ("b", 10), ("c", 5)):
        (tmp_path / "photos" / cat).mkdir(parents=True)
        for i in range(n):
            shutil.copy(tmp_path / "tmp" / "x" / cat / "img_000.jpg", tmp_path / "photos" / cat / f"{i}.jpg")
    data = load_dataset(tmp_path / "photos")
    assert data.layout.flat and data.test is None
    assert data.split["per_category"] == {"a": [16, 4], "b": [8, 2], "c": [4, 1]}  # 20% of each, at least one
    again = load_dataset(tmp_path / "photos")
    assert again.valid.paths == data.valid.paths and again.split["valid_digest"] == data.split["valid_digest"]
    other_seed = load_dataset(tmp_path / "photos", split_seed=1)
    assert other_seed.valid.paths != data.valid.paths and other_seed.split["valid_digest"] != data.split["valid_digest"]
    assert load_dataset(tmp_path / "photos", valid_fraction=0.5).split["per_category"]["a"] == [10, 10]
    # The same photos held out wherever the folder is: the choice digests paths inside it.
    shutil.copytree(tmp_path / "photos", tmp_path / "moved")
    moved = load_dataset(tmp_path / "moved")
    assert [p.relative_to(tmp_path / "moved") for p in moved.valid.paths] == [
        p.relative_to(tmp_path / "photos") for p in data.valid.paths
    ]


def test_adding_photos_keeps_most_of_the_held_out_ones(tmp_path):
    build_folder(tmp_path, {"photos": 40}, classes={"a": (200, 0, 0), "b": (0, 0, 200)}, names=False)
    before = set(load_dataset(tmp_path / "photos").valid.paths)
    for cat in ("a", "b"):
        for i in range(5):
            shutil.copy(tmp_path / "photos" / cat / "img_000.jpg", tmp_path / "photos" / cat / f"new_{i}.jpg")
    after = set(load_dataset(tmp_path / "photos").valid.paths)
    assert len(before & after) >= len(before) - 2  # a per-file ranking, not a reshuffle


def test_too_few_photos_to_split_are_refused_by_name(tmp_path):
    build_folder(tmp_path, {"photos": MIN_TO_SPLIT}, classes={"roses": (200, 0, 0)}, names=False)
    build_folder(tmp_path, {"photos": MIN_TO_SPLIT - 1}, classes={"tulips": (0, 0, 200)}, names=False)
    build_folder(tmp_path, {"photos": 1}, classes={"irises": (0, 200, 0)}, names=False)
    with pytest.raises(DataError, match=r"too few photos .* irises \(1\), tulips \(2\); each category needs") as e:
        load_dataset(tmp_path / "photos")
    assert "roses" not in str(e.value)


def test_layout_errors_name_what_was_found(tmp_path):
    build_folder(tmp_path / "a", {"val": 2, "test": 2}, names=False)
    with pytest.raises(DataError, match=r"test/ \(test\), val/ \(valid\) but no training folder"):
        find_layout(tmp_path / "a")
    build_folder(tmp_path / "b", {"train": 4, "eval": 2}, names=False)
    with pytest.raises(DataError, match=r"eval/, which is not a split name .*valid, val, validation, dev"):
        find_layout(tmp_path / "b")
    build_folder(tmp_path / "c", {"train": 4, "val": 2, "Valid": 2}, names=False)
    with pytest.raises(DataError, match="more than one folder for a split"):
        find_layout(tmp_path / "c")
    (tmp_path / "d").mkdir()
    shutil.copy(next((tmp_path / "a" / "val" / "1").iterdir()), tmp_path / "d" / "x.jpg")
    with pytest.raises(DataError, match="photos directly in it; expected one folder of photos per category"):
        find_layout(tmp_path / "d")
    # Photos straight in train/ and val/: split folders without category folders, not two categories.
    for split in ("train", "val"):
        (tmp_path / "e" / split).mkdir(parents=True)
        shutil.copy(tmp_path / "d" / "x.jpg", tmp_path / "e" / split / "x.jpg")
    with pytest.raises(DataError, match="hold photos directly"):
        find_layout(tmp_path / "e")


def test_a_category_called_train_is_a_category(tmp_path):
    build_folder(tmp_path, {"photos": 5}, classes={"train": (200, 0, 0), "bus": (0, 0, 200)}, names=False)
    data = load_dataset(tmp_path / "photos")
    assert data.layout.flat and data.categories == ["bus", "train"]


def test_an_archive_unpacked_into_its_own_folder(tmp_path):
    build_folder(tmp_path / "dogs-vs-cats" / "dogs-vs-cats", {"train": 4, "val": 2}, names=False)
    data = load_dataset(tmp_path / "dogs-vs-cats")
    assert data.root == tmp_path / "dogs-vs-cats" / "dogs-vs-cats" and data.split is None
