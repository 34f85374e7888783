import json

import numpy as np
import pytest
from PIL import Image

import flowerid
from flowerid.errors import DataError, DeviceError, ImageError, UsageError
from flowerid.training.run import TrainConfig, train

from ..conftest import CLASS_COLOURS, TINY, make_photo


def test_training_learns_and_writes_its_files(trained):
    data, result = trained
    run = result.checkpoint_path.parent
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["valid_acc"] >= 0.9
    assert metrics["test_acc"] >= 0.9
    assert len(metrics["history"]) == 30
    assert 1 <= metrics["best_epoch"] <= 30
    best = metrics["history"][metrics["best_epoch"] - 1]
    assert best["valid_acc"] == max(h["valid_acc"] for h in metrics["history"])


def test_second_run_uses_the_cache(image_folder, tmp_path):
    cfg = TrainConfig(arch=TINY, epochs=2, num_workers=0)
    first = train(image_folder, tmp_path / "a", cfg, log=lambda s: None)
    assert first.metrics["features_computed"] == 48
    second = train(image_folder, tmp_path / "b", cfg, log=lambda s: None)
    assert second.metrics["features_computed"] == 0
    third = train(
        image_folder,
        tmp_path / "c",
        TrainConfig(arch=TINY, epochs=2, num_workers=0, use_cache=False),
        log=lambda s: None,
    )
    assert third.metrics["features_computed"] == 48


def test_epoch_lines_are_printed(image_folder, tmp_path):
    lines: list[str] = []
    train(image_folder, tmp_path / "r", TrainConfig(arch=TINY, epochs=3, num_workers=1), log=lines.append)
    epochs = [s for s in lines if s.startswith("epoch")]
    assert len(epochs) == 3 and all("valid loss" in s and "acc" in s for s in epochs)


def test_unreadable_images_are_skipped_and_listed(image_folder, tmp_path):
    (image_folder / "train" / "1" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = train(image_folder, tmp_path / "r", TrainConfig(arch=TINY, epochs=1, num_workers=0), log=lambda s: None)
    assert list(result.skipped) == [str(image_folder / "train" / "1" / "broken.jpg")]
    assert "broken.jpg" in (tmp_path / "r" / "skipped.tsv").read_text()


def test_bad_settings_fail_before_work(image_folder, tmp_path):
    with pytest.raises(UsageError):
        train(image_folder, tmp_path, TrainConfig(arch=TINY, epochs=0))
    with pytest.raises(DataError):
        train(tmp_path / "nowhere", tmp_path, TrainConfig(arch=TINY))
    with pytest.raises(flowerid.BackboneError):
        train(image_folder, tmp_path, TrainConfig(arch="nope"))


def test_cuda_without_gpu_is_a_clear_error(image_folder, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="no CUDA"):
        train(image_folder, tmp_path, TrainConfig(arch=TINY, device="cuda"))


def test_predict_path_bytes_and_pil_agree(trained):
    data, result = trained
    clf = flowerid.load(result.checkpoint_path)
    path = next((data / "valid" / "10").iterdir())
    a = clf.predict(path, top_k=3)
    b = clf.predict(Image.open(path), top_k=3)
    c = clf.predict(path.read_bytes(), top_k=3)
    assert [p.category for p in a] == [p.category for p in b] == [p.category for p in c]
    np.testing.assert_allclose([p.probability for p in a], [p.probability for p in b], atol=1e-6)
    assert a[0].category == "10" and a[0].name == "globe thistle"


def test_probabilities_are_a_softmax_over_all_classes(trained):
    clf = flowerid.load(trained[1].checkpoint_path)
    preds = clf.predict(make_photo(CLASS_COLOURS["2"], 999), top_k=10)
    assert len(preds) == 3
    assert sum(p.probability for p in preds) == pytest.approx(1.0, abs=1e-6)
    assert preds == sorted(preds, key=lambda p: -p.probability)


def test_head_in_numpy_matches_torch(trained):
    import torch

    from flowerid.model.head import HeadConfig, build_head

    clf = flowerid.load(trained[1].checkpoint_path)
    head = build_head(HeadConfig.from_dict(clf.checkpoint["head"]["config"]))
    head.load_state_dict(clf.checkpoint["head"]["state_dict"])
    x = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(clf.head(x), head.eval()(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_mlp_head_round_trip(image_folder, tmp_path):
    result = train(
        image_folder,
        tmp_path,
        TrainConfig(arch=TINY, epochs=2, hidden_units=8, dropout=0.2, num_workers=0),
        log=lambda s: None,
    )
    clf = flowerid.load(result.checkpoint_path)
    assert len(clf.predict(next((image_folder / "test" / "1").iterdir()))) == 3


def test_predict_many_reports_bad_files(trained, tmp_path):
    data, result = trained
    bad = tmp_path / "bad.png"
    bad.write_text("<html>")
    good = next((data / "test" / "2").iterdir())
    out = flowerid.load(result.checkpoint_path).predict_many([good, bad, good])
    assert isinstance(out[1], ImageError) and out[0][0].category == "2" and out[2][0].category == "2"


def test_category_names_override(trained, tmp_path):
    names = tmp_path / "n.json"
    names.write_text(json.dumps({"1": "one"}))
    clf = flowerid.load(trained[1].checkpoint_path, category_names=names)
    assert clf.names == ["one", "globe thistle", "hard-leaved pocket orchid"]
