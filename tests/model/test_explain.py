"""Explanations: the map splits the logit exactly (frozen, tuned and ensemble linear heads), Grad-CAM for a
hidden layer is marked inexact, and `box` finds the crop in the photo's own pixels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

import flowerid
from flowerid.backbones import register_backbone
from flowerid.data.images import photo_size
from flowerid.data.preprocess import Preprocessing
from flowerid.model.explain import MapLayout, explain_rows, head_slope, spread_matrix
from flowerid.training.config import TrainConfig
from flowerid.training.run import train

from ..conftest import CLASS_COLOURS, make_photo

JSON_FIELDS = {"category", "grid", "box", "logit", "bias", "exact"}


def _photos(folder, split="valid"):
    return sorted(p for c in ("1", "10", "2") for p in (folder / split / c).iterdir())


def _head_logits(clf, photos) -> np.ndarray:
    """The logits `predict` computes: the plain graph's features through the numpy head."""
    return clf.head(clf.backbone.engine(np.stack([clf.preprocess(p) for p in photos])))


def _check_identity(clf, photos, atol=1e-4):
    """Every photo's map, for its top category and another one, splits the logit predict computes."""
    logits = _head_logits(clf, photos)
    for photo, row in zip(photos, logits, strict=True):
        for cat in (None, clf.categories[int(np.argmin(row))]):
            e = clf.explain(photo, cat)
            c = clf.categories.index(e.category)
            assert e.grid.mean() + e.bias == pytest.approx(e.logit, abs=1e-5)
            assert e.logit == pytest.approx(float(row[c]), abs=atol)
            if cat is None:
                assert c == int(np.argmax(row))
    return e


# ---------------------------------------------------------------- the arithmetic


@pytest.mark.parametrize(
    "n_in,n_out,start,end", [(7, 9, 0.0, 1.0), (7, 9, 0.017, 0.983), (8, 9, 0.01, 0.99), (3, 3, 0, 1)]
)
def test_spreading_a_grid_onto_a_finer_one_keeps_its_mean(n_in, n_out, start, end):
    m = spread_matrix(n_in, n_out, start, end)
    g = np.random.default_rng(0).normal(size=(n_in, n_in))
    assert (m @ g @ m.T).mean() == pytest.approx(g.mean(), rel=1e-12)
    if n_in == n_out and (start, end) == (0, 1):
        np.testing.assert_allclose(m, np.eye(n_in), atol=1e-12)
    # A member seeing only the middle puts nothing on the common grid's outer edge cells beyond its share.
    assert (m >= 0).all()


