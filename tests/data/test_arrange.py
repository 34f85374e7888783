"""`flowerid arrange`: photos labelled by file names or a CSV, laid out as one folder per category."""

from __future__ import annotations

import os

import pytest

from flowerid.apps.cli import main
from flowerid.data.arrange import arrange, folder_name, label_from_name
from flowerid.data.folders import find_categories
from flowerid.errors import DataError

from ..conftest import CLASS_COLOURS, TINY, make_photo


def _kaggle(root, split="train", n=4, seed=0):
    (root / split).mkdir(parents=True)
    for i in range(n):
        make_photo(CLASS_COLOURS["1"], seed + i).save(root / split / f"cat.{i}.jpg")
        make_photo(CLASS_COLOURS["10"], seed + i).save(root / split / f"dog.{i}.jpg")
    return root


@pytest.mark.parametrize(
    "name, label",
    [
        ("cat.12.jpg", "cat"),
        ("american_bulldog_104.jpg", "american_bulldog"),
        ("Rose-3.png", "Rose"),
        ("IMG 0042.JPG", None),  # a camera's name
        ("0042.jpg", None),
        ("sunflower.jpg", None),  # no number: nothing says the name is a label
        ("cat.jpg.12.jpg", "cat.jpg"),
    ],
)
def test_the_label_a_file_name_carries(name, label):
    assert label_from_name(name) == label


