"""flowerid: train image classifiers by transfer learning and name the flower in a photo.

>>> import flowerid
>>> clf = flowerid.load()  # the built-in 102-flower model, or a path to your own checkpoint
>>> clf.predict("rose.jpg", top_k=3)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    BackboneError,
    CheckpointError,
    DataError,
    DecompressionBombError,
    DeviceError,
    FlowerIdError,
    ImageError,
    UsageError,
    WeightsUnavailableError,
)

__all__ = [
    "__version__",
    "load",
    "train",
    "Classifier",
    "Prediction",
    "TrainConfig",
    "load_image",
    "BackboneError",
    "CheckpointError",
    "DataError",
    "DecompressionBombError",
    "DeviceError",
    "FlowerIdError",
    "ImageError",
    "UsageError",
    "WeightsUnavailableError",
]


def __getattr__(name: str):
    # Lazy: `import flowerid` stays cheap; torch loads only when a model is used.
    if name in ("load", "Classifier", "Prediction"):
        from . import predictor

        return getattr(predictor, name)
    if name in ("train", "TrainConfig"):
        from . import training

        return getattr(training, name)
    if name == "load_image":
        from .images import load_image

        return load_image
    raise AttributeError(f"module 'flowerid' has no attribute {name!r}")