@pytest.mark.parametrize("norm,flip", [(None, False), (10.0, False), (None, True), (10.0, True)])
def test_an_ensembles_summed_grid_splits_its_logit_scaled_and_mirrored(norm, flip):
    rng = np.random.default_rng(1)
    layout = MapLayout(((0.0, 1.0), (0.02, 0.98)), (5, 4), norm, flip)
    maps = [rng.random((2, 5, 9, 9)).astype(np.float32), rng.random((2, 4, 7, 7)).astype(np.float32)]
    mirrored = [rng.random(m.shape).astype(np.float32) for m in maps] if flip else None
    w, b = rng.normal(size=(9, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    pooled = layout.pooled(maps, mirrored)
    rows = explain_rows(layout, [(w, b)], maps, pooled, [[0, 2], [1]], mirrored)
    for r, cats in enumerate([[0, 2], [1]]):
        for (grid, logit, bias, exact), c in zip(rows[r], cats, strict=True):
            assert grid.shape == (9, 9) and exact
            assert logit == pytest.approx(float(pooled[r] @ w[:, c] + b[c]), rel=1e-9)
            assert grid.mean() + bias == pytest.approx(logit, rel=1e-9)


def test_a_hidden_layers_slope_is_the_gradient_and_splits_the_logit_near_the_photo():
    import torch

    rng = np.random.default_rng(2)
    w1, b1 = rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    w2, b2 = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    f = rng.normal(size=6)
    g, bias = head_slope([(w1, b1), (w2, b2)], f, 1)
    x = torch.tensor(f, requires_grad=True)
    logit = torch.relu(x @ torch.from_numpy(w1).double() + torch.from_numpy(b1).double()) @ torch.from_numpy(
        w2[:, 1]
    ).double() + float(b2[1])
    logit.backward()
    np.testing.assert_allclose(g, x.grad.numpy(), rtol=1e-6)  # Grad-CAM's weights (times the cell count)
    assert g @ f + bias == pytest.approx(float(logit.detach()), rel=1e-9)
    maps = [rng.random((1, 6, 3, 3))]
    layout = MapLayout(((0.0, 1.0),), (6,))
    ((grid, lg, bs, exact),) = explain_rows(layout, [(w1, b1), (w2, b2)], maps, layout.pooled(maps), [[1]])[0]
    assert not exact and grid.mean() + bs == pytest.approx(lg, rel=1e-9)


# ---------------------------------------------------------------- box


PREP = Preprocessing(crop_size=32, resize_size=36, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.mark.parametrize(
    "size,expected",
    [
        ((400, 300), (400 / 2 - 300 * 16 / 36, 300 / 36 * 2, 400 / 2 + 300 * 16 / 36, 300 / 36 * 34)),  # landscape
        ((300, 600), (300 / 36 * 2, 300 - 300 * 16 / 36, 300 / 36 * 34, 300 + 300 * 16 / 36)),  # portrait
        ((3000, 500), (1500 - 500 * 16 / 36, 500 / 36 * 2, 1500 + 500 * 16 / 36, 500 / 36 * 34)),  # panorama
    ],
)
def test_the_box_is_the_centre_crop_in_the_photos_own_pixels(size, expected):
    np.testing.assert_allclose(PREP.crop_box(size), expected, atol=size[0] / 36)  # within one resized pixel


def test_the_box_of_a_rotated_jpeg_decoded_at_reduced_scale_is_in_its_upright_pixels(trained, tmp_path):
    clf = flowerid.load(trained[1].checkpoint_path)
    sideways = Image.new("RGB", (2400, 1200), CLASS_COLOURS["10"])
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise: upright it is 1200 wide, 2400 high
    sideways.save(tmp_path / "turned.jpg", quality=90, exif=exif)
    img = flowerid.load_image(tmp_path / "turned.jpg", min_size=clf.preprocessing.resize_size)
    assert img.size[0] < 1200 / 4  # draft decoding: far fewer pixels than the photo has
    _, box = clf.explainer.prepare(tmp_path / "turned.jpg")
    crop = 1200 * 32 / 36  # the crop's side in the photo's pixels (tiny backbone: resize 36, crop 32)
    expected = ((1200 - crop) / 2, (2400 - crop) / 2, (1200 + crop) / 2, (2400 + crop) / 2)
    np.testing.assert_allclose(box, expected, atol=40)
    e = clf.explain(tmp_path / "turned.jpg")
    assert e.box == box and e.box[3] > 1200  # below a landscape photo's bottom: the photo upright


# ---------------------------------------------------------------- networks


def test_a_frozen_linear_heads_map_splits_the_logit_predict_computes(trained):
    data, result = trained
    clf = flowerid.load(result.checkpoint_path)
    e = _check_identity(clf, _photos(data)[:6])
    assert e.exact and e.grid.shape == (8, 8)  # the tiny backbone: 32 px, two stride-2 convolutions
    d = e.to_dict()
    assert set(d) == JSON_FIELDS and len(d["grid"]) == 8 and all(len(r) == 8 for r in d["grid"])
    assert isinstance(d["grid"][0][0], float) and len(d["box"]) == 4
    with pytest.raises(flowerid.UsageError, match="not one of this model's 3 categories"):
        clf.explain(_photos(data)[0], "99")
    # By name as well as by id.
    assert clf.explain(_photos(data)[0], "globe thistle").category == "10"


def test_an_unreadable_photo_is_an_image_error_and_the_others_are_explained(trained, tmp_path):
    data, result = trained
    clf = flowerid.load(result.checkpoint_path)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    out = clf.explainer.explain_photos([_photos(data)[0], bad, _photos(data)[-1]], top_k=2, k=2)
    assert isinstance(out[1], flowerid.ImageError)
    assert [len(r.explanations) for r in (out[0], out[2])] == [2, 2]
    assert out[0].predictions[0].category == out[0].explanations[0].category


def test_a_hidden_layer_heads_map_is_grad_cam_and_says_it_is_inexact(image_folder, tmp_path):
    cfg = TrainConfig(arch="tiny_test", epochs=5, learning_rate=0.02, hidden_units=8, num_workers=0)
    result = train(image_folder, tmp_path / "run", cfg, log=lambda s: None)
    clf = flowerid.load(result.checkpoint_path)
    e = _check_identity(clf, _photos(image_folder)[:4])
    assert not e.exact and e.to_dict()["exact"] is False


TUNABLE = "tiny_effnet_explain"


def _tunable(size: int, name: str = TUNABLE):
    """A random EfficientNet-Lite0 at `size` px (2x2 cells at 64, 3x3 at 96), tunable like the real ones."""
    from ..training.test_finetune import effnet_spec

    spec = dataclasses.replace(effnet_spec(), name=name, input_size=size)
    return register_backbone(spec, replace=True)


def test_a_tuned_networks_map_splits_the_logit_on_onnx_and_torch(image_folder, tmp_path):
    spec = _tunable(64)
    cfg = TrainConfig.from_preset("fast", arch=spec.name, tune_stages=1, epochs=1, learning_rate=0.01, num_workers=0)
    result = train(image_folder, tmp_path / "run", cfg, log=lambda s: None)
    photos = _photos(image_folder)[:4]
    by_onnx = flowerid.load(result.checkpoint_path, device="cpu", engine="onnx")
    e = _check_identity(by_onnx, photos)
    assert e.exact and e.grid.shape == (2, 2)
    by_torch = flowerid.load(result.checkpoint_path, device="cpu", engine="torch")
    t, o = by_torch.explain(photos[-1]), by_onnx.explain(photos[-1])
    assert t.category == o.category
    np.testing.assert_allclose(t.grid, o.grid, atol=1e-3)


def test_an_ensembles_members_maps_sum_on_one_grid_that_splits_the_logit(image_folder, tmp_path):
    from flowerid.backbones.spec import ensemble_spec, unregister_backbone

    small, big = _tunable(64), _tunable(96, TUNABLE + "_big")
    pair = register_backbone(
        ensemble_spec("tiny_pair_explain", (small.name, big.name), member_norm=None, member_view="own"), replace=True
    )
    try:
        cfg = TrainConfig.from_preset(
            "fast", arch=pair.name, tune_stages=1, epochs=1, learning_rate=0.01, num_workers=0
        )
        result = train(image_folder, tmp_path / "run", cfg, log=lambda s: None)
        clf = flowerid.load(result.checkpoint_path, device="cpu")
        layout = clf.explainer.layout
        assert layout.extents[1] == (0.0, 1.0) and 0 < layout.extents[0][0] < 0.1  # the small one sees the middle
        e = _check_identity(clf, _photos(image_folder)[:4])
        assert e.exact and e.grid.shape == (3, 3)  # the finer member's grid
    finally:
        unregister_backbone(pair.name)
        unregister_backbone(big.name)


def test_the_map_points_at_the_part_of_the_photo_that_makes_the_answer(trained, tmp_path):
    """A primrose-coloured patch on a grey photo: the primrose map is hottest on the patch."""
    clf = flowerid.load(trained[1].checkpoint_path)
    photo = np.full((64, 64, 3), 128, dtype=np.uint8)
    patch = np.asarray(make_photo(CLASS_COLOURS["1"], 5, size=(24, 24)))
    photo[36:60, 36:60] = patch
    Image.fromarray(photo).save(tmp_path / "patch.png")
    e = clf.explain(tmp_path / "patch.png", "1")
    cells = e.cell_boxes()
    i, j = np.unravel_index(np.argmax(e.grid), e.grid.shape)
    x0, y0, x1, y1 = cells[i, j]
    assert x1 > 36 and y1 > 36, (cells[i, j], e.grid.round(2))


def test_a_resized_copy_of_a_reduced_decode_is_its_own_photo(tmp_path):
    big = Image.new("RGB", (2000, 1000), (10, 200, 10))
    big.save(tmp_path / "big.jpg", quality=90)
    img = flowerid.load_image(tmp_path / "big.jpg", min_size=100)
    assert img.size[0] < 2000 and photo_size(img) == (2000, 1000)
    assert photo_size(img.resize((300, 150))) == (300, 150)  # Pillow copies `info`; the size no longer matches
