import numpy as np
import pytest
from PIL import Image

from flowerid.backbones import get_spec
from flowerid.data.preprocess import Preprocessing


@pytest.mark.parametrize(
    "name, resize, crop",
    [
        ("efficientnet_lite0", 256, 224),
        ("efficientnet_lite1", 272, 240),
        ("efficientnet_lite2", 292, 260),
        ("vgg16", 256, 224),
    ],
)
def test_sizes_come_from_the_spec(name, resize, crop):
    p = get_spec(name).preprocessing
    assert (p.resize_size, p.crop_size) == (resize, crop)


def test_normalises_with_the_specs_mean_and_std():
    p = Preprocessing(8, 10, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.25, 0.5))
    arr = p(Image.new("RGB", (30, 20), (255, 0, 128)))
    assert arr.shape == (3, 8, 8) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(arr[1], -2.0, atol=1e-6)
    np.testing.assert_allclose(arr[2], (128 / 255 - 0.5) / 0.5, atol=1e-3)


def test_centre_crop_of_a_wide_image():
    p = Preprocessing(4, 4, "nearest", (0, 0, 0), (1, 1, 1))
    img = Image.new("RGB", (12, 4), (0, 0, 0))
    img.paste((255, 255, 255), (4, 0, 8, 4))  # the middle third is white
    arr = p(img)
    np.testing.assert_allclose(arr, 1.0)


@pytest.mark.parametrize("size", [(1, 1), (4000, 20), (20, 4000)])
def test_extreme_shapes(size):
    p = get_spec("efficientnet_lite0").preprocessing
    assert p(Image.new("RGB", size, (9, 9, 9))).shape == (3, 224, 224)


def test_dict_round_trip():
    p = get_spec("efficientnet_lite2").preprocessing
    assert Preprocessing.from_dict(p.to_dict()) == p


def test_a_strip_is_resampled_only_where_the_crop_is(monkeypatch):
    """A 100000 x 1 PNG is 370 bytes; resized whole it would be 25,600,000 x 256 pixels (a server was
    killed for memory). Past 16:1 only the crop's box is resampled, with the same pixels as the whole
    resize would give."""
    p = get_spec("efficientnet_lite0").preprocessing
    made: list[int] = []
    resize = Image.Image.resize

    def counted(self, size, *args, **kwargs):
        made.append(size[0] * size[1])
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", counted)
    for size in [(100000, 1), (1, 100000)]:
        assert p(Image.new("RGB", size, (9, 9, 9))).shape == (3, 224, 224)
    assert max(made) == 224 * 224
    strip = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 6000, 3), dtype=np.uint8))
    (w, h), (left, top) = p._resized(strip.size)
    whole = resize(strip, (w, h), Image.Resampling.BICUBIC).crop((left, top, left + 224, top + 224))
    np.testing.assert_allclose(p(strip), p.to_array(whole), atol=1.5 / 127.5)
