"""Preprocessing derived from a backbone's spec: resize, centre-crop, normalise.

Pure PIL + numpy, so prediction can run without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from .images import ImageSource, load_image

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}

# Resizing a photo whole costs its resized size: past this many times resize_size squared (an aspect ratio
# over 16:1), only the crop's box is resampled.
_WHOLE_RESIZE_MAX = 16


@dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes the model's input tensor."""

    crop_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_crop_pct(
        cls,
        input_size: int,
        crop_pct: float,
        interpolation: str,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> Preprocessing:
        """Resize the shorter side to input_size / crop_pct, as timm does."""
        return cls(input_size, int(math.floor(input_size / crop_pct)), interpolation, mean, std)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Rebuild from plain numbers only: a checkpoint from a stranger may hold anything."""
        if not isinstance(d, dict):
            raise TypeError(f"expected a dict, got {type(d).__name__}")
        return cls(
            crop_size=int(_number(d["crop_size"])),
            resize_size=int(_number(d["resize_size"])),
            interpolation=str(d["interpolation"]),
            mean=tuple(float(_number(x)) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(_number(x)) for x in d["std"]),  # type: ignore[arg-type]
        )

    def resize_crop(self, img: Image.Image) -> Image.Image:
        """Shorter side to resize_size (torchvision's rounding), then the central crop.

        The whole photo is resized, then cropped, exactly as an export's manifest tells an
        app to do it. (Resampling only the crop's box is faster but not pixel-identical.)
        """
        (nw, nh), (left, top) = self._resized(img.size)
        crop = self.crop_size
        if nw * nh > _WHOLE_RESIZE_MAX * self.resize_size**2:
            # A strip (100000 x 1 pixels is a 370-byte PNG) would resize to gigabytes: resample only the
            # crop's box. Photos under 16:1 never come here, so their pixels stay those of the whole resize.
            sx, sy = img.width / nw, img.height / nh
            box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
            return img.resize((crop, crop), _RESAMPLE[self.interpolation], box=box)
        if (nw, nh) != img.size:
            img = img.resize((nw, nh), _RESAMPLE[self.interpolation])
        return img.crop((left, top, left + crop, top + crop))

    def _resized(self, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The resized photo's size and the crop's top-left corner in it, for a photo of `size` (w, h)."""
        w, h = size
        side = self.resize_size
        if w <= h:
            nw, nh = side, max(1, int(side * h / w))
        else:
            nw, nh = max(1, int(side * w / h)), side
        crop = self.crop_size
        nw, nh = max(nw, crop), max(nh, crop)
        return (nw, nh), (int(round((nw - crop) / 2.0)), int(round((nh - crop) / 2.0)))

    def crop_box(self, size: tuple[int, int], photo_size: tuple[int, int] | None = None) -> tuple[float, ...]:
        """The part of a photo of `size` (w, h) the crop shows, as (x0, y0, x1, y1) in its pixels; with
        `photo_size`, in those of the photo it was decoded from at reduced scale (draft JPEG decoding)."""
        (nw, nh), (left, top) = self._resized(size)
        fw, fh = photo_size or size
        sx, sy = fw / nw, fh / nh
        crop = self.crop_size
        return (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)

    def to_array(self, img: Image.Image) -> np.ndarray:
        """RGB crop to a normalised float32 CHW array: (x / 255 - mean) / std in two passes."""
        chw = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
        std = np.asarray(self.std, dtype=np.float32)
        scale = (1.0 / (255.0 * std)).reshape(3, 1, 1)
        offset = (-np.asarray(self.mean, dtype=np.float32) / std).reshape(3, 1, 1)
        out = np.empty(chw.shape, dtype=np.float32)
        np.multiply(chw, scale, out=out)
        out += offset
        return out

    def __call__(self, img: Image.Image) -> np.ndarray:
        return self.to_array(self.resize_crop(img))

    def load(self, source: ImageSource, max_pixels: int | None = None) -> np.ndarray:
        """Read an image from any source and preprocess it."""
        return self(load_image(source, min_size=self.resize_size, max_pixels=max_pixels))

    def denormalize(self, chw: np.ndarray) -> np.ndarray:
        """Undo `to_array`: CHW float back to HWC float in 0..1, for pictures."""
        arr = chw.transpose(1, 2, 0) * np.asarray(self.std) + np.asarray(self.mean)
        return np.clip(arr, 0.0, 1.0)


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return value
