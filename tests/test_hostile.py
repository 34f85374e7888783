"""Every command over the hostile corpus (tests/hostile.py): nothing breaks on bad input."""

import json
import os

import numpy as np
import pytest

from flowerid.apps.cli import main
from flowerid.data.check import check_data
from flowerid.data.folders import find_categories, list_images, load_dataset
from flowerid.data.images import load_image
from flowerid.data.layout import find_layout
from flowerid.errors import DataError, DecompressionBombError, ImageError, UsageError
from flowerid.training.run import TrainConfig, train

from .conftest import CLASS_COLOURS, TINY, build_folder, make_photo
from .hostile import IGNORE, OK, SKIP, build_hostile_corpus, names_with


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    return folder, build_hostile_corpus(folder)


def test_loader_reads_every_awkward_image_and_refuses_the_rest(corpus):
    folder, cases = corpus
    for name, case in cases.items():
        if case.outcome == OK:
            img = load_image(folder / name)
            assert img.mode == "RGB" and img.size == case.size, name
        else:
            with pytest.raises(ImageError) as info:
                load_image(folder / name)
            assert str(folder / name) in str(info.value)


def test_loader_details(corpus):
    folder, _ = corpus
    corner = load_image(folder / "transparent.png").getpixel((0, 0))  # alpha 0 at the left edge
    assert corner == (255, 255, 255)
    r, g, b = np.asarray(load_image(folder / "animated.gif"), dtype=float).reshape(-1, 3).mean(0)
    assert r > 150 and g < 90  # the red first frame, not the black second one
    deep = np.asarray(load_image(folder / "deep16.png"), dtype=int)
    assert 40 < deep.mean() < 200  # 16-bit scaled to 8-bit, not clipped to white
    assert load_image(folder / "sideways.jpg").size == (40, 48)


@pytest.mark.parametrize(
    "name, words",
    [
        ("empty.jpg", "empty (0 bytes)"),
        ("page.png", "web page"),
        ("truncated.jpg", "truncated"),
        ("noise.jpg", "not an image"),
        ("bomb.png", "FLOWERID_MAX_PIXELS"),
    ],
)
def test_reasons_say_why(corpus, name, words):
    folder, _ = corpus
    with pytest.raises(ImageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_image(folder / name)


def test_pixel_limit_is_configurable(corpus, monkeypatch):
    folder, _ = corpus
    with pytest.raises(DecompressionBombError, match="80,000 pixels is over the pixel limit of 1,000"):
        load_image(folder / "panorama.jpg", max_pixels=1000)
    monkeypatch.setenv("FLOWERID_MAX_PIXELS", "1000")
    with pytest.raises(DecompressionBombError):
        load_image(folder / "panorama.jpg")
    monkeypatch.setenv("FLOWERID_MAX_PIXELS", "lots")
    with pytest.raises(UsageError, match="FLOWERID_MAX_PIXELS"):
        load_image(folder / "panorama.jpg")


def test_bad_pixel_limit_is_a_usage_error_in_the_cli(monkeypatch, capsys, trained):
    monkeypatch.setenv("FLOWERID_MAX_PIXELS", "-5")
    img = str(next((trained[0] / "valid" / "1").iterdir()))
    assert main(["predict", img, "--checkpoint", str(trained[1].checkpoint_path)]) == 2
    err = capsys.readouterr().err
    assert "FLOWERID_MAX_PIXELS" in err and "Traceback" not in err


def test_scanning_ignores_obvious_non_images_quietly(corpus, tmp_path):
    folder, cases = corpus
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "copy.jpg").write_bytes((folder / "grey.png").read_bytes())
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "x.jpg").write_bytes(b"\0\5\26\7")
    (folder / "nested").mkdir()
    (folder / "nested" / "deeper.png").write_bytes((folder / "grey.png").read_bytes())
    found = {str(p.relative_to(folder)) for p in list_images(folder)}
    assert found == names_with(cases, OK) | names_with(cases, SKIP) | {"nested/deeper.png"}


