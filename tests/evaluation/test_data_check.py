"""check --deep on a folder (evaluation/data_check.py): thumbnails, issues.csv, and planted mistakes end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from flowerid.apps.cli import main
from flowerid.backbones import BackboneSpec, WeightsSource, register_backbone
from flowerid.data import deep_check as dc
from flowerid.data.folders import exclude_photos, load_dataset, read_exclude_list
from flowerid.evaluation.data_check import thumbnails, write_issues_csv

from ..conftest import CLASS_COLOURS, NAMES, TINY

COLOUR = "tiny_colour"


def _colour_factory():
    import torch
    import torch.nn as nn

    class Colours(nn.Module):
        """Top and bottom halves' mean colours and the colour spread: a mirror sees the same."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            halves = nn.functional.adaptive_avg_pool2d(x, (2, 1)).flatten(1)
            return torch.cat([halves, x.flatten(2).std(2)], 1)

    return Colours()


@pytest.fixture
def colour_backbone() -> str:
    """A backbone of 9 colour features: it places photos the way the test means them to be.

    (The tiny random conv net separates the categories but has no sense of "unlike any of them".)
    """
    spec = BackboneSpec(
        COLOUR, "custom", "tiny", WeightsSource("none"), 32, 0.875, "bilinear",
        (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 9, "MIT", factory=_colour_factory,
    )  # fmt: skip
    register_backbone(spec, replace=True)
    return COLOUR


def scene(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (120, 96)) -> Image.Image:
    """A photo-like picture: a coloured ground with a few random shapes, so copies and non-copies differ."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, size[0] - 20)), int(rng.integers(0, size[1] - 20))
        x1, y1 = x0 + int(rng.integers(10, 50)), y0 + int(rng.integers(10, 40))
        shade = tuple(int(np.clip(c + rng.integers(-90, 90), 0, 255)) for c in colour)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=shade)
    return img


def copy_of(img: Image.Image, *, mirror: bool = False, crop: bool = False) -> Image.Image:
    """What the issue calls a near-duplicate: 80% size, JPEG quality 70, maybe mirrored or 10% cropped."""
    w, h = img.size
    if crop:
        img = img.crop((round(w * 0.05), round(h * 0.05), w - round(w * 0.05), h - round(h * 0.05)))
    if mirror:
        img = ImageOps.mirror(img)
    return img.resize((round(img.width * 0.8), round(img.height * 0.8)), Image.BICUBIC)


def test_copies_match_on_pixels_and_distinct_scenes_do_not(tmp_path):
    base = scene((180, 60, 60), 1)
    files = {"orig": base, "other": scene((180, 60, 60), 2)}
    files["plain"] = copy_of(base)
    files["mirror"] = copy_of(base, mirror=True)
    files["crop"] = copy_of(base, crop=True)
    files["both"] = copy_of(base, mirror=True, crop=True)
    for name, img in files.items():
        img.save(tmp_path / f"{name}.jpg", quality=70)
    names = list(files)
    thumbs, failed = thumbnails([tmp_path / f"{n}.jpg" for n in names])
    assert not failed and thumbs.shape == (len(names), 2, dc.THUMB, dc.THUMB)
    pairs = np.array([[0, names.index(n)] for n in names[1:]])
    sim = dict(zip(names[1:], dc.pixel_similarity(thumbs, pairs), strict=True))
    assert all(sim[n] >= dc.DUPLICATE_THRESHOLD for n in ("plain", "mirror", "crop", "both")), sim
    assert sim["other"] < 0.9


def test_issues_csv_round_trips_into_an_exclude_list(tmp_path):
    issues = [
        dc.Issue("train/1/a.jpg", dc.LABEL, "1", "2", 0.98765),
        dc.Issue("train/2/b, c.jpg", dc.DUPLICATE, "2", "", 2.9, "valid/2/d.jpg"),
    ]
    path = write_issues_csv(tmp_path / "issues.csv", issues)
    rows = list(csv.reader(path.open(encoding="utf-8")))
    assert rows[0] == ["path", "kind", "given", "suggested", "score", "other"]
    assert rows[1] == ["train/1/a.jpg", "label", "1", "2", "0.9877", ""]
    assert read_exclude_list(path) == ["train/1/a.jpg", "train/2/b, c.jpg"]
    plain = tmp_path / "list.txt"
    plain.write_text("train/1/a.jpg\n\n# kept: train/2/x.jpg\n  valid/2/d.jpg  \n")
    assert read_exclude_list(plain) == ["train/1/a.jpg", "valid/2/d.jpg"]


def test_issues_csv_paths_holding_line_breaks_exclude_their_photos(tmp_path):
    from ..conftest import build_folder

    root = build_folder(tmp_path / "data", {"train": 2, "valid": 1})
    for split in ("train", "valid"):  # category folders named with a line feed and a carriage return
        (root / split / "1").rename(root / split / "a\nb")
        (root / split / "10").rename(root / split / "c\rd")
    issues = [
        dc.Issue("train/a\nb/img_000.jpg", dc.OUTLIER, "a\nb", "", 5.0),
        dc.Issue("train/c\rd/img_000.jpg", dc.LABEL, "c\rd", "2", 0.9),
        dc.Issue("train/2/img_000.jpg", dc.DUPLICATE, "2", "", 0.99, "train/c\rd/img_001.png"),
    ]
    listed = read_exclude_list(write_issues_csv(tmp_path / "issues.csv", issues))
    assert listed == [i.path for i in issues]
    _, left_out, unknown = exclude_photos(load_dataset(root), listed)
    assert (left_out, unknown) == (3, [])


# ------------------------------------------------------------------ a planted folder, end to end


@pytest.fixture
def planted(tmp_path):
    """24 train and 6 valid scenes per category, with one wrong label, one copy across splits and one stray."""
    root = tmp_path / "planted"
    seed = 0
    for split, n in (("train", 24), ("valid", 6)):
        for cat, colour in CLASS_COLOURS.items():
            (root / split / cat).mkdir(parents=True)
            for i in range(n):
                seed += 1
                scene(colour, seed).save(root / split / cat / f"{split}_{i:02d}.jpg", quality=90)
    (root / "cat_to_name.json").write_text(json.dumps(NAMES))
    # a red photo filed under "2" (blue)
    (root / "train" / "1" / "train_05.jpg").rename(root / "train" / "2" / "moved.jpg")
    # a mirrored, shrunk, re-encoded copy of a valid photo in train
    with Image.open(root / "valid" / "10" / "valid_03.jpg") as im:
        copy_of(im.convert("RGB"), mirror=True).save(root / "train" / "10" / "copy.jpg", quality=70)
    # a photo of nothing the folder is about: white with grey stripes, like no category's colour
    stray = np.tile(np.array([200, 255] * 40, dtype=np.uint8), (96, 1))
    Image.fromarray(stray).convert("RGB").save(root / "train" / "10" / "stray.png")
    return root


def test_check_deep_lists_planted_mistakes_and_exits_1(planted, colour_backbone, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["check", str(planted), "--deep", "--out", str(out), "--arch", colour_backbone, "--min-size", "16"])
    printed = capsys.readouterr().out
    assert code == 1
    rows = list(csv.DictReader((out / "issues.csv").open(encoding="utf-8")))
    assert list(rows[0]) == ["path", "kind", "given", "suggested", "score", "other"]
    by_kind = {k: [r for r in rows if r["kind"] == k] for k in dc.KINDS}
    labels = {r["path"]: r for r in by_kind["label"]}
    assert labels["train/2/moved.jpg"]["given"] == "2" and labels["train/2/moved.jpg"]["suggested"] == "1"
    pairs = {(r["path"], r["other"]) for r in by_kind["duplicate"]}
    assert ("train/10/copy.jpg", "valid/10/valid_03.jpg") in pairs  # the train copy first
    assert [r["path"] for r in by_kind["outlier"]] == ["train/10/stray.png"]
    assert "train/10/stray.png" not in labels  # an outlier has no right label to suggest
    kinds = [r["kind"] for r in rows]
    assert kinds == sorted(kinds, key=dc.KINDS.index)
    for k in dc.KINDS:
        scores = [float(r["score"]) for r in by_kind[k]]
        assert scores == sorted(scores, reverse=True)
    html = (out / "review.html").read_text(encoding="utf-8")
    assert html.count("data:image/jpeg;base64,") >= 5 and "http" not in html and "<script" not in html
    assert "moved.jpg" in html and "pink primrose" in html
    assert "deep: " in printed and "train/2/moved.jpg: filed under 2, looks like 1" in printed


def test_check_deep_json_reports_counts_and_files(planted, tmp_path, capsys):
    out = tmp_path / "json-out"
    code = main(["check", str(planted), "--deep", "--out", str(out), "--arch", TINY, "--min-size", "16", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["deep"]["counts"]["duplicate"] >= 1
    assert report["deep"]["issues_csv"] == str(out / "issues.csv")


def test_train_exclude_leaves_out_the_rows_of_issues_csv(planted, tmp_path, capsys):
    issues = tmp_path / "issues.csv"
    write_issues_csv(
        issues,
        [dc.Issue("train/2/moved.jpg", dc.LABEL, "2", "1", 0.99), dc.Issue("train/10/stray.png", dc.OUTLIER, "10")],
    )
    save = tmp_path / "run"
    args = ["train", str(planted), "--save-dir", str(save), "--arch", TINY, "--epochs", "2", "--exclude", str(issues)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"left out 2 photos listed in {issues}" in printed
    assert "data: 72 train" in printed  # 72 scenes (one renamed into 2/) + copy + stray - the 2 listed
    meta = json.loads((save / "metrics.json").read_text())
    assert meta["best_epoch"] >= 1


def test_check_deep_survives_hostile_files(hostile_folder, tmp_path, capsys):
    root, _ = hostile_folder
    code = main(["check", str(root), "--deep", "--out", str(tmp_path / "out"), "--arch", TINY, "--min-size", "8"])
    captured = capsys.readouterr()
    assert code in (0, 1) and "Traceback" not in captured.err
    issues = tmp_path / "out" / "issues.csv"  # names that are not UTF-8 keep their bytes, as in skipped.tsv
    rows = list(csv.DictReader(issues.open(encoding="utf-8", errors="surrogateescape", newline="")))
    data = load_dataset(root)
    readable = {str(p.relative_to(root)) for p in data.train.paths + data.valid.paths}
    assert {r["path"] for r in rows} <= readable
    kept, left_out, unknown = exclude_photos(data, read_exclude_list(issues))  # every row matches a photo
    assert left_out == len({r["path"] for r in rows}) and unknown == []
    (tmp_path / "out" / "review.html").read_text(encoding="utf-8")  # the page is valid UTF-8


def test_the_deep_summary_prints_names_from_outside_escaped(tmp_path):
    from flowerid.apps.train_commands import format_deep

    issues = [
        dc.Issue("a\tb/x\n1.jpg", dc.LABEL, "a\tb", "\x1b[31mx", 0.9),
        dc.Issue("a\nb/y.jpg", dc.DUPLICATE, "a\nb", "", 0.99, "c\rd/z.jpg"),
        dc.Issue("\x1b[31mx/w.jpg", dc.OUTLIER, "\x1b[31mx", "", 5.0),
    ]
    findings = dc.Findings(issues, np.zeros((3, 3)), np.zeros(3))
    text = format_deep(findings, tmp_path / "o\nut" / "issues.csv", tmp_path / "o\nut" / "review.html")
    assert "\x1b" not in text and "\t" not in text and "\r" not in text
    assert len(text.splitlines()) == 9  # a blank, a title and a row for each kind, and the two closing lines
    assert "a\\tb/x\\n1.jpg: filed under a\\tb, looks like \\x1b[31mx" in text and "c\\rd/z.jpg" in text
