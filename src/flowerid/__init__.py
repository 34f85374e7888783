"""flowerid: train image classifiers by transfer learning and name the flower in a photo.

>>> import flowerid
>>> clf = flowerid.load()  # the built-in 102-flower model, or a path to your own checkpoint
>>> clf.predict("rose.jpg", top_k=3)
>>> ev = flowerid.evaluate("runs/flowers/checkpoint.pth", "data/valid", "runs/flowers/eval")
>>> flowerid.add("runs/flowers/checkpoint.pth", "my-flowers", "runs/mine.pth")  # new categories, no retraining
>>> ev.confusion_figure()  # matplotlib figures for notebooks; see flowerid.evaluation.figures
"""

from __future__ import annotations

from ._version import __version__
from .errors import (  # noqa: E402
    BackboneError,
    CheckpointError,
    DataError,
    DecompressionBombError,
    DeviceError,
    FlowerIdError,
    ImageError,
    NotAnImageError,
    UsageError,
    WeightsUnavailableError,
)

__all__ = [
    "__version__",
    "load",
    "train",
    "evaluate",
    "add",
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
    "NotAnImageError",
    "UsageError",
    "WeightsUnavailableError",
]


def __getattr__(name: str):
    # Lazy: `import flowerid` stays cheap; torch loads only when a model is used.
    if name in ("load", "Classifier", "Prediction"):
        from .model import predictor

        return getattr(predictor, name)
    if name == "TrainConfig":
        from .training.config import TrainConfig

        return TrainConfig
    if name == "train":
        from .training.run import train

        return train
    if name == "add":
        from .model.add import add

        return add
    if name == "evaluate":
        from .evaluation.run import evaluate

        return evaluate
    if name == "load_image":
        from .data.images import load_image

        return load_image
    raise AttributeError(f"module 'flowerid' has no attribute {name!r}")
