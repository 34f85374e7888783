"""`flowerid check`: a data report that exits non-zero when training would go wrong."""

import json
import shutil

import pytest

from flowerid.apps.cli import main
from flowerid.data.check import check_data

from ..conftest import SHARED_DATA, build_folder
from ..hostile import SKIP


def _run(capsys, *args) -> tuple[int, str]:
    code = main(["check", *args])
    return code, capsys.readouterr().out


def test_clean_folder_is_ready(image_folder, capsys):
    code, out = _run(capsys, str(image_folder), "--min-size", "16")
    assert code == 0 and out.strip().endswith("check: 0 errors, 0 warnings; ready to train")
    assert "  1              8       4       4" in out and "  total         24      12      12" in out


def test_hostile_folder_lists_unreadable_files_only(hostile_folder, capsys):
    root, cases = hostile_folder
    report = check_data(root, min_size=16)
    assert set(report.unreadable) == {str(root / k) for k, c in cases.items() if c.outcome == SKIP}
    assert not report.errors
    assert report.counts["train"]["1"] == 4 + sum(
        1 for k, c in cases.items() if k.startswith("train/") and c.outcome == "ok"
    )
    messages = [f.message for f in report.warnings]
    assert any("unreadable" in m for m in messages)
    assert any("repeated within one category" in m for m in messages)  # the same JPEG under four names
    assert any("tiny image" in m for m in messages)  # 1x1 and 4000x20
    code, out = _run(capsys, str(root), "--min-size", "16")
    assert code == 0 and "web page" in out
    assert _run(capsys, str(root), "--strict")[0] == 1


def test_leakage_and_label_conflicts_are_errors(image_folder, capsys):
    src = image_folder / "train" / "1" / "img_000.jpg"
    shutil.copy(src, image_folder / "valid" / "1" / "copy.jpg")
    code, out = _run(capsys, str(image_folder))
    assert code == 1 and "1 image(s) in more than one split" in out
    assert "train/1/img_000.jpg = valid/1/copy.jpg" in out
    (image_folder / "valid" / "1" / "copy.jpg").unlink()
    shutil.copy(src, image_folder / "train" / "2" / "copy.jpg")
    code, out = _run(capsys, str(image_folder))
    assert code == 1 and "filed under two categories" in out


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda r: (r / "train" / "7").mkdir(), "empty category folder(s) in train/"),
        (lambda r: (r / "train" / "10" / "img_000.jpg").rename(r / "train" / "99.jpg"), None),
        (lambda r: shutil.rmtree(r / "valid"), "too few photos to hold out a valid split in: 1 (2), 10 (2), 2 (2)"),
        (lambda r: build_folder(r, {"valid": 1}, classes={"99": (1, 2, 3)}, names=False), "train/ lacks"),
        (lambda r: [p.write_bytes(b"") for p in (r / "train" / "2").iterdir()], "no readable image"),
    ],
)
def test_structural_problems_are_reported_not_raised(tmp_path, capsys, damage, words):
    root = build_folder(tmp_path / "d", {"train": 2, "valid": 1})
    damage(root)
    code, out = _run(capsys, str(root), "--min-size", "16")
    if words is None:  # a stray file at the category level is ignored, like train does
        assert code == 0, out
    else:
        assert code == 1 and "error: " in out and words in out, out


def test_imbalance_and_json(tmp_path, capsys):
    root = build_folder(tmp_path / "d", {"train": 1, "valid": 1})
    build_folder(root, {"train": 12}, classes={"1": (210, 30, 50)}, names=False)  # other bytes: no leak
    code, out = _run(capsys, str(root), "--min-size", "16", "--max-imbalance", "5", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True and report["counts"]["train"] == {"1": 12, "10": 1, "2": 1}
    few, finding = report["findings"]
    assert few["level"] == "warning" and "under 10 photos" in few["message"]
    assert few["paths"] == ["10: 2", "2: 2"]  # train and valid together; 1 has 13
    assert finding["level"] == "warning" and "12.0x" in finding["message"]
    assert "train keeps the plain loss" in finding["message"] and "--balance-classes" in finding["message"]


def test_missing_folder_is_an_error(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "flowers.zip").write_bytes(b"PK\x03\x04")  # what people download, before unpacking it
    (tmp_path / "notes.txt").write_text("x")
    for command in ("check", "train"):
        assert main([command, str(tmp_path / "flowers.zip")]) == 1
        assert "is an archive; unpack it and give the folder it holds" in capsys.readouterr().err
        assert main([command, str(tmp_path / "notes.txt")]) == 1
        assert "notes.txt is a file, not a folder" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.exists(), reason="shared flowers data not present")