def test_train_skips_unreadable_files_and_lists_them(hostile_folder, tmp_path):
    root, cases = hostile_folder
    lines: list[str] = []
    result = train(root, tmp_path / "run", TrainConfig(arch=TINY, epochs=2, num_workers=1), log=lines.append)
    expected_skips = {str(root / k) for k, c in cases.items() if c.outcome == SKIP}
    assert set(result.skipped) == expected_skips
    assert not any(os.path.basename(p) in names_with(cases, IGNORE) for p in result.skipped)
    ok_train = sum(1 for k, c in cases.items() if c.outcome == OK and k.startswith("train/"))
    ok_valid = sum(1 for k, c in cases.items() if c.outcome == OK and k.startswith("valid/"))
    ckpt_training = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert ckpt_training["history"][-1]["epoch"] == 2
    from flowerid.model.checkpoint import load_checkpoint

    info = load_checkpoint(result.checkpoint_path)["training"]
    assert info["train_images"] == 3 * 4 + ok_train and info["valid_images"] == 3 * 2 + ok_valid
    summary = [s for s in lines if s.startswith("skipped")]
    assert summary == [
        f"skipped {len(expected_skips)} unreadable images; paths and reasons in {tmp_path / 'run' / 'skipped.tsv'}"
    ]
    rows = (tmp_path / "run" / "skipped.tsv").read_bytes().decode("utf-8").splitlines()
    assert rows[0] == "path\treason" and len(rows) == 1 + len(expected_skips)
    listed = dict(r.split("\t") for r in rows[1:])
    assert set(listed) == expected_skips
    assert "web page" in listed[str(root / "train" / "1" / "page.png")]
    assert "pixel limit" in listed[str(root / "valid" / "2" / "bomb.png")]


def test_clean_rerun_removes_a_stale_skipped_list(image_folder, tmp_path):
    bad = image_folder / "train" / "1" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    cfg = TrainConfig(arch=TINY, epochs=1, num_workers=0)
    train(image_folder, tmp_path, cfg, log=lambda s: None)
    assert (tmp_path / "skipped.tsv").exists()
    bad.unlink()
    train(image_folder, tmp_path, cfg, log=lambda s: None)
    assert not (tmp_path / "skipped.tsv").exists()


def test_a_category_left_with_no_readable_images_is_an_error(tmp_path):
    root = build_folder(tmp_path / "d", {"train": 2, "valid": 1})
    for p in (root / "train" / "10").iterdir():
        p.write_bytes(b"<html>gone</html>")
    with pytest.raises(DataError, match="no readable images left in train/ for categories: 10"):
        train(root, tmp_path / "run", TrainConfig(arch=TINY, epochs=1, num_workers=0), log=lambda s: None)
    assert len((tmp_path / "run" / "skipped.tsv").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda r: (r / "train" / "7").mkdir(), "category folders with no images: 7"),
        (lambda r: (r / "train" / "1" / "x.txt").parent.joinpath(".DS_Store").write_bytes(b"\0"), None),
        (lambda r: build_folder(r, {"valid": 1}, classes={"99": (1, 2, 3)}, names=False), "every category needs"),
        (lambda r: [p.unlink() for p in (r / "valid" / "10").iterdir()], "no images: 10"),
    ],
)
def test_data_errors_come_before_any_work(tmp_path, capsys, damage, words, monkeypatch):
    root = build_folder(tmp_path / "d", {"train": 1, "valid": 1})
    damage(root)
    import flowerid.training.frozen

    def no_backbone(*a, **k):
        raise AssertionError("built a backbone before checking the data")

    monkeypatch.setattr(flowerid.training.frozen, "load_backbone", no_backbone)
    args = ["train", str(root), "--save-dir", str(tmp_path / "run"), "--arch", TINY]
    if words is None:  # a hidden file alone changes nothing: still fails only on the stub
        with pytest.raises(AssertionError):
            main(args)
        return
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("flowerid: error:") and words in err and "Traceback" not in err


def test_no_images_at_all(tmp_path, capsys):
    for split in ("train", "valid"):
        (tmp_path / split / "1").mkdir(parents=True)
        (tmp_path / split / "1" / "notes.txt").write_text("no photos yet")
    assert main(["train", str(tmp_path), "--save-dir", str(tmp_path / "run"), "--arch", TINY]) == 1
    assert "no images: 1" in capsys.readouterr().err
    (tmp_path / "train" / "1" / "notes.txt").unlink()
    (tmp_path / "train" / "1").rmdir()
    with pytest.raises(DataError, match="no category folders"):
        load_dataset(tmp_path)


