"""The one image loader every command uses.

It applies EXIF orientation, turns any Pillow mode into RGB, refuses
decompression bombs before decoding pixels and, for JPEGs much larger than the
model needs, decodes at reduced scale (draft mode) to save time.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import typing
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .._text import first_line
from ..errors import DecompressionBombError, ImageError, NotAnImageError, UsageError

#: A photo as callers hold one: a path, its bytes, an open binary file, a PIL image or a numpy array
#: (height x width, or x 3 / x 4 channels; uint8, or floats in 0..1 as matplotlib gives them).
ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray | typing.BinaryIO

#: File name endings treated as images when scanning folders.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)

try:  # HEIC is what iPhones save: without pillow-heif those photos would be reported unreadable
    from pillow_heif import register_heif_opener
except ImportError:  # pragma: no cover - a dependency; an install without it still reads everything else
    pass
else:
    register_heif_opener()

#: Default largest pixel count decoded (about a 12000 x 10000 photo).
DEFAULT_MAX_PIXELS = 120_000_000

_BOMB_HINT = "refused as a possible decompression bomb; raise FLOWERID_MAX_PIXELS if you trust this file"

#: Bumped whenever decoding changes in a way that changes pixels (cache keys use it).
LOADER_VERSION = 1


#: Where `load_image` notes the photo's own size when it decoded fewer pixels (`photo_size` reads it).
FULL_SIZE = "flowerid.full_size"
_ORIENTATION = 0x0112  # the EXIF tag

#: Leading bytes of the formats above, to find images whatever their name.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\0", b"MM\0*")
_PHOTO_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"})


def max_pixels_default() -> int:
    """The pixel limit: `FLOWERID_MAX_PIXELS` if set, else DEFAULT_MAX_PIXELS.

    A value that is not a positive whole number is an error rather than silently
    ignored: a user who raised the limit must not be refused with the default.
    """
    value = os.environ.get("FLOWERID_MAX_PIXELS", "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise UsageError(f"FLOWERID_MAX_PIXELS={value!r} is not a positive whole number of pixels (e.g. 200000000)")
    return limit


def is_image_file(path: str | os.PathLike) -> bool:
    """True for names that end like an image (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def has_image_magic(head: bytes) -> bool:
    """True when a file's first bytes are those of a format flowerid reads."""
    if head[4:8] == b"ftyp":  # ISO media: HEIC, HEIF and AVIF photos by their brand (not MP4 video)
        return head[8:12] in _PHOTO_BRANDS
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def looks_like_image(path: str | os.PathLike) -> bool:
    """An image by its name, or, for other names, by its magic bytes.

    Files that fail both (`.DS_Store`, `notes.txt`, `Thumbs.db`) are obviously not
    images and are ignored quietly; an image-named file that cannot be read is not
    obvious and is reported by whoever tries to load it.
    """
    if is_image_file(path):
        return True
    try:
        with open(path, "rb") as f:
            return has_image_magic(f.read(16))
    except OSError:
        return False


def _describe(source: ImageSource) -> str:
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return "<PIL image>"
    if isinstance(source, np.ndarray):
        return f"<numpy array {'x'.join(map(str, source.shape))} {source.dtype}>"
    if hasattr(source, "read"):
        return str(getattr(source, "name", "<file object>"))
    return str(source)


def _as_source(source: object) -> ImageSource:
    """What a caller passed, as something `load_image` reads; UsageError, saying what it takes, for the rest."""
    if isinstance(source, bytearray | memoryview):
        return bytes(source)
    if isinstance(source, str | os.PathLike | bytes | Image.Image | np.ndarray) or hasattr(source, "read"):
        return source  # type: ignore[return-value]
    several = " (for several photos, use predict_many)" if isinstance(source, list | tuple) else ""
    raise UsageError(
        "a photo is a path, its bytes, an open binary file, a PIL image or a numpy array; "
        f"got {type(source).__name__}{several}"
    )


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    """A numpy picture as a PIL image: height x width (grey) or x 1/3/4 channels; uint8, or floats in 0..1."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or 0 in arr.shape:
        raise ImageError(name, "is not a picture: expected height x width, with 3 or 4 channels or none")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError(name, "holds NaN or infinite values")
        top = 1.0 if float(arr.max()) <= 1.0 else 255.0  # matplotlib's floats are in 0..1
        arr = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer):
            raise ImageError(name, f"has values of type {arr.dtype}, not numbers of a picture")
        arr = _in_8_bits(arr)  # as a 16-bit PNG is read
    return Image.fromarray(np.ascontiguousarray(arr))


_SPECIAL = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
    (stat.S_ISSOCK, "a socket"),
)


_MAX_STREAM = 512 * 2**20  # an open file is read whole: a stream that never ends stops here


def _read_stream(source: typing.BinaryIO, name: str) -> bytes:
    """An open file's bytes, read here: Pillow would close the caller's file with the image."""
    if isinstance(source, io.TextIOBase):
        raise ImageError(name, "is a file opened as text; open it with 'rb'")
    try:
        data = source.read(_MAX_STREAM + 1)
    except (OSError, ValueError) as exc:  # closed, or not readable
        raise ImageError(name, f"cannot be read ({first_line(exc)})") from None
    if not isinstance(data, bytes | bytearray):
        raise ImageError(name, "is a file opened as text; open it with 'rb'")
    if len(data) > _MAX_STREAM:
        raise ImageError(name, f"is over {_MAX_STREAM // 2**20} MB, more than any photo")
    return bytes(data)


def _open(source: ImageSource, name: str) -> Image.Image:
    if isinstance(source, bytes):
        return Image.open(io.BytesIO(source))
    with contextlib.suppress(OSError):  # a missing file is reported by open, below
        mode = os.stat(source).st_mode
        # Opening a pipe waits for a writer, and a device never ends: refuse them before reading.
        for test, kind in _SPECIAL:
            if test(mode):
                raise ImageError(name, f"is {kind}, not a photo file")
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
    DecompressionBombError) for anything that cannot be read: whatever Pillow
    raises on a hostile file becomes an ImageError naming the file and why.
    """
    source = _as_source(source)
    name = _describe(source)
    limit = max_pixels if max_pixels is not None else max_pixels_default()
    if isinstance(source, np.ndarray):
        if source.ndim >= 2 and source.shape[0] * source.shape[1] > limit:  # before any copy is made
            h, w = source.shape[:2]
            raise DecompressionBombError(name, f"{w}x{h} = {w * h:,} pixels is over the pixel limit of {limit:,}")
        source = _from_array(source, name)
    elif hasattr(source, "read"):
        source = _read_stream(source, name)  # type: ignore[arg-type]
    if isinstance(source, Image.Image):
        img = source
    else:
        if Image.MAX_IMAGE_PIXELS is not None and limit > 2 * Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = limit  # a raised limit must not be undercut by Pillow's own check
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = _open(source, name)
        except ImageError:
            raise
        except FileNotFoundError:
            web = isinstance(source, str) and source.lower().startswith(("http://", "https://"))
            raise ImageError(name, "file not found" + ("; download the photo first" if web else "")) from None
        except IsADirectoryError:
            raise ImageError(name, "is a folder, not an image") from None
        except PermissionError:
            raise ImageError(name, "permission denied") from None
        except Image.DecompressionBombError as exc:
            raise DecompressionBombError(name, f"over the pixel limit ({first_line(exc)}); {_BOMB_HINT}") from None
        except UnidentifiedImageError:
            raise NotAnImageError(name, _unidentified(source)) from None
        except Exception as exc:  # Pillow's parsers raise many kinds on hostile headers
            raise ImageError(name, f"cannot be opened ({first_line(exc)})") from None
    try:
        return _decode(img, name, min_size, limit)
    finally:
        if img is not source:
            img.close()


def _unidentified(source: ImageSource) -> str:
    """Why Pillow did not recognise a file, in words a user can act on."""
    head = source[:64] if isinstance(source, bytes) else b""
    if not isinstance(source, bytes | Image.Image):
        try:
            with open(source, "rb") as f:
                head = f.read(64)
        except OSError:
            pass
    if not head:
        return "is empty (0 bytes)"
    start = head.lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "is a web page (HTML/XML), not an image; a failed download?"
    return "not an image Pillow can read"


def _decode(img: Image.Image, name: str, min_size: int | None, limit: int) -> Image.Image:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(name, f"has no pixels ({width}x{height})")
    if width * height > limit:
        raise DecompressionBombError(
            name, f"{width}x{height} = {width * height:,} pixels is over the pixel limit of {limit:,}; {_BOMB_HINT}"
        )
    try:
        if min_size and img.format == "JPEG":
            img.draft("RGB", (min_size, min_size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except Image.DecompressionBombError as exc:
        raise DecompressionBombError(name, f"over the pixel limit ({first_line(exc)}); {_BOMB_HINT}") from None
    except Exception as exc:  # truncated data, broken chunks, odd codecs, MemoryError...
        raise ImageError(name, f"cannot be decoded ({first_line(exc)})") from None
    full = (width, height)
    try:
        img = _reduced(img, min_size)
    except Exception as exc:
        raise ImageError(name, f"cannot be converted to RGB ({first_line(exc)})") from None
    with contextlib.suppress(Exception):  # a broken EXIF block must not lose the photo
        if img.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):
            full = (height, width)  # turned a quarter: the photo's own pixels are the other way round
        img = ImageOps.exif_transpose(img) or img
    try:
        rgb = to_rgb(img)
    except Exception as exc:
        raise ImageError(name, f"cannot be converted to RGB ({first_line(exc)})") from None
    if rgb.size != full:
        rgb.info[FULL_SIZE] = (full, rgb.size)  # with the size it was noted at: a resized copy keeps `info`
    return rgb


def photo_size(img: Image.Image) -> tuple[int, int]:
    """The size of the photo `img` was loaded from, in its own pixels after EXIF rotation: a large JPEG is
    decoded at reduced scale, so `img.size` may be a half or a quarter of it."""
    noted = img.info.get(FULL_SIZE)
    if isinstance(noted, tuple) and len(noted) == 2 and noted[1] == img.size:
        return (int(noted[0][0]), int(noted[0][1]))
    return img.size


_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# Past this many pixels a decoded image is shrunk by a whole factor before anything else copies it: a
# 10900 x 10900 PNG (a few hundred KB) would otherwise take gigabytes through RGB conversion and resizing.
_REDUCE_ABOVE = 4096 * 4096


def _reduced(img: Image.Image, min_size: int | None) -> Image.Image:
    """A very large image box-averaged by the largest whole factor that keeps its shorter side >= min_size,
    as a JPEG's draft decoding does; other images as they are."""
    if not min_size or img.width * img.height <= _REDUCE_ABOVE:
        return img
    factor = min(img.size) // min_size
    if factor < 2:
        return img
    if img.mode in _WIDE_MODES:
        img = _to_8bit(img)
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    return img.reduce(factor)


def _in_8_bits(arr: np.ndarray) -> np.ndarray:
    """Wide values to uint8: 0..65535 scaled to 0..255, a wider range by its top, 0..255 as it is; a band
    of rows at a time, so a large image is never copied whole as float64."""
    top = float(arr.max()) if arr.size else 0.0
    scale = 255.0 / (65535.0 if top <= 65535.0 else top) if top > 255.0 else 1.0
    out = np.empty(arr.shape, dtype=np.uint8)
    for r in range(0, arr.shape[0], 256):
        out[r : r + 256] = np.clip(arr[r : r + 256].astype(np.float64) * scale, 0, 255)
    return out


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit grey to 8-bit ("L")."""
    return Image.fromarray(_in_8_bits(np.asarray(img)), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency on white, 16/32-bit scaled to 8-bit."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _WIDE_MODES:
        return _to_8bit(img).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