def test_flowers102_has_one_image_in_both_train_and_valid():
    report = check_data(SHARED_DATA)
    assert sum(report.counts["train"].values()) == 6552 and sum(report.counts["valid"].values()) == 818
    assert not report.unreadable
    [leak] = [f for f in report.errors if "more than one split" in f.message]
    assert leak.paths == ["train/31/image_08077.jpg = valid/31/image_08067.jpg"]


def test_no_valid_folder_counts_what_train_holds_out(tmp_path, capsys):
    root = build_folder(tmp_path / "d", {"training_set": 10, "test_set": 2}, names=False)
    code, out = _run(capsys, str(root), "--min-size", "16")
    assert code == 0, out
    assert "note: no valid folder: train holds out 20% of each category of training_set/ as valid (6 photos" in out
    assert "  1              8       2       2" in out  # train, valid (held out), test
    assert "check: 0 errors, 0 warnings; ready to train" in out


def test_a_copy_on_both_sides_of_the_held_out_split_is_a_leak(tmp_path, capsys):
    from flowerid.data.folders import load_dataset

    root = build_folder(tmp_path / "d", {"photos": 10}, names=False) / "photos"
    data = load_dataset(root)
    held, kept = data.valid.paths[0], data.train.paths[-1]
    shutil.copy(held, kept)  # the same bytes under a name that stays in train
    code, out = _run(capsys, str(root), "--min-size", "16")
    assert code == 1 and "1 image(s) in more than one split" in out, out


def test_near_duplicates_across_splits(image_folder, capsys):
    from PIL import Image

    src = image_folder / "train" / "1" / "img_000.jpg"
    with Image.open(src) as im:  # resized and re-encoded: other bytes, the same picture
        im.resize((im.width * 2, im.height * 2)).save(image_folder / "valid" / "1" / "bigger.jpg", quality=70)
    code, out = _run(capsys, str(image_folder), "--min-size", "16")
    assert "1 near-duplicate pair(s) across splits" in out, out
    assert "train/1/img_000.jpg ~ valid/1/bigger.jpg" in out


def test_two_categories_sharing_a_display_name_are_named(image_folder, capsys):
    (image_folder / "cat_to_name.json").write_text(json.dumps({"1": "Rose", "10": "rose ", "2": "Tulip"}))
    code, out = _run(capsys, str(image_folder), "--min-size", "16")
    assert "gives 1 name(s) to more than one category" in out and "Rose: 1, 10" in out
    assert "Tulip" not in out and code == 0  # a warning: training works, predictions are ambiguous


def test_one_name_in_two_unicode_compositions(tmp_path):
    """valid/ copied from a Mac spells 'rosé' as 'e' + accent: not a category train lacks; two spellings
    side by side in train/ are named, since train joins them."""
    nfc, nfd = "ros\u00e9", "rose\u0301"
    build_folder(tmp_path, {"train": 3}, classes={nfc: (200, 0, 0), "tulip": (0, 0, 200)}, names=False)
    build_folder(tmp_path, {"valid": 1}, classes={nfd: (200, 0, 90), "tulip": (0, 90, 200)}, names=False)
    report = check_data(tmp_path, min_size=16)
    assert not any("lacks" in f.message for f in report.findings), report.findings
    build_folder(tmp_path / "x", {"train": 3}, classes={nfc: (200, 0, 0), nfd: (0, 0, 200)}, names=False)
    build_folder(tmp_path / "x", {"valid": 1}, classes={nfc: (200, 0, 90)}, names=False)
    twice = [f for f in check_data(tmp_path / "x", min_size=16).findings if "two ways" in f.message]
    assert len(twice) == 1 and len(twice[0].paths) == 2
