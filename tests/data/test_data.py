import json
import os

import pytest

from flowerid.data import folders
from flowerid.data.folders import (
    find_categories,
    load_category_names,
    load_dataset,
    names_for,
    read_exclude_list,
    scan_folder,
)
from flowerid.errors import DataError, UsageError

from ..conftest import build_folder


def test_categories_sort_as_imagefolder_does(image_folder):
    assert find_categories(image_folder / "train") == ["1", "10", "2"]
    data = load_dataset(image_folder)
    assert data.categories == ["1", "10", "2"]
    assert sorted(set(data.train.targets)) == [0, 1, 2]
    assert all(p.parent.name == data.categories[t] for p, t in data.train.samples)


def test_valid_maps_onto_train_order_even_with_fewer_categories(tmp_path):
    root = build_folder(tmp_path, {"train": 2})
    build_folder(tmp_path, {"valid": 1}, classes={"2": (1, 2, 3)}, names=False)
    data = load_dataset(root)
    assert data.valid.targets == [2]


def test_valid_category_missing_from_train(tmp_path):
    build_folder(tmp_path, {"train": 2, "valid": 1})
    (tmp_path / "valid" / "99").mkdir()
    build_folder(tmp_path, {"valid": 1}, classes={"99": (1, 2, 3)}, names=False)
    with pytest.raises(DataError, match="99"):
        load_dataset(tmp_path)


def test_empty_category_and_missing_split(tmp_path):
    build_folder(tmp_path, {"train": 2})
    with pytest.raises(DataError, match="too few photos to hold out a valid split in: 1 \\(2\\), 10 \\(2\\)"):
        load_dataset(tmp_path)  # no valid/: it would be held out of train, but 2 photos a category are too few
    (tmp_path / "train" / "7").mkdir()
    with pytest.raises(DataError, match="no images: 7"):
        scan_folder(tmp_path / "train")


def test_non_images_and_hidden_files_are_ignored(tmp_path):
    build_folder(tmp_path, {"train": 2})
    (tmp_path / "train" / "1" / ".DS_Store").write_bytes(b"\0\1")
    (tmp_path / "train" / "1" / "notes.txt").write_text("hi")
    assert len(scan_folder(tmp_path / "train").samples) == 6


def test_category_names(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"1": "rose", "2": "tulip"}))
    assert names_for(["1", "2", "3"], load_category_names(p)) == ["rose", "tulip", None]
    p.write_text("[1, 2]")
    with pytest.raises(DataError):
        load_category_names(p)
    p.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_category_names(p)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_names_or_exclude_file_that_never_ends_is_refused(tmp_path, monkeypatch):
    """--category-names /dev/zero read until memory ran out; a pipe would wait forever."""
    with pytest.raises(DataError, match="/dev/zero is not a regular file"):
        load_category_names("/dev/zero")
    with pytest.raises(UsageError, match="exclude list /dev/zero is not a regular file"):
        read_exclude_list("/dev/zero")
    monkeypatch.setattr(folders, "SMALL_FILE_MAX", 100)
    (tmp_path / "names.json").write_text(json.dumps({str(i): "x" * 20 for i in range(10)}))
    with pytest.raises(DataError, match="over 100 bytes; is it the right file"):
        load_category_names(tmp_path / "names.json")


def test_names_and_exclude_files_that_start_with_a_byte_order_mark_are_read(tmp_path):
    """Notepad saves UTF-8 with a BOM; the file is the user's, not a Python puzzle."""
    names = tmp_path / "cat_to_name.json"
    names.write_bytes(b"\xef\xbb\xbf" + json.dumps({"1": "pink primrose"}).encode())
    assert load_category_names(names) == {"1": "pink primrose"}
    issues = tmp_path / "issues.csv"
    issues.write_bytes(b"\xef\xbb\xbfpath,kind,given,suggested,score,other\ntrain/1/a.jpg,label,1,2,0.9,\n")
    assert read_exclude_list(issues) == ["train/1/a.jpg"]
    listed = tmp_path / "ex.txt"
    listed.write_bytes(b"\xef\xbb\xbftrain/1/a.jpg\n")
    assert read_exclude_list(listed) == ["train/1/a.jpg"]


def test_one_name_in_two_unicode_compositions_is_one_category(tmp_path):
    """train/ typed on Linux ('rosé' as one letter, NFC) and valid/ copied from a Mac ('e' + accent, NFD):
    valid's folder is train's category, not one 'the model does not know'; two spellings side by side in
    train/ are one category; a names file in either spelling names it."""
    nfc, nfd = "ros\u00e9", "rose\u0301"
    build_folder(tmp_path, {"train": 2}, classes={nfc: (200, 0, 0), "tulip": (0, 0, 200)}, names=False)
    build_folder(tmp_path, {"train": 1, "valid": 1}, classes={nfd: (210, 0, 0), "tulip": (0, 0, 210)}, names=False)
    data = load_dataset(tmp_path)
    assert len(data.categories) == 2 and data.train.counts()[data.categories[0]] == 3
    assert data.valid.counts() == {data.categories[0]: 1, "tulip": 1}
    assert names_for(data.categories, {nfc: "garden rose"}) == ["garden rose", None]
    assert names_for(data.categories, {nfd: "garden rose"}) == ["garden rose", None]
