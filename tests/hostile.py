"""A hostile photo corpus, generated on the fly: every messy file a real photo folder holds.

Each case says what every command must do with it:

- OK: a real image in an awkward form; it must load, train and predict.
- SKIP: looks like an image (by name) but cannot be read; commands skip it and say why.
- IGNORE: obviously not an image (hidden, or neither name nor magic bytes say image);
  scanning ignores it quietly.

`build_hostile_corpus(folder)` writes the files and returns {file name: Case}.
Tests for any command (train, predict, evaluate, check) can run over it.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

OK, SKIP, IGNORE = "ok", "skip", "ignore"


@dataclass(frozen=True)
class Case:
    outcome: str  # OK, SKIP or IGNORE
    why: str  # what the case stands for; for SKIP, a word the reason must contain ("" = any)
    size: tuple[int, int] | None = None  # for OK: the size after EXIF orientation


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(size: tuple[int, int], colour: tuple[int, int, int] = (200, 40, 40), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.array(colour, dtype=np.float32) + rng.normal(0, 18, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size but holds almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))


#: A file name that is not valid UTF-8 (Linux allows any bytes): str paths carry surrogates.
NON_UTF8_NAME = os.fsdecode(b"latin1_\xe9t\xe9.jpg")


def hostile_files(colour: tuple[int, int, int] = (200, 40, 40)) -> dict[str, tuple[bytes, Case]]:
    """{file name: (content, Case)}; readable images are tinted `colour`."""
    base = _photo((48, 40), colour)
    rgba = base.convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, base.size[0]).astype(np.uint8), (base.size[1], 1))
    rgba.putalpha(Image.fromarray(alpha, "L"))  # fully transparent at the left edge, opaque at the right
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    deep = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    frames = [base, _photo((48, 40), (0, 0, 0), seed=1)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    jpeg = _encode(base, "JPEG", quality=90)
    rng = np.random.default_rng(7)
    files: dict[str, tuple[bytes, Case]] = {
        "cmyk_scan.jpg": (_encode(base.convert("CMYK"), "JPEG"), Case(OK, "CMYK JPEG", (48, 40))),
        "transparent.png": (_encode(rgba, "PNG"), Case(OK, "RGBA PNG on white", (48, 40))),
        "grey_alpha.png": (_encode(rgba.convert("LA"), "PNG"), Case(OK, "LA PNG", (48, 40))),
        "palette.png": (_encode(palette, "PNG", transparency=0), Case(OK, "P with transparency", (48, 40))),
        "grey.png": (_encode(base.convert("L"), "PNG"), Case(OK, "L", (48, 40))),
        "deep16.png": (_encode(deep, "PNG"), Case(OK, "16-bit grey (I;16)", (48, 40))),
        "deep16.tif": (_encode(deep, "TIFF"), Case(OK, "16-bit TIFF", (48, 40))),
        "sideways.jpg": (_encode(base, "JPEG", exif=exif), Case(OK, "EXIF orientation 6", (40, 48))),
        "photo.webp": (_encode(base, "WEBP"), Case(OK, "WebP", (48, 40))),
        "photo.bmp": (_encode(base, "BMP"), Case(OK, "BMP", (48, 40))),
        "animated.gif": (gif.getvalue(), Case(OK, "GIF, first frame", (48, 40))),
        "scan.tiff": (_encode(base.convert("CMYK"), "TIFF"), Case(OK, "CMYK TIFF", (48, 40))),
        "one_pixel.png": (_encode(Image.new("RGB", (1, 1), colour), "PNG"), Case(OK, "1x1", (1, 1))),
        "panorama.jpg": (_encode(_photo((4000, 20), colour), "JPEG"), Case(OK, "4000x20", (4000, 20))),
        "花の写真 ünïcode.jpg": (jpeg, Case(OK, "unicode name", (48, 40))),
        NON_UTF8_NAME: (jpeg, Case(OK, "name that is not UTF-8", (48, 40))),
        "IMG_0001.JPG": (jpeg, Case(OK, "upper-case extension", (48, 40))),
        "download": (jpeg, Case(OK, "JPEG without an extension (found by magic bytes)", (48, 40))),
        "empty.jpg": (b"", Case(SKIP, "zero bytes", None)),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], Case(SKIP, "half-downloaded JPEG", None)),
        "noise.jpg": (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), Case(SKIP, "random bytes", None)),
        "page.png": (b"<!DOCTYPE html><html><body>404</body></html>", Case(SKIP, "HTML named .png", None)),
        "bomb.png": (png_header_only(40_000, 40_000), Case(SKIP, "pixel limit", None)),
        ".DS_Store": (b"\0\0\0\1Bud1" + bytes(64), Case(IGNORE, "macOS folder metadata", None)),
        "._IMG_0001.JPG": (b"\0\5\26\7\0\2\0\0Mac OS X", Case(IGNORE, "AppleDouble resource fork", None)),
        "Thumbs.db": (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64), Case(IGNORE, "Windows thumbnails", None)),
        "notes.txt": (b"picked on a sunny day\n", Case(IGNORE, "text file", None)),
        "labels.csv": (b"file,label\n", Case(IGNORE, "CSV", None)),
    }
    return files


def build_hostile_corpus(folder: Path, colour: tuple[int, int, int] = (200, 40, 40)) -> dict[str, Case]:
    """Write every hostile case into `folder` and return {file name: Case}."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = {}
    for name, (content, case) in hostile_files(colour).items():
        (folder / name).write_bytes(content)
        cases[name] = case
    return cases


def names_with(cases: dict[str, Case], outcome: str) -> set[str]:
    return {n for n, c in cases.items() if c.outcome == outcome}
