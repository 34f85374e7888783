"""Training on the folders people bring: a held-out valid split recorded in the checkpoint, and a preset's
recipe fitted to a small or unbalanced set."""

import dataclasses

import numpy as np
import pytest
import torch

from flowerid.apps.cli import main
from flowerid.model.checkpoint import load_checkpoint
from flowerid.training.config import MIN_STEPS, TUNE_FROM, TrainConfig, adapt_to_data
from flowerid.training.loop import Stepper
from flowerid.training.run import train

from ..conftest import CLASS_COLOURS, TINY, build_folder


def test_a_flat_folder_trains_and_its_split_is_recorded(tmp_path, capsys):
    build_folder(tmp_path, {"photos": 10}, names=False)
    lines: list[str] = []
    cfg = TrainConfig(arch=TINY, epochs=2, num_workers=0)
    result = train(tmp_path / "photos", tmp_path / "run", cfg, log=lines.append)
    split = load_checkpoint(result.checkpoint_path)["training"]["split"]
    assert split["valid_fraction"] == 0.2 and split["seed"] == 0 and split["held_out_of"] == "."
    assert split["per_category"] == {c: [8, 2] for c in CLASS_COLOURS} and split["valid"] == 6
    assert result.metrics["history"][-1] and len(result.metrics["history"]) == 2
    said = [s for s in lines if s.startswith("no valid folder")]
    assert said and split["valid_digest"][:12] in said[0] and "24 train, 6 valid" in said[0]
    assert main(["info", str(result.checkpoint_path)]) == 0
    assert f"held out of .: 20% of each category, seed 0, 6 photos (list digest {split['valid_digest'][:12]})" in (
        capsys.readouterr().out
    )
    again = train(tmp_path / "photos", tmp_path / "again", cfg, log=lambda s: None)
    assert load_checkpoint(again.checkpoint_path)["training"]["split"] == split  # the same photos every run


def test_valid_fraction_from_the_command_line(tmp_path, capsys):
    build_folder(tmp_path, {"train": 10, "test": 2}, names=False)
    args = ["train", str(tmp_path), "--arch", TINY, "--epochs", "1", "--save-dir", str(tmp_path / "run")]
    assert main([*args, "--valid-fraction", "0.5"]) == 0
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pth")
    assert ck["training"]["split"]["per_category"]["1"] == [5, 5]
    assert ck["training"]["layout"] == "train train/, valid (held out of train), test test/"
    assert main([*args, "--valid-fraction", "0.9"]) == 2
    assert "--valid-fraction must be above 0 and at most 0.5" in capsys.readouterr().err


def test_given_valid_folder_records_no_split(trained):
    _, result = trained
    assert load_checkpoint(result.checkpoint_path)["training"]["split"] is None


