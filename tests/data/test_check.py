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
        (lambda r: shutil.rmtree(r / "valid"), "no valid/ folder"),
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
    [finding] = report["findings"]
    assert finding["level"] == "warning" and "12.0x" in finding["message"]


def test_missing_folder_is_an_error(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.exists(), reason="shared flowers data not present")
def test_flowers102_has_one_image_in_both_train_and_valid():
    report = check_data(SHARED_DATA)
    assert sum(report.counts["train"].values()) == 6552 and sum(report.counts["valid"].values()) == 818
    assert not report.unreadable
    [leak] = [f for f in report.errors if "more than one split" in f.message]
    assert leak.paths == ["train/31/image_08077.jpg = valid/31/image_08067.jpg"]
