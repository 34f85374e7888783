"""What flowerid knows about each kind of network, kept with the spec (as timm keeps `reset_classifier` and
`group_matcher` with the architecture): how to cut off its classifier, where its spatial feature map is
before global pooling, how it splits into a frozen front and a tunable tail, and which convolutions a frozen
BatchNorm can be folded into.

A spec names its anatomy (`BackboneSpec.anatomy`); nothing outside this module looks at a network's
attributes or its architecture's name to decide these things. Importing this module imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import BackboneError, UsageError
from .spec import BackboneSpec, get_spec, list_specs

Pair = tuple[nn.Module, str, str]  # (parent, convolution's attribute, the BatchNorm after it's attribute)


@dataclass(frozen=True)
class Anatomy:
    """One kind of network, as flowerid operates on it.

    strip: the network with its ImageNet classifier -> one that outputs pooled features.
    spatial: the stripped network, a photo batch -> its feature map (N, C, H, W) before global pooling.
    pool: the stripped network, that map -> what the network outputs (its pooled features).
    split: (stripped network, stages) -> (front, tail) sharing its layers; None: not tunable.
    conv_bn: the (parent, conv, bn) pairs of a tail whose BatchNorm can be folded into the convolution.
    """

    name: str
    strip: Callable[[nn.Module], nn.Module]
    spatial: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    pool: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    split: Callable[[nn.Module, BackboneSpec, int], tuple[nn.Module, nn.Module]] | None = None
    conv_bn: Callable[[nn.Module], list[Pair]] = lambda tail: []


# ---------------------------------------------------------------- timm


def _timm_strip(full: nn.Module) -> nn.Module:
    full.reset_classifier(0)
    return full


def _timm_spatial(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module.forward_features(x)


def _timm_pool(module: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
    return module.forward_head(fmap, pre_logits=True)


def _efficientnet_split(module: nn.Module, spec: BackboneSpec, stages: int) -> tuple[nn.Module, nn.Module]:
    """(front, tail): the tail is the last `stages` stages, conv_head, its BatchNorm and the pooling."""
    blocks = module.blocks
    if not 1 <= stages <= len(blocks):
        raise UsageError(f"--tune-stages must be 0 (frozen) to {len(blocks)} for {spec.name}")
    cut = len(blocks) - stages
    front = nn.Sequential(module.conv_stem, module.bn1, *blocks[:cut])
    tail = nn.Sequential(*blocks[cut:], module.conv_head, module.bn2, module.global_pool)
    return front, tail


def _efficientnet_conv_bn(tail: nn.Module) -> list[Pair]:
    """timm's EfficientNet blocks: which convolution each BatchNorm follows; then the tail's conv_head, bn2."""
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

    table = {
        InvertedResidual: (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
        DepthwiseSeparableConv: (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    }
    pairs = [(m, c, b) for m in tail.modules() for c, b in table.get(type(m), ())]
    names = list(tail._modules)  # the tail's own conv_head, bn2 (and the pooling after them)
    return pairs + [(tail, c, b) for c, b in zip(names, names[1:], strict=False)]


# ---------------------------------------------------------------- torchvision


def _vgg_strip(full: nn.Module) -> nn.Module:
    # Keep the pretrained fc6/fc7: 4096 features, as transfer learning on VGG does.
    return nn.Sequential(full.features, full.avgpool, nn.Flatten(1), *list(full.classifier.children())[:-1])


def _densenet_strip(full: nn.Module) -> nn.Module:
    return nn.Sequential(full.features, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def _resnet_strip(full: nn.Module) -> nn.Module:
    full.fc = nn.Identity()
    return full


def _resnet_spatial(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def _resnet_pool(m: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
    return torch.flatten(m.avgpool(fmap), 1)


def _sequential_at(cut: int) -> tuple[Callable, Callable]:
    """spatial and pool of an nn.Sequential whose first `cut` children (negative: all but the last -cut)
    give the map."""

    def spatial(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m[:cut](x)

    def pool(m: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
        return m[cut:](fmap)

    return spatial, pool


def _keep(module: nn.Module) -> nn.Module:
    return module


ANATOMIES: dict[str, Anatomy] = {
    a.name: a
    for a in (
        Anatomy("efficientnet", _timm_strip, _timm_spatial, _timm_pool, _efficientnet_split, _efficientnet_conv_bn),
        Anatomy("timm", _timm_strip, _timm_spatial, _timm_pool),
        # VGG's map is its last convolutional stage's; its pooled features are fc7's, not a mean of the map.
        Anatomy("vgg", _vgg_strip, *_sequential_at(1)),
        Anatomy("densenet", _densenet_strip, *_sequential_at(2)),
        Anatomy("resnet", _resnet_strip, _resnet_spatial, _resnet_pool),
        # A network built by a spec's factory as pooled features already: an nn.Sequential ending in a
        # global pooling and a flatten (the tests' tiny backbone).
        Anatomy("sequential", _keep, *_sequential_at(-2)),
    )
}


def anatomy_of(spec: BackboneSpec) -> Anatomy:
    """The anatomy a spec names; BackboneError for a name no entry has (ensembles have none of their own)."""
    try:
        return ANATOMIES[spec.anatomy]
    except KeyError:
        raise BackboneError(
            f"backbone {spec.name} names anatomy {spec.anatomy!r}; known: {', '.join(ANATOMIES)}"
        ) from None


def split_backbone(module: nn.Module, spec: BackboneSpec, stages: int) -> tuple[nn.Module, nn.Module]:
    """(front, tail) sharing the built network's layers: the tail is its last `stages` stages and the pooling."""
    anatomy = ANATOMIES.get(spec.anatomy)
    if spec.family == "ensemble" or anatomy is None or anatomy.split is None:
        names = [s.name for s in list_specs() if s.family != "ensemble" and ANATOMIES[s.anatomy].split]
        raise UsageError(
            f"--tune-stages needs a backbone that splits into stages (the EfficientNets: {', '.join(names)}) or "
            f"an ensemble of them with raw features (efficientnet_lite012); {spec.name} is not one"
        )
    return anatomy.split(module, spec, stages)


# ---------------------------------------------------------------- feature maps


def feature_maps(spec: BackboneSpec, module: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(maps, pooled) of a built backbone for a photo batch: `pooled` is exactly `module(x)`.

    One network gives one map (N, C, H, W) before its global pooling. An ensemble gives one map per
    member, in member order, each at its own size (the member's own input and stride: Lite0, Lite1 and
    Lite2 of efficientnet_lite012 give 7x7, 8x8 and 9x9), never resized to a common grid; its `pooled`
    are the members' pooled features side by side, scaled and mirror-averaged as the ensemble does.
    With `flip_tta` the maps are of the photo as given (the mirror enters `pooled` only).
    """
    if spec.family != "ensemble":
        anatomy = anatomy_of(spec)
        fmap = anatomy.spatial(module, x)
        return [fmap], anatomy.pool(module, fmap)
    maps, outs = [], []
    for name, member, view in zip(spec.members, module.members, module.views, strict=True):
        member_maps, out = feature_maps(get_spec(name), member, view(x))
        maps.extend(member_maps)
        outs.append(out if module.member_norm is None else F.normalize(out, dim=1) * module.member_norm)
    pooled = torch.cat(outs, 1)
    if module.flip_tta:
        pooled = 0.5 * (pooled + module.features(torch.flip(x, dims=[3])))
    return maps, pooled
