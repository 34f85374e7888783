"""Partial fine-tuning (--tune-stages): the last stages of an EfficientNet train with the head."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

import flowerid
from flowerid.apps.cli import main
from flowerid.backbones import register_backbone
from flowerid.errors import UsageError
from flowerid.training.config import TrainConfig
from flowerid.training.run import train
from flowerid.training.unknown import class_means

from ..conftest import TINY, tiny_spec

TINY_EFFNET = "tiny_effnet_test"


def _tiny_effnet():
    import timm

    torch.manual_seed(99)  # the same random weights every build, like a pretrained file
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()


def effnet_spec():
    """The tiny test backbone's preprocessing on a random EfficientNet-Lite0, the network tuning needs."""
    return dataclasses.replace(
        tiny_spec(),
        name=TINY_EFFNET,
        arch="tf_efficientnet_lite0",
        num_features=1280,
        factory=_tiny_effnet,
        anatomy="efficientnet",
    )


@pytest.fixture
def effnet():
    spec = effnet_spec()
    register_backbone(spec, replace=True)
    return spec


def _cfg(**kw) -> TrainConfig:
    settings = {"arch": TINY_EFFNET, "tune_stages": 1, "epochs": 3, "learning_rate": 0.01, "num_workers": 0}
    return TrainConfig.from_preset("fast", **{**settings, **kw})


def test_tuned_run_saves_its_backbone_and_predicts_from_anywhere(effnet, image_folder, tmp_path):
    result = train(image_folder, tmp_path / "run", _cfg(), log=lambda s: None)
    weights = tmp_path / "run" / "backbone.pth"
    assert result.checkpoint_path.exists() and weights.exists()
    m = result.metrics
    assert len(m["history"]) == 3 and 1 <= m["best_epoch"] <= 3 and "temperature" in m and "test_acc" in m

    tuned = torch.load(weights, weights_only=True)
    pristine = _tiny_effnet().state_dict()
    last = len(_tiny_effnet().blocks) - 1
    changed = {k for k in pristine if not torch.equal(pristine[k], tuned[k])}
    assert changed and all(k.startswith((f"blocks.{last}.", "conv_head.")) for k in changed), changed
    assert not any(k.startswith("bn2.") or ".bn" in k for k in changed)  # BatchNorm keeps its statistics

    # The run folder moves as a whole: the checkpoint finds backbone.pth beside itself.
    moved = shutil.move(str(tmp_path / "run"), str(tmp_path / "elsewhere"))
    photos = sorted((image_folder / "valid" / "10").iterdir())
    by_torch = flowerid.load(f"{moved}/checkpoint.pth", device="cpu", engine="torch").predict_many(photos, top_k=3)
    by_onnx = flowerid.load(f"{moved}/checkpoint.pth", device="cpu", engine="onnx").predict_many(photos, top_k=3)
    for a, b in zip(by_torch, by_onnx, strict=True):
        assert [p.category for p in a] == [p.category for p in b]
        np.testing.assert_allclose([p.probability for p in a], [p.probability for p in b], atol=1e-4)
        assert a[0].known == b[0].known and a[0].unknown_score == pytest.approx(b[0].unknown_score, abs=1e-3)

    # The unknown-photo detector was fitted on the tuned network's features (the tail run on the
    # cached float16 activations), which are what predict computes from the photos.
    clf = flowerid.load(f"{moved}/checkpoint.pth", device="cpu")
    train_photos = sorted(p for c in ("1", "10", "2") for p in (image_folder / "train" / c).iterdir())
    feats = clf.backbone.engine(np.stack([clf.preprocess(p) for p in train_photos]))
    np.testing.assert_allclose(clf.unknown.means, class_means(feats, np.repeat([0, 1, 2], 8), 3), atol=2e-3)


def test_the_checkpoint_refuses_a_swapped_backbone_file(effnet, image_folder, tmp_path):
    result = train(image_folder, tmp_path / "run", _cfg(epochs=1), log=lambda s: None)
    torch.save(_tiny_effnet().state_dict(), tmp_path / "run" / "backbone.pth")  # the untuned weights
    with pytest.raises(flowerid.CheckpointError, match="not the ones"):
        flowerid.load(result.checkpoint_path, device="cpu", engine="torch")


