import dataclasses
import urllib.error

import pytest
import torch

from flowerid.backbones import get_spec, list_backbones
from flowerid.backbones.build import build_backbone
from flowerid.backbones.weights import package_weights_path
from flowerid.errors import BackboneError, WeightsUnavailableError


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(BackboneError) as exc:
        get_spec("resnet9000")
    assert "efficientnet_lite0" in str(exc.value) and "vgg16" in str(exc.value)


def test_offline_entries():
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(list_backbones(offline_only=True))
    assert {"vgg16", "vgg13", "densenet121", "resnet50"} <= set(list_backbones()) - set(
        list_backbones(offline_only=True)
    )


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_offline_weights_load_strictly_and_give_features(name):
    spec = get_spec(name)
    module, digest = build_backbone(spec)
    assert digest == spec.weights.sha256
    x = torch.zeros(1, 3, spec.input_size, spec.input_size)
    with torch.no_grad():
        assert module(x).shape == (1, spec.num_features)
    assert not any(p.requires_grad for p in module.parameters())


def test_wrong_sha256_is_refused():
    spec = get_spec("efficientnet_lite0")
    bad = dataclasses.replace(spec, weights=dataclasses.replace(spec.weights, sha256="0" * 64))
    with pytest.raises(WeightsUnavailableError, match="sha256"):
        build_backbone(bad)


def test_local_weights_in_either_key_style(tmp_path):
    spec = get_spec("efficientnet_lite0")
    lukemelas = torch.load(package_weights_path(spec), weights_only=True)
    torch.save(lukemelas, tmp_path / "l.pth")
    m1, _ = build_backbone(spec, tmp_path / "l.pth")
    import timm

    full = timm.create_model("tf_efficientnet_lite0")
    full.load_state_dict(dict(m1.state_dict(), **{k: v for k, v in full.state_dict().items() if "classifier" in k}))
    torch.save(full.state_dict(), tmp_path / "t.pth")
    m2, _ = build_backbone(spec, tmp_path / "t.pth")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(m1(x), m2(x))


def test_local_weights_that_do_not_fit(tmp_path):
    torch.save({"nope": torch.zeros(1)}, tmp_path / "w.pth")
    with pytest.raises(WeightsUnavailableError, match="does not fit"):
        build_backbone("efficientnet_lite0", tmp_path / "w.pth")


def test_online_backbone_without_network_names_offline_choices(monkeypatch):
    import torchvision

    def no_network(*a, **k):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", no_network)
    with pytest.raises(WeightsUnavailableError) as exc:
        build_backbone("resnet50")
    assert "efficientnet_lite0" in str(exc.value) and "--weights" in str(exc.value)