def test_predict_over_the_corpus(trained, corpus, capsys):
    folder, cases = corpus
    names = sorted(cases)
    paths = [str(folder / n) for n in names]
    ckpt = str(trained[1].checkpoint_path)
    assert main(["predict", *paths, "--checkpoint", ckpt, "--top-k", "2", "--json"]) == 1
    out = capsys.readouterr().out
    records = json.loads(out)
    assert [r["image"] for r in records] == paths
    for name, rec in zip(names, records, strict=True):
        if cases[name].outcome == OK:
            assert list(rec) == ["image", "known", "unknown_score", "predictions"], name
            assert len(rec["predictions"]) == 2 and isinstance(rec["known"], bool), name
        else:  # an explicitly named file is never ignored: it gets an error
            assert set(rec) == {"image", "error"} and rec["error"], name
    assert main(["predict", *paths, "--checkpoint", ckpt]) == 1
    captured = capsys.readouterr()
    err_lines = captured.err.strip().splitlines()
    failing = [n for n in names if cases[n].outcome != OK]
    assert len(err_lines) == len(failing) and "Traceback" not in captured.err
    assert all(line.startswith("flowerid: error: ") for line in err_lines)
    assert "empty.jpg: is empty (0 bytes)" in captured.err
    assert captured.out.count("  1. ") == len(cases) - len(failing)


