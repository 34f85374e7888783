"""Backbone surgery for tuning: a spec's network cut into frozen fronts and tunable tails (an ensemble's members
each), and a tail's convolution + frozen BatchNorm pairs run as one convolution while it trains.

What can be cut and where comes from the spec's anatomy (anatomy.py); training code only calls these.
Importing this module imports torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError
from .anatomy import Anatomy, anatomy_of, split_backbone
from .build import assemble_ensemble, build_backbone
from .cache import CacheKey
from .spec import BackboneSpec, get_spec


@dataclass
class TunedPart:
    """One network to tune: its frozen front (fed the run's preprocessed photos), its tail, what keys the
    front's cached activations, and its anatomy (which of the tail's BatchNorms fold into a convolution)."""

    name: str
    front: nn.Module
    tail: nn.Module
    key: CacheKey
    num_features: int
    anatomy: Anatomy


def tuned_parts(spec: BackboneSpec, weights: str | None, stages: int) -> tuple[nn.Module, list[TunedPart]]:
    """The whole pretrained network and the parts to tune in it: itself, or each member of an ensemble.

    A member whose preprocessing differs from the ensemble's gets its view of the ensemble's crop, as
    the ensemble feeds it at prediction; its activations are keyed by the ensemble's name and
    preprocessing. A member fed exactly its own preprocessing shares the cache entries of a run
    that tunes it alone.
    """
    if spec.family != "ensemble":
        module, digest = build_backbone(spec, weights)
        front, tail = split_backbone(module, spec, stages)
        key = CacheKey.of(spec, digest, stages)
        return module, [TunedPart(spec.name, front, tail, key, spec.num_features, anatomy_of(spec))]
    if spec.flip_tta or spec.member_norm is not None:
        raise UsageError(
            f"--tune-stages on an ensemble needs its members' raw features (efficientnet_lite012); "
            f"{spec.name} " + ("mirrors each photo" if spec.flip_tta else "rescales its members' features")
        )
    if weights is not None:
        raise UsageError(f"--weights starts one network; {spec.name} tunes its members from their own weights")
    built = [build_backbone(m) for m in spec.members]
    module, _ = assemble_ensemble(spec, built)
    parts = []
    for name, (member, digest), view in zip(spec.members, built, module.views, strict=True):
        mspec = get_spec(name)
        front, tail = split_backbone(member, mspec, stages)
        key = CacheKey.of(mspec, digest, stages)
        if not isinstance(view, nn.Identity):
            front = nn.Sequential(view, front)
            key = CacheKey(f"{spec.name}.{name}", digest, spec.preprocessing, spec.input_size, stages)
        parts.append(TunedPart(name, front, tail, key, mspec.num_features, anatomy_of(mspec)))
    return module, parts


def freeze_batchnorm(tail: nn.Module) -> None:
    """BatchNorm keeps its ImageNet statistics and affine weights: one data set's batches are too small."""
    for m in tail.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            m.requires_grad_(False)


class ConvFrozenBN(nn.Module):
    """A convolution and the frozen BatchNorm after it as one convolution, its weight still the one trained.

    The BatchNorm's scale goes into the kernel and its shift into the bias at each call, so the
    function and the gradient of the convolution's own weight are the same (to 1e-6) while no
    pass over the activations is spent on normalising them: a tuned step of Lite0's last stage
    on 2 cores took 82 ms instead of 103 (batch 64).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.conv, self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        weight = conv.weight * scale.view(-1, 1, 1, 1)
        x = F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)
        return bn.act(bn.drop(x))


def _fusable(conv: object, bn: object) -> bool:
    """A plain convolution (not timm's dynamically padded one) and a frozen timm BatchNormAct2d with statistics."""
    from timm.layers import BatchNormAct2d

    return (
        type(conv) is nn.Conv2d
        and type(bn) is BatchNormAct2d
        and bn.weight is not None
        and bn.bias is not None
        and bn.running_mean is not None
        and bn.running_var is not None
        and not bn.training
    )


@contextmanager
def fused_conv_bn(tail: nn.Module, anatomy: Anatomy) -> Iterator[None]:
    """While the tail trains, each convolution + frozen BatchNorm pair its anatomy names runs as one
    convolution; the modules are put back after."""
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    for parent, conv_name, bn_name in anatomy.conv_bn(tail):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        if _fusable(conv, bn):
            swaps.extend([(parent, conv_name, conv), (parent, bn_name, bn)])
            setattr(parent, conv_name, ConvFrozenBN(conv, bn))
            setattr(parent, bn_name, nn.Identity())
    try:
        yield
    finally:
        for parent, name, original in reversed(swaps):
            setattr(parent, name, original)
