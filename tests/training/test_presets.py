"""Presets, augmented views and calibrated probabilities (the accuracy work)."""

import numpy as np
import pytest
import torch

from flowerid.apps.cli import build_parser
from flowerid.backbones import get_spec
from flowerid.backbones.engines import load_backbone
from flowerid.backbones.features import extract_features
from flowerid.data.augment import Augment, view_seed
from flowerid.errors import UsageError
from flowerid.model.checkpoint import load_checkpoint
from flowerid.model.predictor import Classifier
from flowerid.training.calibrate import fit_temperature, scale_logits
from flowerid.training.config import PRESETS, TrainConfig
from flowerid.training.run import train

from ..conftest import TINY, make_photo


def test_presets_name_real_backbones_and_flags_override_them():
    for preset in PRESETS.values():
        assert get_spec(preset.arch).offline
    cfg = TrainConfig.from_preset("fast")
    assert (cfg.arch, cfg.views, cfg.preset) == (PRESETS["fast"].arch, PRESETS["fast"].views, "fast")
    cfg = TrainConfig.from_preset("best", arch=TINY, epochs=None)
    assert cfg.arch == TINY and cfg.epochs == PRESETS["best"].epochs and cfg.views == PRESETS["best"].views
    best = PRESETS["best"]
    assert (cfg.learning_rate, cfg.weight_decay) == (best.learning_rate, best.weight_decay)
    assert TrainConfig.from_preset("best", learning_rate=0.02).learning_rate == 0.02
    assert TrainConfig().learning_rate == PRESETS["default"].learning_rate  # the plain config is the default preset
    with pytest.raises(UsageError, match="fast, default, best"):
        TrainConfig.from_preset("turbo")
    with pytest.raises(UsageError, match="colour"):
        TrainConfig.from_preset("fast", colour="red")


def test_full_finetune_drops_the_presets_tuned_stages_but_refuses_them_given_by_hand():
    cfg = TrainConfig.from_preset("default", full_finetune=True)
    assert cfg.mode == "full" and (cfg.tune_stages, cfg.views) == (0, 0)
    assert TrainConfig.from_preset("default", full_finetune=True, tune_stages=1).tune_stages == 1  # train() refuses


def test_cli_preset_and_overrides():
    args = build_parser().parse_args(["train", "data", "--preset", "best", "--views", "0"])
    assert args.preset == "best" and args.views == 0 and args.arch is None and args.learning_rate is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "data", "--preset", "turbo"])


def test_augmented_views_are_repeatable_and_differ(tmp_path):
    photo = tmp_path / "p.jpg"
    make_photo((200, 40, 40), 0, size=(120, 90)).save(photo)
    prep = get_spec(TINY).preprocessing
    aug = Augment()
    a = aug.view(prep, photo, view_seed(photo, 1))
    assert a.shape == (3, prep.crop_size, prep.crop_size) and a.dtype == np.float32
    np.testing.assert_array_equal(a, aug.view(prep, photo, view_seed(photo, 1)))
    assert not np.allclose(a, aug.view(prep, photo, view_seed(photo, 2)))
    assert view_seed("/a/x.jpg", 1) == view_seed("/b/x.jpg", 1)  # moving the data keeps the views


def test_views_are_cached_apart_from_the_plain_photo(image_folder):
    paths = sorted((image_folder / "train" / "1").iterdir())
    backbone = load_backbone(get_spec(TINY), "cpu")
    plain = extract_features(paths, backbone, num_workers=0)
    view1 = extract_features(paths, backbone, num_workers=0, augment=Augment(), view=1)
    assert plain.computed == view1.computed == len(paths)
    assert not np.allclose(plain.features, view1.features)
    again = extract_features(paths, backbone, num_workers=0, augment=Augment(), view=1)
    assert again.computed == 0
    np.testing.assert_array_equal(again.features, view1.features)
    with pytest.raises(ValueError):
        extract_features(paths, backbone, augment=None, view=1)


def test_training_with_views_adds_rows_not_photos(image_folder, tmp_path):
    cfg = TrainConfig(arch=TINY, epochs=2, views=2, num_workers=0)
    result = train(image_folder, tmp_path, cfg, log=lambda s: None)
    info = load_checkpoint(result.checkpoint_path)["training"]
    assert info["train_images"] == 3 * 8 and info["train_rows"] == 3 * 8 * 3 and info["views"] == 2


def test_temperature_is_recovered_from_labels_drawn_at_a_known_one():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(0, 3, size=(4000, 10)))
    probs = torch.softmax(logits / 2.5, 1).numpy()
    y = torch.tensor([rng.choice(10, p=p / p.sum()) for p in probs])
    assert fit_temperature(logits, y).value == pytest.approx(2.5, rel=0.1)


def test_scaling_the_head_scales_its_logits():
    head = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(5, 4)
    scaled = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    scaled.load_state_dict(scale_logits(head.state_dict(), 0.5))
    torch.testing.assert_close(scaled(x), head(x) * 0.5)


def test_calibration_keeps_the_ranking_and_is_recorded(image_folder, tmp_path):
    raw = train(image_folder, tmp_path / "raw", TrainConfig(arch=TINY, epochs=5, calibrate=False), log=lambda s: None)
    cal = train(image_folder, tmp_path / "cal", TrainConfig(arch=TINY, epochs=5), log=lambda s: None)
    t = cal.metrics["temperature"]
    assert t > 0 and "temperature" not in raw.metrics
    assert cal.metrics["valid_loss"] <= cal.metrics["valid_loss_uncalibrated"] + 1e-6
    photos = sorted((image_folder / "valid" / "1").iterdir())
    a = Classifier.load(raw.checkpoint_path, device="cpu")
    b = Classifier.load(cal.checkpoint_path, device="cpu")
    for p in photos:
        pa = a.predict_proba(a.preprocess(p)[None])[0]
        pb = b.predict_proba(b.preprocess(p)[None])[0]
        assert np.argmax(pa) == np.argmax(pb)
        logits = np.log(pa)
        expected = np.exp(logits / t) / np.exp(logits / t).sum()
        np.testing.assert_allclose(pb, expected, atol=1e-5)


def test_a_perfectly_separated_valid_split_leaves_probabilities_unscaled(image_folder, tmp_path):
    """No mistakes on valid: no temperature can be learnt; the fit once collapsed to 0.047 here."""
    lines: list[str] = []
    m = train(image_folder, tmp_path, TrainConfig(arch=TINY, epochs=20, learning_rate=0.05), log=lines.append).metrics
    assert m["valid_acc"] == 1.0
    assert m["temperature"] == 1.0 and m["temperature_identified"] is False
    assert any("left unscaled" in line and "no mistakes" in line for line in lines)


def test_a_presets_tuned_stages_belong_to_its_backbone():
    """`--arch vgg16` (the heritage train.py) must still train, frozen, under a preset that tunes Lite0."""
    tuned = TrainConfig.from_preset("default")
    assert tuned.tune_stages == PRESETS["default"].tune_stages > 0 and tuned.mode == "tuned"
    assert TrainConfig.from_preset("default", arch="vgg16").tune_stages == 0
    assert TrainConfig.from_preset("default", arch=tuned.arch).tune_stages == tuned.tune_stages
    assert TrainConfig.from_preset("default", arch="efficientnet_lite2", tune_stages=2).tune_stages == 2
    assert TrainConfig().mode == "frozen"  # a plain config suits any backbone
