"""Building a backbone: the network, its pretrained weights, its classifier cut off (as its anatomy says),
frozen, in eval mode.

torch, timm and torchvision are imported only when a network is built, so the
predict path (an ONNX graph from the cache) never pays for them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .._io import file_sha256
from ..errors import BackboneError
from .spec import BackboneSpec, get_spec
from .weights import ensemble_digest, load_ensemble_state, load_local, load_online, load_package, state_dict_digest

if TYPE_CHECKING:
    import torch.nn as nn


def _build_full(spec: BackboneSpec) -> nn.Module:
    """The network with its ImageNet classifier, randomly initialised."""
    if spec.family == "timm":
        import timm

        return timm.create_model(spec.arch, pretrained=False)
    if spec.family == "torchvision":
        import torchvision

        return torchvision.models.get_model(spec.arch, weights=None)
    raise BackboneError(f"backbone {spec.name!r} has no builder for family {spec.family!r}")


def build_backbone(
    name_or_spec: str | BackboneSpec, weights_path: str | os.PathLike | None = None
) -> tuple[nn.Module, str]:
    """Build a pretrained feature extractor in eval mode; return it and its weights digest.

    `weights_path` loads a local state dict (any entry; lukemelas or timm keys
    for EfficientNets) instead of the spec's source.
    """
    spec = get_spec(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    if spec.family == "ensemble":
        module, digest = assemble_ensemble(spec, [build_backbone(m) for m in spec.members])
        if weights_path is not None:
            load_ensemble_state(spec, module, Path(weights_path))
            digest = file_sha256(weights_path)
        return module, digest
    if spec.factory is not None:
        import torch

        module = spec.factory()
        if weights_path is not None:
            module.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        digest = state_dict_digest(module.state_dict())
        return module.eval(), digest
    full = _build_full(spec)
    if weights_path is not None:
        path = Path(weights_path)
        load_local(spec, full, path)
        digest = file_sha256(path)
    elif spec.weights.kind == "package":
        digest = load_package(spec, full)
    elif spec.weights.kind in ("torchvision", "timm-hub"):
        digest = state_dict_digest(load_online(spec, full))
    else:
        digest = state_dict_digest(full.state_dict())
    from .anatomy import anatomy_of

    module = anatomy_of(spec).strip(full)  # the network outputs pooled features
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval(), digest


def assemble_ensemble(spec: BackboneSpec, built: list[tuple[nn.Module, str]]) -> tuple[nn.Module, str]:
    """The ensemble network over its members' built networks and their digests; its digest digests theirs."""
    import torch.nn as nn

    from .ensemble import Ensemble, OwnView, Resize

    views: list[nn.Module] = []
    for name in spec.members:
        member = get_spec(name)
        if member.preprocessing == spec.preprocessing:
            views.append(nn.Identity())
        elif spec.member_view == "own":
            views.append(OwnView(spec.preprocessing, member.preprocessing))
        else:
            views.append(Resize(member.input_size))
    module = Ensemble([module for module, _ in built], views, spec.flip_tta, spec.member_norm)
    return module.eval(), ensemble_digest([digest for _, digest in built])