def test_what_cannot_be_tuned_is_a_usage_error(effnet, image_folder, tmp_path):
    with pytest.raises(UsageError, match="EfficientNet"):
        train(image_folder, tmp_path / "a", _cfg(arch=TINY), log=lambda s: None)
    with pytest.raises(UsageError, match="0 \\(frozen\\) to 7"):
        train(image_folder, tmp_path / "b", _cfg(tune_stages=8), log=lambda s: None)
    with pytest.raises(UsageError, match="--views"):
        train(image_folder, tmp_path / "c", _cfg(views=1), log=lambda s: None)


def test_cli_flag(effnet, image_folder, tmp_path, capsys):
    args = [
        "train",
        str(image_folder),
        "--save-dir",
        str(tmp_path / "run"),
        "--arch",
        TINY_EFFNET,
        "--tune-stages",
        "1",
        "--epochs",
        "1",
        "--preset",
        "fast",
    ]
    assert main(args) == 0
    assert "activations before the last 1 stage(s)" in capsys.readouterr().out
    assert main([*args[:-4], "--tune-stages", "-1"]) == 2


def test_full_finetune_trains_every_layer_and_predicts(effnet, image_folder, tmp_path):
    cfg = _cfg(tune_stages=0, full_finetune=True, epochs=2, batch_size=8)
    result = train(image_folder, tmp_path / "run", cfg, log=lambda s: None)
    assert len(result.metrics["history"]) == 2 and "temperature" in result.metrics and "test_acc" in result.metrics
    tuned = torch.load(tmp_path / "run" / "backbone.pth", weights_only=True)
    pristine = _tiny_effnet().state_dict()
    assert not torch.equal(tuned["conv_stem.weight"], pristine["conv_stem.weight"])  # the very first layer too
    assert not torch.equal(tuned["bn1.running_mean"], pristine["bn1.running_mean"])  # BatchNorm trains here
    photos = sorted((image_folder / "valid" / "2").iterdir())
    by_torch = flowerid.load(result.checkpoint_path, device="cpu", engine="torch").predict_many(photos, top_k=3)
    by_onnx = flowerid.load(result.checkpoint_path, device="cpu", engine="onnx").predict_many(photos, top_k=3)
    for a, b in zip(by_torch, by_onnx, strict=True):
        np.testing.assert_allclose([p.probability for p in a], [p.probability for p in b], atol=1e-4)
    with pytest.raises(UsageError, match="drop --views"):
        train(image_folder, tmp_path / "x", _cfg(full_finetune=True), log=lambda s: None)  # tune_stages=1 too


