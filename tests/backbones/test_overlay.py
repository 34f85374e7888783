"""A tuned network stored as the tensors tuning changed, laid over the package weights on load."""

import pytest
import torch

from flowerid.backbones import get_spec
from flowerid.backbones.build import build_backbone
from flowerid.backbones.weights import OVERLAY, overlay_state
from flowerid.errors import WeightsUnavailableError


def test_an_overlay_rebuilds_the_tuned_network_from_the_package_weights(tmp_path):
    spec = get_spec("efficientnet_lite0")
    base, base_digest = build_backbone(spec)
    tuned = {k: v.clone() for k, v in base.state_dict().items()}
    tuned["conv_head.weight"] += 0.01
    state = overlay_state(spec, tuned, base.state_dict())
    assert list(state["state_dict"]) == ["conv_head.weight"]  # only what changed travels
    path = tmp_path / "tuned.pth"
    torch.save(state, path)
    module, digest = build_backbone(spec, path)
    assert digest != base_digest
    for k, v in module.state_dict().items():
        assert torch.equal(v, tuned[k]), k


def test_an_overlay_of_another_network_or_with_stray_keys_is_refused(tmp_path):
    spec = get_spec("efficientnet_lite0")
    path = tmp_path / "w.pth"
    torch.save({OVERLAY: "efficientnet_lite2", "state_dict": {}}, path)
    with pytest.raises(WeightsUnavailableError, match="not to efficientnet_lite0"):
        build_backbone(spec, path)
    torch.save({OVERLAY: spec.name, "state_dict": {"nope.weight": torch.zeros(1)}}, path)
    with pytest.raises(WeightsUnavailableError, match="unexpected keys nope.weight"):
        build_backbone(spec, path)
