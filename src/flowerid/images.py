"""The one image loader every command uses.

It applies EXIF orientation, turns any Pillow mode into RGB, refuses
decompression bombs before decoding pixels and, for JPEGs much larger than the
model needs, decodes at reduced scale (draft mode) to save time.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DecompressionBombError, ImageError, NotAnImageError

ImageSource = str | os.PathLike | bytes | Image.Image

#: File name endings treated as images when scanning folders.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

#: Default largest pixel count decoded (about a 12000 x 10000 photo).
DEFAULT_MAX_PIXELS = 120_000_000

#: Bumped whenever decoding changes in a way that changes pixels (cache keys use it).
LOADER_VERSION = 1


def max_pixels_default() -> int:
    """The pixel limit: `FLOWERID_MAX_PIXELS` if set, else DEFAULT_MAX_PIXELS."""
    value = os.environ.get("FLOWERID_MAX_PIXELS")
    if value:
        try:
            return int(value)
        except ValueError:
            pass
    return DEFAULT_MAX_PIXELS


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _describe(source: ImageSource) -> str:
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return "<PIL image>"
    return str(source)


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, bytes):
        return Image.open(io.BytesIO(source))
    return Image.open(source)


def load_image(
    source: ImageSource,
    *,
    min_size: int | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """Load any readable image as an RGB PIL image.

    `min_size` lets JPEGs decode at a reduced scale while keeping the shorter
    side at least that many pixels. Raises ImageError (or its subclass
    DecompressionBombError) for anything that cannot be read.
    """
    name = _describe(source)
    limit = max_pixels if max_pixels is not None else max_pixels_default()
    if isinstance(source, Image.Image):
        img = source
    else:
        if Image.MAX_IMAGE_PIXELS is not None and limit > 2 * Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = limit  # a raised limit must not be undercut by Pillow's own check
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = _open(source)
        except FileNotFoundError:
            raise ImageError(name, "file not found") from None
        except IsADirectoryError:
            raise ImageError(name, "is a folder, not an image") from None
        except PermissionError:
            raise ImageError(name, "permission denied") from None
        except Image.DecompressionBombError as exc:
            raise DecompressionBombError(
                name, f"over the pixel limit, refused as a decompression bomb ({exc})"
            ) from None
        except UnidentifiedImageError:
            raise NotAnImageError(name, "not an image Pillow can read") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageError(name, f"cannot be opened ({exc})") from None
    try:
        return _decode(img, name, min_size, limit)
    finally:
        if img is not source:
            img.close()


def _decode(img: Image.Image, name: str, min_size: int | None, limit: int) -> Image.Image:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(name, f"has no pixels ({width}x{height})")
    if width * height > limit:
        raise DecompressionBombError(
            name,
            f"{width}x{height} = {width * height:,} pixels is over the pixel limit of {limit:,}; "
            "raise FLOWERID_MAX_PIXELS if you trust this file",
        )
    try:
        if min_size and img.format == "JPEG":
            img.draft("RGB", (min_size, min_size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except Image.DecompressionBombError as exc:
        raise DecompressionBombError(name, f"over the pixel limit, refused as a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise ImageError(name, f"cannot be decoded ({exc})") from None
    with contextlib.suppress(Exception):  # a broken EXIF block must not lose the photo
        img = ImageOps.exif_transpose(img) or img
    try:
        return to_rgb(img)
    except (OSError, ValueError) as exc:
        raise ImageError(name, f"cannot be converted to RGB ({exc})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency on white, 16/32-bit scaled to 8-bit."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        if top > 255.0:
            arr = arr * (255.0 / (65535.0 if top <= 65535.0 else top))
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
