"""Augmented views of a photo for a frozen backbone.

The backbone never changes, so an augmented view's features are as cacheable as
the plain ones: view k of a photo is always the same crop, flip, turn and colour
change (seeded by the file's path and k). Training on a few views per photo
shows the head variation while its epochs stay cheap.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from .images import ImageSource, load_image
from .preprocess import _RESAMPLE, Preprocessing

AUGMENT_VERSION = 1  # bump when a view of the same photo changes: it is part of the cache key


@dataclass(frozen=True)
class Augment:
    """Random resized crop, mirror, small turn and colour jitter, as in ImageNet training."""

    scale: tuple[float, float] = (0.35, 1.0)  # crop area, as a share of the photo
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    rotate: float = 15.0  # degrees either way
    jitter: float = 0.2  # brightness, contrast and saturation factors in 1 ± jitter

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "version": AUGMENT_VERSION}

    def view(self, prep: Preprocessing, source: ImageSource, seed: int, max_pixels: int | None = None) -> np.ndarray:
        """One augmented view as the backbone's normalised CHW array."""
        min_side = int(prep.resize_size / math.sqrt(self.scale[0]))  # keep detail for the smallest crop
        img = load_image(source, min_size=min_side, max_pixels=max_pixels)
        return prep.to_array(self.apply(img, prep, np.random.default_rng(seed)))

    def apply(self, img: Image.Image, prep: Preprocessing, rng: np.random.Generator) -> Image.Image:
        resample = _RESAMPLE[prep.interpolation]
        if self.rotate > 0:
            angle = float(rng.uniform(-self.rotate, self.rotate))
            img = img.rotate(angle, resample=Image.BILINEAR, fillcolor=tuple(int(m * 255) for m in prep.mean))
        w, h = img.size
        box = _crop_box(w, h, self.scale, self.ratio, rng)
        img = img.resize((prep.crop_size, prep.crop_size), resample, box=box)
        if rng.random() < self.flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.jitter > 0:
            for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                img = enhance(img).enhance(float(rng.uniform(1 - self.jitter, 1 + self.jitter)))
        return img


def _crop_box(
    w: int, h: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop box: ten tries at a random area and aspect, else the centre."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            return (left, top, left + cw, top + ch)
    side = min(w, h)
    return ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)


def view_seed(path: str | os.PathLike[str], view: int) -> int:
    """The same photo (by file name, wherever it lies) and view number always give the same augmentation."""
    return zlib.crc32(f"{os.path.basename(os.fspath(path))}|{view}".encode("utf-8", "surrogateescape"))
