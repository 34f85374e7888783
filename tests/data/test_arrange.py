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
        ("IMG 0042.JPG", "IMG"),
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
    assert "no label:" in out and "0042.jpg" in out and "1 left out" in out
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
    assert result.missing == ["gone"] and result.unlabelled == [str(src / "2b.jpg")]
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


def test_a_label_cannot_climb_out_of_the_tree():
    assert folder_name("../../etc") == ".._.._etc" and folder_name("a\x1b[2Jb\u202e") == "a[2Jb"
    with pytest.raises(DataError):
        folder_name("..")


def test_train_on_photos_labelled_by_their_names_points_at_arrange(tmp_path, capsys):
    src = _kaggle(tmp_path / "k")
    assert main(["train", str(src), "--save-dir", str(tmp_path / "run"), "--arch", TINY, "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "whose file names carry labels (cat: " in err and "flowerid arrange" in err
    assert not (tmp_path / "run" / "checkpoint.pth").exists()
    assert main(["check", str(src)]) == 1
    assert f"flowerid arrange {src} NEW_FOLDER" in capsys.readouterr().out
