"""Checks on the real flowers data with the real offline backbone (slow; skipped without the data)."""

import json

import pytest

from flowerid.apps.cli import main

from .conftest import SHARED_DATA

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_DATA / "train").is_dir(), reason=f"shared data not at {SHARED_DATA}"),
]

TEN = ["1", "10", "2", "21", "49", "54", "73", "74", "77", "89"]


def test_ten_classes_five_epochs_names_held_back_photos(tmp_path, capsys):
    data = tmp_path / "ten"
    for split in ("train", "valid"):
        (data / split).mkdir(parents=True)
        for c in TEN:
            (data / split / c).symlink_to(SHARED_DATA / split / c, target_is_directory=True)
    (data / "cat_to_name.json").symlink_to(SHARED_DATA / "cat_to_name.json")
    assert main(["train", str(data), "--save-dir", str(tmp_path / "run"), "--epochs", "5"]) == 0
    # valid photos were only used to pick the epoch; judge on them through predict --json
    photos = sorted(str(p) for c in TEN for p in (SHARED_DATA / "valid" / c).iterdir())
    capsys.readouterr()
    assert main(["predict", *photos, "--checkpoint", str(tmp_path / "run" / "checkpoint.pth"), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    right = sum(r["predictions"][0]["category"] == r["image"].split("/")[-2] for r in records)
    assert right / len(records) >= 0.95
    names = json.loads((SHARED_DATA / "cat_to_name.json").read_text())
    first = records[0]
    assert first["predictions"][0]["name"] == names[first["predictions"][0]["category"]]