def test_labels_from_file_names_keep_the_split_and_link_the_photos(tmp_path, capsys):
    src = _kaggle(tmp_path / "k")
    _kaggle(tmp_path / "k", "test", 2, seed=100)
    make_photo(CLASS_COLOURS["2"], 0).save(src / "train" / "0042.jpg")  # carries no label: left out, said
    assert main(["arrange", str(src), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "0042.jpg: its file name carries no label" in out and "1 left out" in out
    assert find_categories(tmp_path / "out" / "train") == ["cat", "dog"]
    linked = tmp_path / "out" / "test" / "dog" / "dog.1.jpg"
    assert linked.is_symlink() and linked.resolve() == (src / "test" / "dog.1.jpg").resolve()
    assert main(["check", str(tmp_path / "out")]) == 0
    assert main(["arrange", str(src), str(tmp_path / "out")]) == 1  # never over an existing tree
    assert "already exists" in capsys.readouterr().err


def test_labels_from_a_csv_by_header_name_or_first_columns(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    for i in range(3):
        make_photo(CLASS_COLOURS["1"], i).save(src / f"{i}a.jpg")
        make_photo(CLASS_COLOURS["10"], i).save(src / f"{i}b.jpg")
    csv = tmp_path / "labels.csv"
    rows = ["id;species"] + [f"{i}a;rose" for i in range(3)] + [f"{i}b;tulip" for i in range(2)] + ["gone;tulip"]
    csv.write_text("\ufeff" + "\n".join(rows) + "\n")  # a BOM, as Excel writes, and ids without extension
    result = arrange(src, tmp_path / "out", csv, copy=True)
    assert result.counts[""] == {"rose": 3, "tulip": 2}
    assert set(result.left_out) == {"gone", str(src / "2b.jpg")}
    assert not (tmp_path / "out" / "rose" / "0a.jpg").is_symlink()  # --copy
    plain = tmp_path / "plain.csv"
    plain.write_text("0a.jpg,rose\n0b.jpg,tulip\n")
    assert arrange(src, tmp_path / "out2", plain).labels == ["rose", "tulip"]


def test_what_cannot_be_arranged_is_refused_and_nothing_is_left_half_made(tmp_path, monkeypatch):
    src = _kaggle(tmp_path / "k")
    flowers = tmp_path / "flowers"
    flowers.mkdir()
    for i in range(3):
        make_photo(CLASS_COLOURS["2"], i).save(flowers / f"image_{i:05d}.jpg")  # one "label" is none
    with pytest.raises(DataError, match="do not carry labels"):
        arrange(flowers, tmp_path / "x")
    with pytest.raises(DataError, match="not a folder"):
        arrange(tmp_path / "missing", tmp_path / "x")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        arrange(src, tmp_path / "x", tmp_path / "empty.csv")
    calls = []

    def interrupted(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "symlink", interrupted)
    with pytest.raises(KeyboardInterrupt):
        arrange(src, tmp_path / "x")
    assert not (tmp_path / "x").exists() and not any(p.name.startswith(".x") for p in tmp_path.iterdir())


def test_a_label_becomes_a_folder_every_command_reads_as_that_category():
    assert folder_name("../../etc") == "_.._.._etc" and folder_name("a\x1b[2Jb\u202e") == "a[2Jb"
    assert folder_name("Test") == "Test_" and folder_name(".cat") == "_.cat" and folder_name("__MACOSX") == "__MACOSX_"
    assert len(folder_name("\U0001f339" * 100).encode()) <= 200
    with pytest.raises(DataError):
        folder_name("..")


@pytest.mark.parametrize(
    "name, label",
    [("IMG_0042.jpg", None), ("DSC_0001.JPG", None), ("cat.1 (1).jpg", "cat"), ("dog.2 - Copy.jpg", "dog")],
)
def test_camera_names_carry_no_label_and_copies_keep_theirs(name, label):
    assert label_from_name(name) == label


def test_what_names_leave_unclear_is_settled_or_refused(tmp_path):
    """Labels differing in case are one; a split holding one label is kept; photos outside the splits are
    counted; labels that would share a folder are refused; DEST inside SRC is refused."""
    src = _kaggle(tmp_path / "k")
    make_photo(CLASS_COLOURS["1"], 50).save(src / "train" / "Cat.9.jpg")
    (src / "valid").mkdir()
    make_photo(CLASS_COLOURS["1"], 60).save(src / "valid" / "cat.6.jpg")
    (src / "test1").mkdir()
    make_photo(CLASS_COLOURS["2"], 70).save(src / "test1" / "1.jpg")
    result = arrange(src, tmp_path / "out")
    assert result.counts == {"train": {"cat": 5, "dog": 4}, "valid": {"cat": 1}}
    assert list(result.left_out) == [str(src / "test1" / "1.jpg")]
    with pytest.raises(DataError, match="inside"):
        arrange(src, src / "out")
    csv = tmp_path / "l.csv"
    csv.write_text("file,label\ntrain/cat.0.jpg,a/b\ntrain/dog.0.jpg,a_b\ntrain/cat.1.jpg,c\n")
    with pytest.raises(DataError, match="would share the folder 'a_b'"):
        arrange(src, tmp_path / "o2", csv)


def test_a_csv_keeps_the_split_and_leaves_out_what_it_leaves_unclear(tmp_path):
    src = _kaggle(tmp_path / "k")
    _kaggle(tmp_path / "k", "test", 2, seed=100)
    csv = tmp_path / "l.csv"
    rows = ["image_name,labels", "train/cat.0.jpg,a", "cat.1.jpg,b", "train/cat.2.jpg,a", "train/cat.2.jpg,b"]
    rows += ["train/dog.0.jpg,b", "test/dog.0.jpg,a"]
    csv.write_text("\n".join(rows) + "\n")
    result = arrange(src, tmp_path / "out", csv)
    assert result.counts == {"train": {"a": 1, "b": 1}, "test": {"a": 1}}
    assert "fits 2 photos" in result.left_out["cat.1.jpg"]
    assert "two labels" in result.left_out[str(src / "train" / "cat.2.jpg")]


def test_train_on_photos_labelled_by_their_names_points_at_arrange(tmp_path, capsys):
    src = _kaggle(tmp_path / "k")
    (src / "test1").mkdir()  # Kaggle's unlabelled test photos: the folder read as a second category
    for i in range(3):
        make_photo(CLASS_COLOURS["2"], 80 + i).save(src / "test1" / f"{i}.jpg")
    assert main(["train", str(src), "--save-dir", str(tmp_path / "run"), "--arch", TINY, "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "carry labels (cat: 4, dog: 4)" in err and f"flowerid arrange {src} NEW_FOLDER" in err
    assert not (tmp_path / "run" / "checkpoint.pth").exists()
    assert main(["check", str(src)]) == 1
    assert f"flowerid arrange {src} NEW_FOLDER" in capsys.readouterr().out
    assert main(["check", str(src / "train")]) == 1  # photos directly in the folder given
    assert f"flowerid arrange {src / 'train'} NEW_FOLDER" in capsys.readouterr().out
