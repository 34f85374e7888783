"""`flowerid add`: new categories and corrections taught to a trained checkpoint, and every bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import flowerid
from flowerid.apps.cli import main
from flowerid.errors import CheckpointError, DataError
from flowerid.model.add import add, read_new_data
from flowerid.model.checkpoint import load_checkpoint, save_checkpoint
from flowerid.model.class_stats import ClassStats
from flowerid.model.info import checkpoint_info, format_info

from ..conftest import CLASS_COLOURS, build_folder, make_photo

YELLOW = (220, 220, 30)


def _new(tmp_path, classes=None, count=4, names=None):
    root = build_folder(tmp_path / "new", {"x": count}, classes or {"20": YELLOW}, names=False) / "x"
    if names:
        (root / "cat_to_name.json").write_text(json.dumps(names))
    return root


def _quiet(_: str) -> None:
    pass


def test_training_stores_the_statistics_add_needs(trained):
    _, result = trained
    ckpt = load_checkpoint(result.checkpoint_path)
    stats = ClassStats.from_state(ckpt["class_stats"], 3, 16)
    assert stats.counts.tolist() == [8, 8, 8]  # every training photo counted, per category
    assert checkpoint_info(result.checkpoint_path)["can_add"] is True


def test_a_new_category_from_four_photos(trained, tmp_path):
    data, result = trained
    out = tmp_path / "out" / "taught.pth"
    res = flowerid.add(result.checkpoint_path, _new(tmp_path, names={"20": "sunflower"}), out, log=_quiet)
    assert res.added == {"20": 4} and res.corrected == {} and res.path == out
    clf = flowerid.load(out)
    assert clf.categories == ["1", "10", "2", "20"] and clf.names[-1] == "sunflower"
    pred = clf.predict(make_photo(YELLOW, 999), top_k=1)[0]
    assert pred.category == "20" and pred.known is True
    old = flowerid.load(result.checkpoint_path)
    for cat, colour in CLASS_COLOURS.items():  # the old categories answer as before
        photo = make_photo(colour, 1000 + int(cat))
        assert clf.predict(photo, top_k=1)[0].category == old.predict(photo, top_k=1)[0].category
    before, after = load_checkpoint(result.checkpoint_path), load_checkpoint(out)
    assert torch.equal(after["head"]["state_dict"]["0.weight"][:3], before["head"]["state_dict"]["0.weight"][:3])
    info = checkpoint_info(out)
    assert info["additions"][0]["added"] == {"20": 4} and info["additions"][0]["method"] == "refit"
    assert "1 added (4 photos: 20)" in format_info(info)


def test_a_correction_adds_photos_to_an_old_category(trained, tmp_path):
    _, result = trained
    new = _new(tmp_path, {"10": CLASS_COLOURS["10"]}, count=3)
    out = tmp_path / "corrected.pth"
    res = add(result.checkpoint_path, new, out, log=_quiet)
    assert res.corrected == {"10": 3} and res.added == {}
    ckpt = load_checkpoint(out)
    assert ckpt["categories"] == ["1", "10", "2"]
    assert ClassStats.from_state(ckpt["class_stats"], 3, 16).counts.tolist() == [8, 11, 8]
    before = load_checkpoint(result.checkpoint_path)["head"]["state_dict"]["0.weight"]
    assert torch.equal(ckpt["head"]["state_dict"]["0.weight"][[0, 2]], before[[0, 2]])  # only row "10" moved
    assert not torch.equal(ckpt["head"]["state_dict"]["0.weight"][1], before[1])


def test_added_twice_keeps_both_records(trained, tmp_path):
    _, result = trained
    (tmp_path / "c").mkdir()
    first = add(result.checkpoint_path, _new(tmp_path), tmp_path / "a" / "one.pth", log=_quiet).path
    second = add(first, _new(tmp_path / "b", {"30": (30, 200, 220)}), tmp_path / "c", log=_quiet).path
    assert second.name == "checkpoint.pth"
    info = checkpoint_info(second)
    assert [list(a["added"]) for a in info["additions"]] == [["20"], ["30"]]
    assert flowerid.load(second).num_classes == 5


def test_unreadable_photos_are_skipped_and_reported(trained, tmp_path):
    _, result = trained
    new = _new(tmp_path)
    (new / "20" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    res = add(result.checkpoint_path, new, tmp_path / "out.pth", log=_quiet)
    assert res.added == {"20": 4} and list(res.skipped) == [str(new / "20" / "broken.jpg")]
    assert load_checkpoint(tmp_path / "out.pth")["additions"][0]["skipped"] == 1


def _refused(trained, tmp_path, new, error=DataError) -> str:
    out = tmp_path / "never.pth"
    with pytest.raises(error) as exc:
        add(trained[1].checkpoint_path, new, out, log=_quiet)
    assert not out.exists() and not list(tmp_path.glob(".never.pth*"))  # nothing written, not even a temp file
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_an_empty_folder_is_refused(trained, tmp_path):
    new = _new(tmp_path)
    (new / "21").mkdir()
    assert "holds no photos" in _refused(trained, tmp_path, new)


def test_a_folder_of_unreadable_photos_is_refused(trained, tmp_path):
    new = _new(tmp_path)
    (new / "22").mkdir()
    (new / "22" / "a.jpg").write_bytes(b"\xff\xd8 broken")
    assert "could be read" in _refused(trained, tmp_path, new)


def test_a_new_name_that_is_an_old_category_is_refused(trained, tmp_path):
    new = _new(tmp_path, {"Pink Primrose": YELLOW})
    message = _refused(trained, tmp_path, new)
    assert "clashes with existing category '1'" in message and "folder named '1'" in message


def test_a_new_id_named_like_an_old_category_is_refused(trained, tmp_path):
    new = _new(tmp_path, names={"20": "globe thistle"})
    assert "existing category '10'" in _refused(trained, tmp_path, new)


def test_an_old_id_given_another_name_is_refused(trained, tmp_path):
    new = _new(tmp_path, {"2": YELLOW}, names={"2": "sunflower"})
    assert "the model calls it 'hard-leaved pocket orchid'" in _refused(trained, tmp_path, new)


def test_a_checkpoint_without_statistics_is_refused_with_how_to_get_them(trained, tmp_path):
    ckpt = load_checkpoint(trained[1].checkpoint_path)
    ckpt.pop("class_stats")
    old = save_checkpoint(ckpt, trained[1].checkpoint_path.parent / "older.pth")
    try:
        with pytest.raises(CheckpointError, match="retrain it with `flowerid train`") as exc:
            add(old, _new(tmp_path), tmp_path / "never.pth", log=_quiet)
        assert "\n" not in str(exc.value) and not (tmp_path / "never.pth").exists()
        assert flowerid.load(old).num_classes == 3  # it still predicts as ever
        assert "retrain to be able to `flowerid add`" in format_info(checkpoint_info(old))
    finally:
        old.unlink()


def test_damaged_statistics_are_a_checkpoint_error(trained, tmp_path):
    ckpt = load_checkpoint(trained[1].checkpoint_path)
    ckpt["class_stats"] = {**ckpt["class_stats"], "means": torch.zeros(2, 16)}
    bad = save_checkpoint(ckpt, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="damaged class statistics"):
        load_checkpoint(bad)


def test_read_new_data_lists_new_and_existing_folders(tmp_path):
    new = _new(tmp_path, {"10": YELLOW, "fresh": YELLOW})
    groups = read_new_data(new, ["1", "10"], ["a", "b"])
    assert [(g.category, g.existing, len(g.paths)) for g in groups] == [("10", True, 4), ("fresh", False, 4)]
    with pytest.raises(DataError, match="not a folder"):
        read_new_data(tmp_path / "missing", ["1"], [None])
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no category folders"):
        read_new_data(tmp_path / "none", ["1"], [None])


def test_a_name_in_another_unicode_composition_is_the_same_category(tmp_path):
    """A Mac writes 'rosé' as 'e' + combining accent (NFD); the model's category was typed as one letter
    (NFC). That folder corrects the category rather than adding a second 'rosé'; two spellings of one
    new name are one new category; a name typed in full-width letters still clashes."""
    nfc, nfd = "ros\u00e9", "rose\u0301"
    new = _new(tmp_path, {nfd: YELLOW, "caf\u00e9": YELLOW, "cafe\u0301": YELLOW})
    groups = read_new_data(new, [nfc, "2"], ["the rose", "b"])
    assert sorted((g.category, g.existing, len(g.paths)) for g in groups) == [("caf\u00e9", False, 8), (nfc, True, 4)]
    with pytest.raises(DataError, match="clashes with existing category"):
        read_new_data(_new(tmp_path / "w", {"\uff34\uff28\uff25 ROSE": YELLOW}), [nfc], ["the rose"])


def test_a_folder_laid_out_for_training_teaches_its_train_and_valid_photos(trained, tmp_path):
    """People give the folder they have: train/ valid/ test/ splits are read as train reads them."""
    new = build_folder(tmp_path / "split", {"train": 4, "val": 2, "test": 3}, {"20": YELLOW}, names=False)
    (new / "cat_to_name.json").write_text(json.dumps({"20": "sunflower"}))
    lines: list[str] = []
    res = flowerid.add(trained[1].checkpoint_path, new, tmp_path / "o.pth", log=lines.append)
    assert res.added == {"20": 6}  # train and val; test is left for measuring
    assert flowerid.load(res.path).names[-1] == "sunflower"
    assert any("laid out for training" in line and "val/" in line for line in lines)
    assert [g.category for g in read_new_data(new, ["1"], [None])] == ["20"]  # not "train", "val", "test"
    one = _new(tmp_path / "one")  # a lone category whose photos sit in folders of their own: still one category
    for i, photo in enumerate(sorted((one / "20").iterdir())):
        (one / "20" / str(2023 + i % 2)).mkdir(exist_ok=True)
        photo.rename(one / "20" / str(2023 + i % 2) / photo.name)
    assert [(g.category, len(g.paths)) for g in read_new_data(one, ["1"], [None])] == [("20", 4)]


def test_the_command_line(trained, tmp_path, capsys):
    new = _new(tmp_path)
    out = tmp_path / "cli.pth"
    assert main(["add", str(trained[1].checkpoint_path), str(new), "--out", str(out), "--method", "imprint"]) == 0
    said = capsys.readouterr().out
    assert "added 1 category" in said and out.exists()
    assert "warning: imprint" in said  # it takes the old categories' photos: said when chosen
    (new / "23").mkdir()
    assert main(["add", str(trained[1].checkpoint_path), str(new), "--out", str(tmp_path / "no.pth")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("flowerid: error:") and "holds no photos" in err and "\n" not in err
    shutil.rmtree(new / "23")
    (tmp_path / "a-file").write_bytes(b"x")  # --out where nothing can be written: one line, not a traceback
    assert main(["add", str(trained[1].checkpoint_path), str(new), "--out", str(tmp_path / "a-file" / "o.pth")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("flowerid: error: cannot write") and "a-file is a file, not a folder" in err
    assert "\n" not in err


def test_an_added_checkpoint_predicts_evaluates_exports_and_says_what_it_is(trained, tmp_path, capsys):
    new = _new(tmp_path)
    out = add(trained[1].checkpoint_path, new, tmp_path / "t.pth", log=_quiet).path
    assert main(["evaluate", str(out), str(new), "--out", str(tmp_path / "eval"), "--no-figures"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["top1"] == 1.0
    assert main(["export", str(out), "--out", str(tmp_path / "export")]) == 0
    assert main(["predict", str(new / "20" / "img_000.jpg"), "--checkpoint", str(out), "--json"]) == 0
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert '"category": "20"' in text and "added" in text


def test_stats_update_equals_fitting_on_all_photos():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)) + np.repeat(np.eye(3, 5) * 4, 20, axis=0)
    y = np.repeat(np.arange(3), 20)
    whole = ClassStats.fit(x, y, 3, x)
    part = ClassStats.fit(x[:50], y[:50], 3, x[:50])
    unit_part = part.means  # not used by the detector; its unit means come from raw rows
    from flowerid.training.unknown import class_means

    det_means = class_means(x[:50], y[:50], 3)
    updated, unit_mean = part.with_photos(2, x[50:], x[50:], det_means[2])
    np.testing.assert_allclose(updated.means, whole.means, atol=1e-9)
    assert updated.counts.tolist() == [20, 20, 20] and unit_part.shape == (3, 5)
    np.testing.assert_allclose(unit_mean, class_means(x, y, 3)[2], atol=1e-6)
    np.testing.assert_allclose(updated.unit_norms, whole.unit_norms, atol=1e-9)
    grown, _ = whole.with_photos(3, x[:4] + 10, x[:4] + 10, None)
    assert grown.counts.tolist() == [20, 20, 20, 4] and np.allclose(grown.means[3], (x[:4] + 10).mean(0))


def test_ctrl_c_during_add_writes_nothing_and_says_so(trained, tmp_path, capsys, monkeypatch):
    import flowerid.backbones.features as features

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(features, "extract_features", interrupted)
    out = tmp_path / "out" / "never.pth"
    assert main(["add", str(trained[1].checkpoint_path), str(_new(tmp_path)), "--out", str(out)]) == 130
    assert "interrupted; no checkpoint was written" in capsys.readouterr().err
    assert not out.parent.exists() or not any(out.parent.iterdir())