def test_a_preset_takes_enough_steps_on_few_photos():
    cfg = TrainConfig.from_preset("default")
    small, said = adapt_to_data(cfg, [8, 8])  # 16 photos: a frozen backbone, batches of 16, one step an epoch
    assert small.tune_stages == 0 and small.batch_size == 16 and small.epochs == MIN_STEPS
    assert len(said) == 2 and "16 training photos" in said[0] and "100 epochs of batches of 16" in said[1]
    assert adapt_to_data(cfg, [TUNE_FROM // 2, TUNE_FROM // 2]) == (cfg, [])  # enough to tune, as the preset does
    big, said = adapt_to_data(cfg, [3000, 3000])
    assert (big, said) == (cfg, [])
    fast = TrainConfig.from_preset("fast")
    middle, _ = adapt_to_data(fast, [100, 100])  # smaller batches give the steps without more epochs
    assert middle.epochs == fast.epochs and middle.batch_size == 40 and middle.epochs * 200 // 40 >= MIN_STEPS
    by_hand = dataclasses.replace(cfg, preset=None)
    assert adapt_to_data(by_hand, [8, 8]) == (by_hand, [])
    assert adapt_to_data(TrainConfig(), [8, 8]) == (TrainConfig(), [])  # settings made by hand stay
    assert adapt_to_data(TrainConfig.from_preset("default", adapt=False), [8, 8])[0].epochs == cfg.epochs
    given = TrainConfig.from_preset("default", epochs=3)  # epochs given by hand are kept
    assert not given.adapt and adapt_to_data(given, [8, 8])[0].epochs == 3
    assert not TrainConfig.from_preset("default", tune_stages=1).adapt
    assert TrainConfig.from_preset("default", epochs=3, adapt=True).adapt


def test_an_unbalanced_set_keeps_the_plain_loss_unless_asked():
    cfg = TrainConfig.from_preset("default")
    assert not adapt_to_data(cfg, [400, 40])[0].balance_classes  # measured: balancing costs top-1
    assert adapt_to_data(dataclasses.replace(cfg, balance_classes=True), [400, 40])[0].balance_classes


def test_class_weights_make_each_category_weigh_alike():
    y = torch.tensor([0] * 30 + [1] * 10 + [2] * 20)
    w = Stepper.class_weights(y, 3, TrainConfig(balance_classes=True))
    counts = torch.bincount(y).float()
    assert torch.allclose(w * counts, torch.full((3,), 20.0))  # n / C each
    assert Stepper.class_weights(y, 3, TrainConfig()) is None
    # A batch with a common photo right and a rare one wrong: the weighted loss leans towards the rare one's.
    losses = []
    for weight in (None, w):
        head = torch.nn.Linear(3, 3)
        stepper = Stepper([list(head.parameters())], [0.0], TrainConfig(label_smoothing=0.0), 2, weight)
        logits = torch.tensor([[4.0, 0.0, 0.0], [4.0, 0.0, 0.0]], requires_grad=True)
        losses.append(stepper(logits, torch.tensor([0, 1]))[0] / 2)
    plain, weighted = losses
    right, wrong = torch.nn.functional.cross_entropy(
        torch.tensor([[4.0, 0, 0]] * 2), torch.tensor([0, 1]), reduction="none"
    )
    assert plain == pytest.approx(float(right + wrong) / 2, rel=1e-5)
    assert weighted == pytest.approx(float(w[0] * right + w[1] * wrong) / float(w[0] + w[1]), rel=1e-5)


def test_balanced_training_on_an_unbalanced_folder(tmp_path):
    build_folder(tmp_path, {"train": 12, "valid": 3}, classes={"1": CLASS_COLOURS["1"]}, names=False)
    build_folder(tmp_path, {"train": 3, "valid": 3}, classes={"2": CLASS_COLOURS["2"]}, names=False)
    lines: list[str] = []
    cfg = TrainConfig.from_preset("default", arch=TINY, learning_rate=0.02, num_workers=0, balance_classes=True)
    result = train(tmp_path, tmp_path / "run", cfg, log=lines.append)
    training = load_checkpoint(result.checkpoint_path)["training"]
    assert training["balance_classes"] is True and training["epochs"] > cfg.epochs
    assert any(s.startswith("small or unbalanced set: ") and "epochs of batches of 16" in s for s in lines)
    assert result.metrics["valid_acc"] == pytest.approx(1.0)


def test_photos_in_every_common_format_train(tmp_path):
    """PNG, WebP, GIF, TIFF, greyscale, CMYK, palette, 16-bit and transparent photos all reach the model."""

    from flowerid.data.images import load_image

    from ..conftest import make_photo

    modes = [("L", "jpg"), ("CMYK", "jpg"), ("P", "png"), ("RGBA", "webp"), ("RGB", "webp"), ("LA", "png")]
    modes += [("I;16", "png"), ("1", "png"), ("P", "gif"), ("CMYK", "tif")]
    for cat, colour in CLASS_COLOURS.items():
        (tmp_path / "photos" / cat).mkdir(parents=True)
        for i, (mode, ext) in enumerate(modes):
            make_photo(colour, 100 * i + len(cat)).convert(mode).save(tmp_path / "photos" / cat / f"{i}.{ext}")
    cmyk = tmp_path / "photos" / "1" / "1.jpg"  # a CMYK JPEG keeps its colours (not inverted)
    assert abs(np.asarray(load_image(cmyk), dtype=float).mean(axis=(0, 1)) - CLASS_COLOURS["1"]).max() < 12
    result = train(tmp_path / "photos", tmp_path / "run", TrainConfig(arch=TINY, epochs=2, num_workers=0), log=print)
    assert result.skipped == {}
    training = load_checkpoint(result.checkpoint_path)["training"]
    assert training["train_images"] + training["valid_images"] == 3 * len(modes)