def test_activations_are_cached_so_a_rerun_computes_only_the_tuned_part(effnet, image_folder, tmp_path, isolated_cache):
    first = train(image_folder, tmp_path / "a", _cfg(epochs=1, device="cpu"), log=lambda s: None)  # deterministic
    assert first.metrics["features_computed"] == 3 * (8 + 4)  # train and valid photos, once
    entries = sorted((isolated_cache / "activations").rglob("*.f16"))
    assert len(entries) == 3 * (8 + 4)
    entries[0].write_bytes(entries[0].read_bytes()[:-3])  # a damaged entry is recomputed, not trusted
    again = train(image_folder, tmp_path / "b", _cfg(epochs=1, device="cpu"), log=lambda s: None)
    assert again.metrics["features_computed"] == 1
    a = torch.load(tmp_path / "a" / "backbone.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "backbone.pth", weights_only=True)
    for k in a:  # the same activations (float16 either way) give the same tuned network
        torch.testing.assert_close(a[k], b[k])


def test_the_last_epoch_is_kept_unless_asked_for_the_best_on_valid(effnet, image_folder, tmp_path):
    last = train(image_folder, tmp_path / "a", _cfg(epochs=3), log=lambda s: None).metrics
    assert last["best_epoch"] == 3 and last["valid_acc"] == last["history"][2]["valid_acc"]
    best = train(image_folder, tmp_path / "b", _cfg(epochs=3, keep_best_epoch=True), log=lambda s: None).metrics
    accs = [h["valid_acc"] for h in best["history"]]
    assert best["valid_acc"] == max(accs) and accs[best["best_epoch"] - 1] == max(accs)


def test_convolutions_and_their_frozen_batchnorms_train_fused_with_the_same_function_and_gradients():
    from flowerid.backbones.anatomy import ANATOMIES, split_backbone
    from flowerid.backbones.surgery import ConvFrozenBN, freeze_batchnorm, fused_conv_bn

    def tail_and_input():
        _, tail = split_backbone(_tiny_effnet(), effnet_spec(), 1)
        g = torch.Generator().manual_seed(0)
        for m in tail.modules():  # statistics other than the defaults, so the folded scale and shift matter
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
        tail.requires_grad_(True)
        freeze_batchnorm(tail)
        first = next(m for m in tail.modules() if isinstance(m, torch.nn.Conv2d))
        return tail, torch.randn(3, first.in_channels, 7, 7, generator=g)

    plain, x = tail_and_input()
    expected = plain(x)
    expected.square().sum().backward()
    fused, _ = tail_and_input()
    keys = list(fused.state_dict())
    with fused_conv_bn(fused, ANATOMIES["efficientnet"]):
        assert sum(isinstance(m, ConvFrozenBN) for m in fused.modules()) >= 4  # the block's three + conv_head
        got = fused(x)
        got.square().sum().backward()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    for (name, a), (_, b) in zip(plain.named_parameters(), fused.named_parameters(), strict=True):
        if a.grad is not None or b.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert list(fused.state_dict()) == keys  # put back: checkpoints and the overlay see the network they know
    assert not any(isinstance(m, ConvFrozenBN) for m in fused.modules())


TINY_ENSEMBLE = "tiny_effnet_pair_test"


def register_effnet_pair():
    """Two tiny EfficientNets as one raw-feature ensemble, the second fed a larger crop (as Lite0 + Lite2)."""
    from flowerid.backbones.spec import ensemble_spec

    small = register_backbone(effnet_spec(), replace=True)
    big = dataclasses.replace(small, name=TINY_EFFNET + "_big", input_size=small.input_size + 8)
    register_backbone(big, replace=True)
    pair = ensemble_spec(TINY_ENSEMBLE, (TINY_EFFNET, big.name), member_norm=None, member_view="own")
    return register_backbone(pair, replace=True)


@pytest.fixture
def effnet_pair(effnet):
    from flowerid.backbones.spec import unregister_backbone

    spec = register_effnet_pair()
    yield spec
    for name in (TINY_ENSEMBLE, *spec.members[1:]):
        unregister_backbone(name)


def test_an_ensemble_tunes_each_member_and_averages_their_heads_into_one(effnet_pair, image_folder, tmp_path):
    from flowerid.backbones.surgery import tuned_parts

    lines: list[str] = []
    result = train(image_folder, tmp_path / "run", _cfg(arch=TINY_ENSEMBLE, epochs=2), log=lines.append)
    m = result.metrics
    assert [x["backbone"] for x in m["members"]] == list(effnet_pair.members)
    assert len(m["history"]) == 2 and m["best_epoch"] == 2 and "temperature" in m and "test_acc" in m
    assert any(line.startswith("member 2/2") for line in lines)
    from flowerid.model.info import checkpoint_info, format_info

    shown = format_info(checkpoint_info(result.checkpoint_path))
    assert f"valid top-1 alone: {TINY_EFFNET} " in shown and "heads averaged" in shown

    # Both members' last stages trained, each beside its own pristine weights; nothing else changed.
    tuned = torch.load(tmp_path / "run" / "backbone.pth", weights_only=True)
    pristine = _tiny_effnet().state_dict()
    last = len(_tiny_effnet().blocks) - 1
    for i in range(2):
        changed = {k for k in pristine if not torch.equal(pristine[k], tuned[f"members.{i}.{k}"])}
        assert changed and all(k.startswith((f"blocks.{last}.", "conv_head.")) for k in changed), changed

    # The ensemble's features are its tuned members' (each fed the crop resized to its size), side by side.
    ck = torch.load(result.checkpoint_path, weights_only=True)
    assert ck["head"]["config"]["in_features"] == 2 * 1280
    clf = flowerid.load(result.checkpoint_path, device="cpu", engine="torch")
    photos = sorted((image_folder / "valid" / "2").iterdir())
    batch = np.stack([clf.preprocess(p) for p in photos])
    module, parts = tuned_parts(effnet_pair, None, 1)
    module.load_state_dict(tuned)
    with torch.no_grad():
        feats = [torch.nn.Sequential(p.front, p.tail)(torch.from_numpy(batch)) for p in parts]
    np.testing.assert_allclose(torch.cat(feats, 1).numpy(), clf.backbone.engine(batch), atol=1e-4)

    # ONNX and torch agree on the ensemble as on any tuned backbone.
    by_torch = clf.predict_many(photos, top_k=3)
    by_onnx = flowerid.load(result.checkpoint_path, device="cpu", engine="onnx").predict_many(photos, top_k=3)
    for a, c in zip(by_torch, by_onnx, strict=True):
        np.testing.assert_allclose([p.probability for p in a], [p.probability for p in c], atol=1e-4)


def test_averaged_heads_give_the_members_averaged_logits():
    from flowerid.model.head import HeadConfig, build_head
    from flowerid.training.tuned import average_heads

    torch.manual_seed(0)
    heads = [build_head(HeadConfig(n, 5)) for n in (4, 6)]
    one = build_head(HeadConfig(10, 5))
    one.load_state_dict(average_heads([h.state_dict() for h in heads]))
    x = torch.randn(7, 10)
    with torch.no_grad():
        mean = (heads[0](x[:, :4]) + heads[1](x[:, 4:])) / 2
        torch.testing.assert_close(one(x), mean)
        logp = (heads[0](x[:, :4]).log_softmax(1) + heads[1](x[:, 4:]).log_softmax(1)) / 2
        torch.testing.assert_close(one(x).softmax(1), logp.softmax(1))  # as cross-validation combined them


def test_an_ensemble_refuses_what_it_cannot_average(effnet_pair, image_folder, tmp_path):
    with pytest.raises(UsageError, match="linear head"):
        train(image_folder, tmp_path / "a", _cfg(arch=TINY_ENSEMBLE, hidden_units=8), log=lambda s: None)
    with pytest.raises(UsageError, match="raw features"):
        train(image_folder, tmp_path / "b", _cfg(arch="efficientnet_lite012_flip"), log=lambda s: None)


def test_cross_validation_of_an_ensemble_averages_its_members(effnet_pair, image_folder):
    from flowerid.training.crossval import cross_validate

    lines: list[str] = []
    r = cross_validate(image_folder, _cfg(arch=TINY_ENSEMBLE, epochs=1), k=2, log=lines.append)
    assert r.logits.shape == (3 * (8 + 4), 3) and all("members alone" in line for line in lines)


def test_an_ensembles_members_train_on_the_photos_every_member_read(monkeypatch):
    """A photo one member's front could not read is left out of every member's rows, in the same order."""
    from types import SimpleNamespace

    from flowerid.backbones.features import Rows
    from flowerid.training import tuned

    failures = {"a": {"p1": "bad"}, "b": {"p3": "bad", "p1": "bad"}, "c": {}}

    def fake(split, part, ex, device, desc, view=0):
        read = [i for i in range(5) if f"p{i}" not in failures[part.name]]
        return Rows(torch.tensor(read, dtype=torch.float32)[:, None], None, failures[part.name], len(read))

    monkeypatch.setattr(tuned, "front_rows", fake)
    parts = [SimpleNamespace(name=n) for n in "abc"]
    split = SimpleNamespace(targets=[10, 11, 12, 13, 14], paths=[f"p{i}" for i in range(5)])
    acts = tuned.part_activations(split, parts, None, "cpu", "train")
    assert sorted(acts.failures) == ["p1", "p3"] and acts.y.tolist() == [10, 12, 14]
    assert acts.computed == 4 + 3 + 5
    assert all(x[:, 0].tolist() == [0, 2, 4] for x in acts.xs)
