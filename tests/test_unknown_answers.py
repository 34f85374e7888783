"""Every answer says whether a photo is one of the model's categories: library, CLI, API, evaluate, info."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import flowerid
from flowerid.apps.cli import main
from flowerid.apps.server import ServeConfig, create_app
from flowerid.errors import UsageError
from flowerid.evaluation.run import evaluate
from flowerid.model.checkpoint import load_checkpoint, save_checkpoint
from flowerid.model.info import checkpoint_info, format_info
from flowerid.training.config import TrainConfig
from flowerid.training.run import train
from flowerid.training.unknown import class_means

from .conftest import TINY, make_photo


def _white(path=None):
    """A blank white photo: nothing like the three colours the tiny model knows."""
    img = Image.new("RGB", (48, 40), (250, 250, 250))
    if path is not None:
        img.save(path)
    return img


@pytest.fixture
def old_checkpoint(trained, tmp_path):
    """The trained model as a flowerid from before this feature wrote it: no "unknown" entry."""
    ckpt = load_checkpoint(trained[1].checkpoint_path)
    del ckpt["unknown"]
    return save_checkpoint(ckpt, tmp_path / "old.pth")


def test_predict_says_known_for_its_flowers_and_not_for_other_things(trained):
    data, result = trained
    clf = flowerid.load(result.checkpoint_path)
    flower = clf.predict(next((data / "test" / "10").iterdir()), top_k=3)
    other = clf.predict(_white(), top_k=3)
    assert all(p.known is True for p in flower) and len({p.unknown_score for p in flower}) == 1
    assert all(p.known is False for p in other)
    assert other[0].unknown_score > clf.unknown.threshold >= flower[0].unknown_score
    assert [p.to_dict() for p in other][0].keys() == {
        "category",
        "name",
        "probability",
    }  # predictions stay as they were
    many = clf.predict_many([_white(), next((data / "test" / "1").iterdir())], top_k=1)
    assert [r[0].known for r in many] == [False, True]


def test_the_checkpoint_keeps_plain_tensors_and_the_accept_rate(trained):
    ckpt = torch.load(trained[1].checkpoint_path, weights_only=True)
    state = ckpt["unknown"]
    assert state["method"] == "gen+cosine" and state["accept_rate"] == 0.95
    assert isinstance(state["means"], torch.Tensor) and state["means"].shape == (3, 16)
    assert ckpt["training"]["accept_rate"] == 0.95


def test_accept_rate_and_negatives_from_the_command_line(image_folder, tmp_path, capsys):
    negatives = tmp_path / "other" / "nested"
    negatives.mkdir(parents=True)
    for i in range(6):
        make_photo((230, 220, 30), 100 + i).save(negatives / f"yellow{i}.jpg")
    (negatives / "notes.txt").write_text("not a photo")
    args = ["train", str(image_folder), "--save-dir", str(tmp_path / "run"), "--arch", TINY, "--epochs", "5"]
    assert main([*args, "--accept-rate", "0.9", "--negatives", str(tmp_path / "other")]) == 0
    out = capsys.readouterr().out
    assert "negatives:" in out and "unknown photos: gen+cosine" in out
    clf = flowerid.load(tmp_path / "run" / "checkpoint.pth")
    assert clf.unknown.accept_rate == 0.9 and len(clf.unknown.negatives) == 6
    assert clf.checkpoint["metrics"]["unknown"]["negatives_rejected"] == 1.0
    assert main([*args, "--accept-rate", "0.2"]) == 2
    assert "--accept-rate" in capsys.readouterr().err


def test_negatives_folder_without_photos_is_a_clear_error(image_folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = ["train", str(image_folder), "--save-dir", str(tmp_path / "run"), "--arch", TINY, "--epochs", "2"]
    assert main([*args, "--negatives", str(tmp_path / "empty")]) != 0
    assert "no readable photos" in capsys.readouterr().err


def test_predict_json_and_text(trained, tmp_path, capsys):
    data, result = trained
    white = tmp_path / "white.png"
    _white(white)
    flower = next((data / "test" / "2").iterdir())
    ckpt = str(result.checkpoint_path)
    assert main(["predict", str(white), str(flower), "--checkpoint", ckpt, "--json", "--top-k", "2"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [list(r) for r in records] == [["image", "known", "unknown_score", "predictions"]] * 2
    assert [r["known"] for r in records] == [False, True]
    assert records[0]["unknown_score"] > records[1]["unknown_score"] and len(records[0]["predictions"]) == 2
    assert main(["predict", str(white), str(flower), "--checkpoint", ckpt]) == 0
    text = capsys.readouterr().out
    first, second = text.split(str(flower))
    assert "not one of the 3 categories I know (closest: " in first
    assert "not one of" not in second


def test_an_older_checkpoint_loads_and_says_it_cannot_tell(old_checkpoint, tmp_path, capsys):
    clf = flowerid.load(old_checkpoint)
    assert clf.unknown is None
    preds = clf.predict(_white())
    assert preds[0].known is None and preds[0].unknown_score is None
    white = tmp_path / "w.png"
    _white(white)
    assert main(["predict", str(white), "--checkpoint", str(old_checkpoint), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)[0]
    assert rec["known"] is None and rec["unknown_score"] is None
    info = checkpoint_info(old_checkpoint)
    assert info["unknown"] is None and "cannot tell" in format_info(info)
    with pytest.raises(UsageError, match="retrain"):
        evaluate(old_checkpoint, tmp_path, unknown=tmp_path, log=lambda s: None)


def test_info_shows_method_and_threshold(trained):
    info = checkpoint_info(trained[1].checkpoint_path)
    assert info["unknown"]["method"] == "gen+cosine" and info["unknown"]["accept_rate"] == 0.95
    text = format_info(info)
    assert "unknown photos" in text and f"{info['unknown']['threshold']:.4g}" in text


def test_the_api_tells_unknown_from_unsure(trained):
    clf = flowerid.load(trained[1].checkpoint_path)
    buf = io.BytesIO()
    _white().save(buf, "PNG")
    white = buf.getvalue()
    flower = next((trained[0] / "test" / "10").iterdir()).read_bytes()
    with TestClient(create_app(clf, ServeConfig(unsure_below=1.0))) as c:
        other = c.post("/predict", content=white).json()
        known = c.post("/predict", content=flower).json()
        assert c.get("/health").json()["model"]["tells_unknown"] is True
    assert other["known"] is False and other["unsure"] is False and other["predictions"]
    assert known["known"] is True and known["unsure"] is True  # a flower it knows, under the (1.0) unsure bar
    assert isinstance(other["unknown_score"], float)


def test_evaluate_unknown_folder(trained, tmp_path, capsys):
    data, result = trained
    others = tmp_path / "others"
    others.mkdir()
    for i, colour in enumerate([(250, 250, 250), (230, 220, 30), (0, 0, 0), (128, 128, 128)]):
        make_photo(colour, 300 + i).save(others / f"o{i}.jpg")
    (others / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "eval"
    code = main(
        ["evaluate", str(result.checkpoint_path), str(data / "test"), "--unknown", str(others), "--out", str(out)]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "AUROC" in text and "photos of other things (4 in" in text
    saved = json.loads((out / "metrics.json").read_text())
    u = saved["unknown"]
    assert u["n_unknown"] == 4 and u["n_known"] == 12 and 0.0 <= u["auroc"] <= 1.0
    assert u["auroc"] > 0.9 and u["unknown_accepted_at_threshold"] == 0.0
    assert u["threshold"] == pytest.approx(flowerid.load(result.checkpoint_path).unknown.threshold)
    assert saved["skipped"] == 1 and "known_rejected" in saved
    assert (out / "unknown.png").exists() and "Photos of other things" in (out / "report.html").read_text()


def test_fitting_uses_the_photos_not_their_augmented_views(image_folder, tmp_path):
    """With --views the class means still come from the photos themselves, as predict sees them."""
    cfg = TrainConfig(arch=TINY, epochs=3, views=2, num_workers=0)
    clf = flowerid.load(train(image_folder, tmp_path / "run", cfg, log=lambda s: None).checkpoint_path)
    paths = sorted(p for c in ("1", "10", "2") for p in (image_folder / "train" / c).iterdir())
    feats = clf.backbone.engine(np.stack([clf.preprocess(p) for p in paths]))
    labels = np.repeat([0, 1, 2], 8)
    np.testing.assert_allclose(clf.unknown.means, class_means(feats, labels, 3), atol=1e-5)


def test_a_one_category_model_says_so_in_words():
    """`train` on one folder makes a "rose or not" detector; its answer reads as English."""
    from flowerid.apps.printing import format_predictions

    preds = [{"name": "rose", "category": "1", "probability": 1.0}]
    assert "  not the one category I know (closest: rose)" in format_predictions("x", preds, False, 1)
    assert "  not one of the 3 categories I know (closest: rose)" in format_predictions("x", preds, False, 3)


def test_the_library_takes_a_numpy_photo_and_refuses_a_top_k_that_is_not_a_whole_number(trained):
    data, result = trained
    clf = flowerid.load(result.checkpoint_path)
    path = next((data / "test" / "10").iterdir())
    as_array = np.asarray(Image.open(path).convert("RGB"))
    assert clf.predict(as_array, top_k=2) == clf.predict(path, top_k=2)
    assert clf.predict(path, top_k=np.int64(2)) == clf.predict(path, top_k=2)
    for bad in (2.5, "3", True):
        with pytest.raises(UsageError, match="whole number"):
            clf.predict(path, top_k=bad)
        with pytest.raises(UsageError, match="whole number"):
            clf.predict_many([path], top_k=bad)


def test_a_backbone_that_gives_nan_is_an_error_not_nan_answers(trained):
    """A damaged tuned backbone file gives NaN features: a CheckpointError, not NaN probabilities that
    crashed the table, wrote invalid JSON and a CSV of `nan`."""
    from flowerid.errors import CheckpointError

    data, result = trained
    clf = flowerid.load(result.checkpoint_path)
    path = next((data / "test" / "10").iterdir())
    batch = clf.preprocess(path)[None]
    features = clf.backbone.engine(batch)
    assert clf.forward(batch)[0].shape[0] == 1  # works as ever

    def broken(b):
        return np.full((len(b), features.shape[1]), np.nan, np.float32)

    with pytest.raises(CheckpointError, match="NaN or infinite features"):
        clf.forward(batch, engine=broken)
