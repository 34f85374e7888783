import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from flowerid.data.images import load_image, looks_like_image
from flowerid.errors import DecompressionBombError, ImageError, UsageError


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_rgba_goes_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    out = load_image(_bytes(img, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_la_and_palette_transparency():
    la = Image.new("LA", (3, 3), (0, 0))
    assert load_image(_bytes(la, "PNG")).getpixel((1, 1)) == (255, 255, 255)
    p = Image.new("P", (3, 3), 0)
    p.putpalette([10, 20, 30] * 256)
    p.info["transparency"] = 0
    assert load_image(_bytes(p, "PNG", transparency=0)).getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_scaled_to_8_bit():
    arr = np.full((5, 5), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    img = Image.fromarray(arr)
    out = np.asarray(load_image(_bytes(img, "PNG")))
    assert out[2, 2].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [0, 0, 0]


def test_cmyk_and_grey_become_rgb():
    assert load_image(_bytes(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG")).mode == "RGB"
    assert load_image(Image.new("L", (4, 4), 7)).getpixel((0, 0)) == (7, 7, 7)


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = load_image(_bytes(img, "JPEG", exif=exif))
    assert out.size == (20, 40)


def test_draft_keeps_shorter_side_at_least_min_size():
    big = Image.new("RGB", (2000, 1500), (10, 200, 30))
    out = load_image(_bytes(big, "JPEG"), min_size=300)
    assert min(out.size) >= 300 and min(out.size) < 1500


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(DecompressionBombError, match="over the pixel limit"):
        load_image(_png_header_only(50_000, 50_000))
    with pytest.raises(DecompressionBombError):
        load_image(_bytes(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5_000)


@pytest.mark.parametrize(
    "blob, why",
    [
        (b"", "is empty"),
        (b"<html><body>nope</body></html>", "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 20, "not an image"),
    ],
)
def test_garbage_is_an_image_error(blob, why):
    with pytest.raises(ImageError, match=why):
        load_image(blob)


def test_truncated_jpeg_is_an_image_error():
    data = _bytes(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    with pytest.raises(ImageError):
        load_image(data[: len(data) // 2])


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.jpg")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are a POSIX thing")
def test_a_pipe_or_a_device_is_refused_before_it_is_read(tmp_path):
    """Reading a named pipe waits for a writer forever, and /dev/zero never ends."""
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    with pytest.raises(ImageError, match="is a named pipe, not a photo file"):
        load_image(tmp_path / "pipe.jpg")
    with pytest.raises(ImageError, match="is a device, not a photo file"):
        load_image(tmp_path / "zero.jpg")


def test_iphone_heic_and_avif_photos_are_read_and_found_by_their_bytes(tmp_path):
    """HEIC is what iPhones save; AVIF what some phones and browsers do. Both by name and by content."""
    pillow_heif = pytest.importorskip("pillow_heif")
    img = Image.new("RGB", (64, 48), (200, 40, 40))
    pillow_heif.from_pillow(img).save(tmp_path / "IMG_0001.HEIC", quality=90)
    img.save(tmp_path / "photo.avif")
    (tmp_path / "IMG_0001.HEIC").rename(tmp_path / "IMG_0001")  # a name that says nothing
    for name in ("IMG_0001", "photo.avif"):
        assert looks_like_image(tmp_path / name)
        rgb = np.asarray(load_image(tmp_path / name))
        assert rgb.shape == (48, 64, 3) and abs(int(rgb[..., 0].mean()) - 200) < 12
    (tmp_path / "clip.bin").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 40)  # an MP4 video
    assert not looks_like_image(tmp_path / "clip.bin")


@pytest.mark.parametrize("mode", ["I;16", "RGBA", "P"])
def test_a_huge_image_is_shrunk_before_it_is_converted(mode):
    """Past 4096 x 4096 pixels an image is box-averaged by a whole factor (its shorter side kept >= min_size),
    as JPEG draft decoding does, before RGB conversion copies it: a 10900 x 10900 16-bit PNG of 231 KB
    took 2.4 GB to predict on."""
    colour = {"I;16": 30000, "RGBA": (200, 0, 0, 255), "P": 0}[mode]
    img = Image.new(mode, (4200, 4100), colour)
    if mode == "P":
        img.putpalette([200, 0, 0] * 256)
    out = load_image(_bytes(img, "PNG"), min_size=256)
    assert out.mode == "RGB" and out.size == (263, 257)  # 4200 / 16 and 4100 / 16, rounded up
    expected = (116, 116, 116) if mode == "I;16" else (200, 0, 0)  # 30000 * 255 / 65535 = 116.7, truncated
    assert out.getpixel((5, 5)) == expected
    assert load_image(_bytes(img, "PNG")).size == (4200, 4100)  # without min_size: whole
    assert load_image(_bytes(img.crop((0, 0, 4000, 4000)), "PNG"), min_size=256).size == (4000, 4000)


def test_a_photo_as_callers_hold_one(tmp_path):
    """Numpy arrays (OpenCV, matplotlib), open files, bytearrays: read as photos; anything else is a usage
    error that says what a photo may be, not a stat() message with the object's repr."""
    rgb = np.zeros((30, 40, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    assert load_image(rgb).getpixel((3, 3)) == (200, 0, 0)
    assert load_image(rgb.astype(np.float32) / 255).getpixel((3, 3)) == (200, 0, 0)  # matplotlib's 0..1
    assert load_image(np.full((30, 40), 90, dtype=np.uint8)).getpixel((1, 1)) == (90, 90, 90)
    assert load_image(np.ones((30, 40, 1), dtype=bool)).getpixel((1, 1)) == (255, 255, 255)
    assert load_image(np.zeros((30, 40, 4), dtype=np.uint8)).getpixel((1, 1)) == (255, 255, 255)  # transparent
    assert load_image(np.full((30, 40), 65535, dtype=np.uint16)).getpixel((1, 1)) == (255, 255, 255)
    for bad, why in [
        (np.zeros((30, 40, 2), np.uint8), "not a picture"),
        (np.zeros(7, np.uint8), "not a picture"),
        (np.full((3, 3), np.nan), "NaN"),
        (np.zeros((3, 3), dtype=object), "not numbers"),
    ]:
        with pytest.raises(ImageError, match=why) as exc:
            load_image(bad)
        assert "numpy array" in str(exc.value) and "[[" not in str(exc.value)
    png = _bytes(Image.new("RGB", (20, 10), (1, 2, 3)), "PNG")
    assert load_image(bytearray(png)).size == (20, 10)
    (tmp_path / "a.png").write_bytes(png)
    with open(tmp_path / "a.png", "rb") as f:
        assert load_image(f).getpixel((0, 0)) == (1, 2, 3)
        assert not f.closed  # the caller's file stays the caller's
    with open(tmp_path / "a.png") as f, pytest.raises(ImageError, match="open it with 'rb'"):
        load_image(f)
    assert load_image(io.BytesIO(png)).size == (20, 10)
    for wrong, hint in [(None, "got NoneType"), (["a.jpg"], "use predict_many"), (3, "got int")]:
        with pytest.raises(UsageError, match=hint):
            load_image(wrong)
    with pytest.raises(ImageError, match="download the photo first"):
        load_image("https://example.com/rose.jpg")


def test_a_finished_file_a_huge_array_and_16_bit_arrays(tmp_path):
    """An open file already read to its end is an empty photo, not a TypeError that stops predict_many;
    an array over the pixel limit is refused before any copy is made; uint16 reads as a 16-bit PNG does."""
    png = _bytes(Image.new("RGB", (20, 10)), "PNG")
    stream = io.BytesIO(png)
    stream.read()
    with pytest.raises(ImageError, match="empty"):
        load_image(stream)
    with pytest.raises(ImageError, match="empty"):
        load_image(io.BytesIO(b""))
    huge = np.broadcast_to(np.uint8(100), (20000, 20000, 3))  # no memory of its own: a copy would take 1.2 GB
    with pytest.raises(DecompressionBombError, match="20000x20000"):
        load_image(huge)
    dim = np.full((8, 8), 30000, dtype=np.uint16)
    assert load_image(dim).getpixel((0, 0)) == (116, 116, 116)  # 30000 of 65535, not of its own maximum
