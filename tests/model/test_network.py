"""The torch network of a checkpoint: the same answers as `predict`, and the feature maps behind them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import flowerid
from flowerid.backbones import ensemble_spec, get_spec, register_backbone, unregister_backbone
from flowerid.backbones.anatomy import ANATOMIES, feature_maps
from flowerid.backbones.build import build_backbone
from flowerid.errors import BackboneError, CheckpointError
from flowerid.model.checkpoint import load_checkpoint
from flowerid.model.network import build_network
from flowerid.training.config import TrainConfig
from flowerid.training.run import train

from ..conftest import TINY, tiny_spec


def _batch(clf, folder, split="valid"):
    photos = sorted(p for p in (folder / split).rglob("*") if p.is_file())
    return np.stack([clf.preprocess(p) for p in photos])


def _agrees_with_predict(checkpoint_path, folder) -> None:
    clf = flowerid.load(checkpoint_path, device="cpu", engine="torch")
    x = _batch(clf, folder)
    net = build_network(load_checkpoint(checkpoint_path))
    with torch.no_grad():
        logits = net(torch.from_numpy(x))
        maps, pooled = net.feature_maps(torch.from_numpy(x))
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), clf.predict_proba(x), atol=1e-5)
    torch.testing.assert_close(pooled, net.features(torch.from_numpy(x)), atol=1e-6, rtol=0)
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    return net, maps, pooled


def test_a_frozen_checkpoint_gives_predicts_probabilities_and_the_map_it_pools(trained):
    data, result = trained
    net, maps, pooled = _agrees_with_predict(result.checkpoint_path, data)
    assert len(maps) == 1 and maps[0].shape[1:] == (16, 8, 8)  # 32 px, two stride-2 convolutions
    torch.testing.assert_close(maps[0].mean((2, 3)), pooled, atol=1e-6, rtol=0)  # global average pooling
    assert net.member_slices() == [slice(0, 16)]
    assert net.preprocessing == tiny_spec().preprocessing


@pytest.fixture
def tiny_pair():
    """Two tiny members of different input sizes as a raw-feature ensemble seeing its own view of the crop."""
    small = register_backbone(dataclasses.replace(tiny_spec(), name="tiny_small", input_size=24), replace=True)
    spec = ensemble_spec("tiny_pair", (TINY, small.name), member_norm=None, member_view="own")
    yield register_backbone(spec, replace=True)
    unregister_backbone("tiny_pair")
    unregister_backbone("tiny_small")


def test_an_ensemble_checkpoint_gives_one_map_per_member_at_its_own_size(tiny_pair, image_folder, tmp_path):
    cfg = TrainConfig(arch="tiny_pair", epochs=3, learning_rate=0.02, num_workers=0)
    result = train(image_folder, tmp_path / "run", cfg, log=lambda s: None)
    net, maps, pooled = _agrees_with_predict(result.checkpoint_path, image_folder)
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 8, 8), (16, 6, 6)]
    assert net.member_slices() == [slice(0, 16), slice(16, 32)]
    for m, cols in zip(maps, net.member_slices(), strict=True):
        torch.testing.assert_close(m.mean((2, 3)), pooled[:, cols], atol=1e-6, rtol=0)


@pytest.mark.parametrize("flip_tta,member_norm", [(True, 10.0), (False, 10.0), (True, None)])
def test_an_ensembles_pooled_features_are_exactly_its_output(tiny_pair, flip_tta, member_norm):
    spec = dataclasses.replace(tiny_pair, flip_tta=flip_tta, member_norm=member_norm, member_view="resize")
    module, _ = build_backbone(spec)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        maps, pooled = feature_maps(spec, module, x)
        torch.testing.assert_close(pooled, module(x), atol=1e-6, rtol=0)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 8, 8), (2, 16, 6, 6)]


def test_a_tuned_checkpoint_builds_with_its_tuned_backbone(image_folder, tmp_path):
    from ..training.test_finetune import TINY_EFFNET, effnet_spec

    register_backbone(effnet_spec(), replace=True)
    try:
        cfg = TrainConfig.from_preset("fast", arch=TINY_EFFNET, tune_stages=1, epochs=1, num_workers=0)
        result = train(image_folder, tmp_path / "run", cfg, log=lambda s: None)
        net, maps, pooled = _agrees_with_predict(result.checkpoint_path, image_folder)
        assert maps[0].shape[1] == 1280
        torch.testing.assert_close(maps[0].mean((2, 3)), pooled, atol=1e-5, rtol=0)
        # The tuned weights, not the pristine ones: those give other features.
        pristine, _ = build_backbone(effnet_spec())
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            assert not torch.allclose(pristine(x), net.features(x), atol=1e-4)
        ckpt = load_checkpoint(result.checkpoint_path)
        ckpt["backbone"]["weights_digest"] = "0" * 64
        with pytest.raises(CheckpointError, match="not the ones"):
            build_network(ckpt)
    finally:
        unregister_backbone(TINY_EFFNET)


def _random_full(name: str):
    """A network of each anatomy with random weights (no downloads), small where a small sibling exists."""
    import timm
    import torchvision

    build = {
        "efficientnet": lambda: timm.create_model("tf_efficientnet_lite0", pretrained=False),
        "timm": lambda: timm.create_model("convnext_atto", pretrained=False),
        "vgg": lambda: torchvision.models.vgg11(weights=None),
        "densenet": lambda: torchvision.models.densenet121(weights=None),
        "resnet": lambda: torchvision.models.resnet18(weights=None),
    }
    return build[name]()


@pytest.mark.parametrize("anatomy", ["efficientnet", "timm", "vgg", "densenet", "resnet", "sequential"])
def test_every_anatomy_pools_its_map_into_exactly_what_the_network_gives(anatomy):
    torch.manual_seed(0)
    if anatomy == "sequential":
        spec, (module, _) = get_spec(TINY), build_backbone(TINY)
    else:
        spec = dataclasses.replace(tiny_spec(), anatomy=anatomy)
        module = ANATOMIES[anatomy].strip(_random_full(anatomy)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        maps, pooled = feature_maps(spec, module, x)
        torch.testing.assert_close(pooled, module(x), atol=1e-5, rtol=1e-5)
    stride = 4 if anatomy == "sequential" else 32  # the tiny backbone: two stride-2 convolutions
    assert maps[0].ndim == 4 and maps[0].shape[-1] == 64 // stride


def test_a_spec_naming_no_known_anatomy_says_which_there_are():
    spec = dataclasses.replace(tiny_spec(), name="odd", anatomy="nope")
    with pytest.raises(BackboneError, match="anatomy 'nope'; known: efficientnet"):
        build_backbone(dataclasses.replace(spec, factory=None, family="timm", arch="resnet18"))
