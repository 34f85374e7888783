"""Distillation (--teacher, the `distilled` preset): a tuned network learns a trained model's probabilities."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import flowerid
from flowerid._io import file_sha256
from flowerid.apps.cli import main
from flowerid.errors import DataError, UsageError
from flowerid.training.config import TrainConfig
from flowerid.training.loop import distill_loss
from flowerid.training.run import train

from ..conftest import build_folder
from .test_finetune import TINY_EFFNET, TINY_ENSEMBLE, effnet, effnet_pair  # noqa: F401 (fixtures)


def _student(teacher: str, **kw) -> TrainConfig:
    settings = {
        "arch": TINY_EFFNET,
        "tune_stages": 1,
        "epochs": 2,
        "learning_rate": 0.01,
        "num_workers": 0,
        "teacher": teacher,
    }
    return TrainConfig.from_preset("distilled", **{**settings, **kw})


def test_distill_loss_is_hintons_at_any_temperature_and_mixing():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    hard = F.cross_entropy(s, y)
    for temp, alpha in ((1.0, 1.0), (3.0, 0.5), (0.5, 0.0)):
        p_t = F.softmax(t / temp, 1)
        kl = (p_t * (p_t.log() - F.log_softmax(s / temp, 1))).sum(1).mean()
        want = alpha * temp**2 * kl + (1 - alpha) * hard
        torch.testing.assert_close(distill_loss(s, t, temp, alpha, hard), want)
    assert distill_loss(t, t, 2.0, 1.0, hard).item() == pytest.approx(0.0, abs=1e-6)  # matched: nothing to learn


@pytest.mark.usefixtures("effnet")
def test_a_student_learns_its_teacher_and_records_it(trained, tmp_path):
    data, teacher = trained  # a frozen tiny model on the same three categories
    result = train(data, tmp_path / "run", _student(str(teacher.checkpoint_path), views=1), log=lambda s: None)
    m = result.metrics
    t = m["teacher"]
    assert t["digest"] == file_sha256(teacher.checkpoint_path) and t["checkpoint"] == "checkpoint.pth"
    assert t["valid_acc"] == pytest.approx(teacher.metrics["valid_acc"]) and t["backbone"] == "tiny_test"
    assert t["preset"] is None and t["cv_top1"] is None  # a recipe set by hand has no measured figure
    assert "temperature" in m and "unknown" in m and len(m["history"]) == 2
    ck = torch.load(result.checkpoint_path, weights_only=True)
    assert ck["training"]["train_rows"] == 2 * ck["training"]["train_images"] == 2 * 24  # the photos and a view
    assert ck["backbone"]["name"] == TINY_EFFNET  # an ordinary checkpoint of the student's network
    photos = sorted((data / "valid" / "2").iterdir())
    assert len(flowerid.load(result.checkpoint_path, device="cpu").predict_many(photos, top_k=1)) == len(photos)


def test_the_teachers_logits_are_its_raw_ones_and_cached_per_view(trained, monkeypatch, tmp_path):
    from flowerid.backbones import features
    from flowerid.data.folders import load_dataset
    from flowerid.model.checkpoint import load_checkpoint, save_checkpoint
    from flowerid.model.predictor import softmax
    from flowerid.training import distill
    from flowerid.training.calibrate import scale_logits

    data, teacher = trained
    split = load_dataset(data).valid
    cfg = TrainConfig(num_workers=0)
    unscaled, _ = distill.Teacher(load_checkpoint(teacher.checkpoint_path), "cpu", "auto").logits(
        split, 0, cfg, "valid"
    )
    ck = load_checkpoint(teacher.checkpoint_path)  # the same teacher calibrated at temperature 0.5
    ck["head"]["state_dict"] = scale_logits(ck["head"]["state_dict"], 2.0)
    ck["metrics"].update(temperature=0.5, temperature_identified=True)
    save_checkpoint(ck, tmp_path / "calibrated.pth")
    clf = flowerid.load(tmp_path / "calibrated.pth", device="cpu")
    calibrated = distill.Teacher(load_checkpoint(tmp_path / "calibrated.pth"), "cpu", "auto")
    assert calibrated.parts is None  # a frozen teacher runs as a whole network
    raw, ok = calibrated.logits(split, 0, cfg, "valid")
    assert ok.all()
    np.testing.assert_allclose(raw, unscaled, rtol=1e-4, atol=1e-4)  # the calibration undone
    probs = clf.predict_proba(np.stack([clf.preprocess(p) for p in split.paths]))
    np.testing.assert_allclose(softmax(raw / 0.5), probs, atol=1e-5)
    view1, _ = calibrated.logits(split, 1, cfg, "valid")
    assert not np.allclose(view1, raw)  # an augmented view is another photo to the teacher
    calls = []
    real = features.photo_loader
    monkeypatch.setattr(features, "photo_loader", lambda *a, **k: calls.append(1) or real(*a, **k))
    again, _ = calibrated.logits(split, 1, cfg, "valid")
    assert not calls and np.allclose(again, view1, atol=1e-3)  # from the cache, no photo read again


@pytest.mark.usefixtures("effnet_pair")
def test_what_distillation_refuses_says_how_to_fix_it(trained, tmp_path):
    data, teacher = trained
    with pytest.raises(UsageError, match="--preset best"):
        train(data, tmp_path / "a", TrainConfig.from_preset("distilled", num_workers=0), log=lambda s: None)
    with pytest.raises(UsageError, match="not a checkpoint file"):
        train(data, tmp_path / "b", _student(str(tmp_path / "missing.pth")), log=lambda s: None)
    with pytest.raises(UsageError, match="single EfficientNet"):
        train(data, tmp_path / "c", _student(str(teacher.checkpoint_path), tune_stages=0), log=lambda s: None)
    with pytest.raises(UsageError, match="single EfficientNet"):
        train(data, tmp_path / "e", _student(str(teacher.checkpoint_path), arch=TINY_ENSEMBLE), log=lambda s: None)
    two = {"1": (200, 0, 0), "2": (0, 200, 0)}
    other = build_folder(tmp_path / "other", {"train": 4, "valid": 2}, two, names=False)
    with pytest.raises(DataError, match="other categories"):
        train(other, tmp_path / "d", _student(str(teacher.checkpoint_path)), log=lambda s: None)
    with pytest.raises(UsageError, match="distill_alpha"):
        _student(str(teacher.checkpoint_path), distill_alpha=1.5).check()


@pytest.mark.usefixtures("effnet")
def test_cli_teacher_flag(trained, tmp_path, capsys):
    data, teacher = trained
    argv = ["train", str(data), "--preset", "distilled", "--arch", TINY_EFFNET, "--tune-stages", "1"]
    argv += ["--teacher", str(teacher.checkpoint_path), "--views", "0", "--epochs", "1", "--distill-temperature", "2"]
    assert main([*argv, "--save-dir", str(tmp_path / "run")]) == 0
    ck = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert ck["training"]["distill_temperature"] == 2.0 and ck["metrics"]["teacher"]["backbone"] == "tiny_test"
    assert main(["train", str(data), "--preset", "distilled", "--save-dir", str(tmp_path / "x")]) != 0
    assert "--teacher" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "run" / "checkpoint.pth")]) == 0
    assert re.search(r"taught by +tiny_test \(sha256 \w+…, valid top-1", capsys.readouterr().out)


@pytest.mark.usefixtures("effnet_pair")
def test_cross_validation_trains_the_teacher_inside_each_fold(image_folder, isolated_cache, monkeypatch):
    from flowerid.training import distill_cv
    from flowerid.training.crossval import cross_validate

    tcfg = TrainConfig(arch=TINY_ENSEMBLE, tune_stages=1, epochs=1, learning_rate=0.01, num_workers=0)
    monkeypatch.setattr(distill_cv, "teacher_recipe", lambda cfg: tcfg)  # the tiny ensemble stands in for best
    cfg = _student("best", views=1, epochs=1)
    lines: list[str] = []
    r = cross_validate(image_folder, cfg, log=lines.append, k=2)
    assert r.logits.shape == (3 * (8 + 4), 3) and sorted(np.bincount(r.folds)) == [18, 18]
    assert [line.split(":")[0] for line in lines if "held-out" in line] == ["fold 1/2", "fold 2/2"]
    kept = sorted(p.name for p in (isolated_cache / "teachers").rglob("*") if p.is_file())
    members = [f"fold{f}-{m}.pt" for f in (0, 1) for m in (TINY_EFFNET, TINY_EFFNET + "_big")]
    assert kept == sorted([*members, *(f"fold{f}-view{v}.npy" for f in (0, 1) for v in (0, 1))])
    again: list[str] = []  # the teachers kept on disk: no member trains again
    r2 = cross_validate(image_folder, cfg, log=again.append, k=2)
    assert np.allclose(r2.logits, r.logits, atol=1e-4)
    assert [line for line in again if "epoch" in line or re.search(r"teacher \S+, ", line)] == []
    assert len([line for line in again if "its teacher's top-1" in line]) == 2
    monkeypatch.undo()
    with pytest.raises(DataError, match="inside each fold"):
        cross_validate(image_folder, _student("/some/checkpoint.pth"), k=2)


@pytest.mark.usefixtures("effnet")
def test_the_build_script_names_the_teacher_not_where_it_lay(trained, tmp_path):
    from flowerid.model.checkpoint import load_checkpoint

    from ..model.test_shipped import _build_script

    data, teacher = trained
    out = tmp_path / "model.pth"
    argv = ["--data", str(data), "--out", str(out), "--preset", "distilled", "--teacher", str(teacher.checkpoint_path)]
    for setting in (f"arch={TINY_EFFNET}", "tune_stages=1", "epochs=1", "views=0", "num_workers=0"):
        argv += ["--set", setting]
    assert _build_script().main(argv) == 0
    ck = load_checkpoint(out)
    assert ck["training"]["teacher"] == "tiny_test on flowers102, train/valid split"
    assert str(tmp_path) not in str(ck["training"]) and ck["metrics"]["teacher"]["digest"]
    assert (tmp_path / "model-backbone.pth").is_file()  # the tuned stage beside it, as the built-in model ships


@pytest.mark.usefixtures("effnet_pair")
def test_a_tuned_teacher_gives_its_whole_networks_logits_from_cached_fronts(image_folder, tmp_path):
    """The `best` teacher's route: pretrained fronts' cached activations through its tuned tails and averaged
    head, the same logits (to float16 rounding) as the whole tuned network run on the photos."""
    from flowerid.data.folders import load_dataset
    from flowerid.model.checkpoint import load_checkpoint
    from flowerid.training.distill import Teacher

    cfg = TrainConfig(arch=TINY_ENSEMBLE, tune_stages=1, epochs=2, learning_rate=0.01, num_workers=0)
    run = train(image_folder, tmp_path / "t", cfg, log=lambda s: None)
    ck = load_checkpoint(run.checkpoint_path)
    fast = Teacher(ck, "cpu", "torch")
    assert fast.parts is not None and len(fast.parts) == 2
    whole = Teacher(ck, "cpu", "torch")
    whole.parts = None
    split = load_dataset(image_folder).valid
    for view in (0, 1):
        a, ok_a = fast.logits(split, view, cfg, "valid")
        b, ok_b = whole.logits(split, view, cfg, "valid")
        assert ok_a.all() and ok_b.all()
        np.testing.assert_allclose(a, b, atol=2e-2 * np.abs(b).max())
        assert (a.argmax(1) == b.argmax(1)).all()