def test_predict_one_good_image_still_exits_zero(trained, corpus, capsys):
    folder, _ = corpus
    assert main(["predict", str(folder / "cmyk_scan.jpg"), "--checkpoint", str(trained[1].checkpoint_path)]) == 0
    assert main(["predict", str(folder / "truncated.jpg"), "--checkpoint", str(trained[1].checkpoint_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated.jpg" in err


def test_evaluate_skips_unreadable_files_and_lists_them(hostile_folder, trained, tmp_path, capsys):
    root, cases = hostile_folder
    valid = root / "valid"
    out = tmp_path / "eval"
    assert main(["evaluate", str(trained[1].checkpoint_path), str(valid), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    expected_skips = {str(root / k) for k, c in cases.items() if c.outcome == SKIP and k.startswith("valid/")}
    ok = sum(1 for k, c in cases.items() if c.outcome == OK and k.startswith("valid/"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped"] == len(expected_skips) and metrics["n"] == 3 * 2 + ok
    assert not any(os.path.basename(r["path"]) in names_with(cases, IGNORE) for r in metrics["predictions"])
    rows = (out / "skipped.tsv").read_bytes().decode("utf-8").splitlines()
    assert rows[0] == "path\treason" and {r.split("\t")[0] for r in rows[1:]} == expected_skips
    assert f"skipped {len(expected_skips)} unreadable images" in captured.out
    assert (out / "report.html").stat().st_size > 0 and (out / "mistakes.png").exists()


def test_predict_json_with_a_file_name_that_is_not_utf8(trained, tmp_path, capsys):
    photo = tmp_path / os.fsdecode(b"caf\xe9.png")
    make_photo(CLASS_COLOURS["1"], 0).save(photo)
    assert main(["predict", str(photo), "--checkpoint", str(trained[1].checkpoint_path), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records[0]["image"] == str(photo) and len(records[0]["predictions"]) == 3


def test_a_folder_unzipped_on_a_mac_or_copied_off_a_nas_has_no_debris_categories(tmp_path):
    """`unzip` of a macOS zip leaves __MACOSX/ beside the categories; a Synology leaves @eaDir/ in each."""
    root = build_folder(tmp_path / "data", {"x": 4}, names=False) / "x"
    for debris in ("__MACOSX", "@eaDir", ".ipynb_checkpoints"):
        (root / debris / "1").mkdir(parents=True)
        (root / debris / "1" / "._a.jpg").write_bytes(b"\0\5\26\7")
        (root / "1" / debris).mkdir()
        (root / "1" / debris / "a.jpg").write_bytes((next((root / "1").glob("*.jpg"))).read_bytes())
    assert find_categories(root) == ["1", "10", "2"]
    assert find_layout(root).flat and len(list_images(root / "1")) == 4
    report = check_data(root)
    assert not report.errors, report.findings


def test_names_and_paths_from_strangers_cannot_drive_the_terminal(trained, tmp_path, capsys):
    """A category name (from someone's cat_to_name.json) or a file name holding escape sequences would
    recolour or retitle the terminal and fake lines; they print escaped."""
    from flowerid.model.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(trained[1].checkpoint_path)
    ckpt["names"] = ["rose\x1b[31m\x1b]0;pwned\x07", "tulip\r\nFAKE LINE", "globe thistle"]
    hostile = save_checkpoint(ckpt, tmp_path / "hostile.pth")
    photo = tmp_path / "a\x1b[2Jb.png"
    make_photo(CLASS_COLOURS["1"], 3).save(photo)
    assert main(["predict", str(photo), "--checkpoint", str(hostile), "--top-k", "3"]) == 0
    assert main(["info", str(hostile)]) == 0
    assert main(["predict", str(tmp_path / "gone\x1b[2J.jpg"), "--checkpoint", str(hostile)]) == 1
    assert main(["predict", str(photo), "--checkpoint", str(hostile), "--explain", str(tmp_path / "why")]) == 0
    out, err = capsys.readouterr()
    for stream in (out, err):
        assert "\x1b" not in stream and "\x07" not in stream and "\r" not in stream
    assert "rose\\x1b[31m" in out and "tulip\\r\\nFAKE LINE" in out and "a\\x1b[2Jb.png" in out
    assert "gone\\x1b[2J.jpg" in err
    assert "a\\x1b[2Jb.explain.png" in out  # the picture named after the photo


def test_train_prints_the_folders_it_names_escaped(tmp_path, capsys):
    data = build_folder(tmp_path / "d", {"train": 4, "valid": 2})
    (data / "train" / "1" / "bad\x1b]0;pwned\x07.jpg").write_bytes(b"not a photo")
    run = tmp_path / "run\x1b[2J"
    assert main(["train", str(data), "--save-dir", str(run), "--arch", TINY, "--epochs", "1"]) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out and "\x07" not in out
    assert "run\\x1b[2J" in out  # the save folder, named in the skipped-photos and saved lines


def _train(data, run, *more):
    return main(["train", str(data), "--save-dir", str(run), "--arch", TINY, "--epochs", "1", *more])


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--learning-rate", "1e38"), ("--hidden-units", "20000000"), ("--seed", "18446744073709551616"), ("--seed", "-1")],
)
def test_numbers_too_big_for_training_are_bad_arguments(tmp_path, capsys, flag, value):
    data = build_folder(tmp_path / "d", {"train": 3, "valid": 1})
    assert _train(data, tmp_path / "run", flag, value) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_a_run_that_diverges_stops_and_names_the_learning_rate():
    """A NaN loss went on for every epoch and ended in 'setting the unknown threshold needs finite scores'."""
    from flowerid.training.config import TrainConfig
    from flowerid.training.loop import run_epochs

    fit = TrainConfig(arch=TINY, epochs=2).fit
    with pytest.raises(UsageError, match="diverged in epoch 1") as exc:
        run_epochs(fit, None, [], lambda e: (float("nan"), 0, 1), lambda e: (0.0, 0.0, False), print)
    assert exc.value.setting == "learning_rate"


def test_the_save_folder_cannot_be_among_the_photos(tmp_path, capsys):
    flat = build_folder(tmp_path / "flat", {"x": 4}) / "x"  # one folder per category, no split
    assert _train(flat, flat / "1" / "run") == 2
    assert _train(flat, flat) == 2
    assert "whose photos train reads" in capsys.readouterr().err
    split = build_folder(tmp_path / "split", {"train": 3, "valid": 1})
    assert _train(split, split / "runs" / "a") == 0  # beside the splits: nothing reads it


def test_a_names_file_for_other_categories_is_said(tmp_path, capsys):
    data = build_folder(tmp_path / "d", {"train": 3, "valid": 1}, names=False)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"99": "x", "98": "y"}))
    assert _train(data, tmp_path / "run", "--category-names", str(other)) == 0
    assert "names none of the 3 categories" in capsys.readouterr().out


def test_a_newline_in_the_save_folder_prints_escaped(tmp_path, capsys):
    data = build_folder(tmp_path / "d", {"train": 3, "valid": 1})
    assert _train(data, tmp_path / "nl\ndir") == 0
    out = capsys.readouterr().out
    assert "nl\\ndir" in out and not any(line.startswith("dir") for line in out.splitlines())
