"""Exports give the same answers as `predict`, and an app can feed them from the manifest alone."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowerid.apps.cli import build_parser, main
from flowerid.errors import DataError, UsageError
from flowerid.model.export import (
    FORMATS,
    OUTPUTS,
    QUANTIZATIONS,
    ExportModel,
    build_export_model,
    export_checkpoint,
    export_onnx,
)
from flowerid.model.predictor import Classifier

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

MANIFEST_KEYS = {"format", "version", "model", "input", "preprocessing", "output", "unknown", "categories", "names"}


def _photos(data: Path) -> list[Path]:
    return sorted(p for split in ("valid", "test") for p in (data / split).rglob("*") if p.is_file())


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    sess = _session(path)
    return sess.run(None, {sess.get_inputs()[0].name: batch})[0]


def manifest_preprocess(path: Path, manifest: dict) -> np.ndarray:
    """An app's preprocessing, written from the manifest and the README's rounding rule: PIL and numpy only.

    README: the longer side becomes floor(resize_size * long / short); the crop starts at round((side - crop) / 2).
    """
    pre = manifest["preprocessing"]
    img = Image.open(path).convert("RGB")
    w, h = img.size
    r = pre["resize_size"]
    size = (r, r * h // w) if w <= h else (r * w // h, r)
    resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[pre["interpolation"]]
    img = img.resize(size, resample)
    c = pre["crop_size"]
    left, top = round((size[0] - c) / 2), round((size[1] - c) / 2)
    arr = np.asarray(img.crop((left, top, left + c, top + c)), dtype=np.float32) / 255.0
    arr = (arr - np.array(pre["mean"], dtype=np.float32)) / np.array(pre["std"], dtype=np.float32)
    return arr.transpose(2, 0, 1)


@pytest.fixture(scope="module")
def reference(trained):
    """predict's answers on every photo of the synthetic set: top-1 category and probabilities."""
    data, result = trained
    clf = Classifier.load(result.checkpoint_path, device="cpu")
    photos = _photos(data)
    batch = np.stack([clf.preprocess(p) for p in photos])
    top1 = [clf.predict(p, top_k=1)[0].category for p in photos]
    return clf, photos, batch, clf.predict_proba(batch), top1


def test_exports_give_the_unknown_score_as_a_second_output(trained, reference, tmp_path):
    """An app gets predict's unknown score and verdict from the graph and the manifest, with no flowerid."""
    _, result = trained
    clf, photos, batch, probs, _ = reference
    scores = clf.forward(batch)[1]
    odd = np.random.default_rng(0).normal(0, 3, batch[:4].shape).astype(np.float32)  # noise: not like any photo
    odd_scores = clf.forward(odd)[1]
    res = export_checkpoint(result.checkpoint_path, tmp_path / "flowers.onnx")
    sess = _session(res.model_path)
    assert [o.name for o in sess.get_outputs()] == ["probabilities", "unknown_score"]
    out, score = sess.run(None, {"input": batch})
    np.testing.assert_allclose(out, probs, atol=1e-4)
    np.testing.assert_allclose(score, scores, atol=1e-4)
    np.testing.assert_allclose(sess.run(None, {"input": odd})[1], odd_scores, atol=1e-4)
    manifest = res.manifest
    assert manifest["unknown"]["output"] == "unknown_score"
    assert manifest["unknown"]["threshold"] == clf.unknown.threshold
    verdict = lambda s: s <= manifest["unknown"]["threshold"]  # noqa: E731 (the manifest's rule)
    assert (verdict(score) == clf.unknown.known(scores)).all() and not verdict(odd_scores).all()

    # An added category's offset (model/add.py) is in the graph too: the same score as predict's.
    from dataclasses import replace

    from flowerid.model.checkpoint import load_checkpoint, save_checkpoint
    from flowerid.model.unknown import UnknownDetector

    ck = load_checkpoint(result.checkpoint_path)
    det = UnknownDetector.of_checkpoint(ck)
    ck["unknown"] = replace(det, offsets=np.linspace(0.0, 5.0, len(det.means))).to_state()
    ck["backbone"]["weights_path"] = (
        str(result.checkpoint_path.parent / ck["backbone"]["weights_path"])
        if ck["backbone"].get("weights_path")
        else None
    )
    save_checkpoint(ck, tmp_path / "offsets.pth")
    shifted = Classifier.load(tmp_path / "offsets.pth", device="cpu")
    assert not np.allclose(shifted.forward(batch)[1], scores)
    res2 = export_checkpoint(tmp_path / "offsets.pth", tmp_path / "offsets.onnx")
    np.testing.assert_allclose(
        _session(res2.model_path).run(None, {"input": batch})[1], shifted.forward(batch)[1], atol=1e-4
    )

    ts = export_checkpoint(result.checkpoint_path, tmp_path / "flowers.pt", "torchscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in favour of torch.export
        module = torch.jit.load(str(ts.model_path))
    with torch.no_grad():
        ts_out, ts_score = module(torch.from_numpy(batch))
    np.testing.assert_allclose(ts_out.numpy(), probs, atol=1e-4)
    np.testing.assert_allclose(ts_score.numpy(), scores, atol=1e-4)


def test_a_checkpoint_that_cannot_tell_exports_one_output(trained, tmp_path):
    from flowerid.model.checkpoint import load_checkpoint

    _, result = trained
    old = load_checkpoint(result.checkpoint_path)
    del old["unknown"]
    res = export_checkpoint(old, tmp_path / "old.onnx")
    assert [o.name for o in _session(res.model_path).get_outputs()] == ["probabilities"]
    assert res.manifest["unknown"] is None


def test_onnx_export_matches_predict_and_manifest(trained, reference, tmp_path):
    _, result = trained
    clf, photos, batch, probs, top1 = reference
    res = export_checkpoint(result.checkpoint_path, tmp_path / "flowers.onnx")
    assert res.model_path == tmp_path / "flowers.onnx" and res.manifest_path == tmp_path / "flowers.json"
    onnx.checker.check_model(str(res.model_path), full_check=True)

    manifest = json.loads(res.manifest_path.read_text())
    assert set(manifest) == MANIFEST_KEYS
    assert manifest["format"] == "flowerid-export" and manifest["version"] == 1
    assert manifest["model"] == "flowers.onnx" and manifest["output"] == "probabilities"
    assert manifest["input"] == {"name": "input", "shape": [1, 3, 32, 32], "layout": "NCHW", "dtype": "float32"}
    assert manifest["preprocessing"] == {
        "resize_size": 36,
        "crop_size": 32,
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "scale": "0..1 then (x-mean)/std",
    }
    assert manifest["categories"] == ["1", "10", "2"] == clf.categories
    assert manifest["names"] == ["pink primrose", "globe thistle", "hard-leaved pocket orchid"]

    sess = _session(res.model_path)
    assert sess.get_inputs()[0].name == "input" and isinstance(sess.get_inputs()[0].shape[0], str)  # dynamic batch
    out = sess.run(None, {"input": batch})[0]
    assert out.shape == probs.shape
    np.testing.assert_allclose(out, probs, atol=1e-4)
    assert [manifest["categories"][i] for i in out.argmax(1)] == top1
    one = sess.run(None, {"input": batch[:1]})[0]  # batch of one, as the manifest's shape says
    np.testing.assert_allclose(one, probs[:1], atol=1e-4)

    # An app that knows only the manifest gets the same answers.
    app_batch = np.stack([manifest_preprocess(p, manifest) for p in photos])
    app_out = sess.run(None, {"input": app_batch})[0]
    assert [manifest["categories"][i] for i in app_out.argmax(1)] == top1
    np.testing.assert_allclose(app_out, probs, atol=1e-4)


def test_torchscript_runs_with_plain_torch(trained, reference, tmp_path):
    _, result = trained
    _, photos, batch, probs, top1 = reference
    res = export_checkpoint(result.checkpoint_path, f"{tmp_path}/new/", "torchscript")  # a folder to be made
    assert res.model_path == tmp_path / "new" / "checkpoint.pt" and res.manifest["model"] == "checkpoint.pt"
    assert res.manifest_path == tmp_path / "new" / "checkpoint.json"
    np.save(tmp_path / "batch.npy", batch)
    script = (
        "import sys, numpy as np, torch\n"
        f"m = torch.jit.load({str(res.model_path)!r})\n"
        f"x = torch.from_numpy(np.load({str(tmp_path / 'batch.npy')!r}))\n"
        "with torch.no_grad():\n"
        "    out = m(x)[0].numpy(); one = m(x[:1])[0].numpy()\n"
        "assert not any(k.startswith('flowerid') for k in sys.modules), 'flowerid was imported'\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, out); np.save({str(tmp_path / 'one.npy')!r}, one)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(out, probs, atol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "one.npy"), probs[:1], atol=1e-4)
    assert [res.manifest["categories"][i] for i in out.argmax(1)] == top1


def test_int8_onnx_is_quantized_and_agrees(trained, reference, tmp_path):
    data, result = trained
    _, _, batch, probs, top1 = reference
    # The tiny net has two convolutions: quantize both (the default keeps a real backbone's first four float).
    res = export_checkpoint(
        result.checkpoint_path, tmp_path / "q.onnx", quantize="int8", calibration=data, keep_float=0
    )
    assert res.calibration_images == 24  # all of train/ (8 x 3 photos), never valid/ or test/
    onnx.checker.check_model(str(res.model_path))
    ops = {n.op_type for n in onnx.load(str(res.model_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    out = _run_onnx(res.model_path, batch)
    assert [res.manifest["categories"][i] for i in out.argmax(1)] == top1
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)
    assert np.abs(out - probs).max() < 0.1


def test_logits_output(trained, reference, tmp_path):
    _, result = trained
    clf, _, batch, probs, _ = reference
    res = export_checkpoint(result.checkpoint_path, tmp_path / "l.onnx", output="logits")
    assert res.manifest["output"] == "logits"
    logits = _run_onnx(res.model_path, batch)
    np.testing.assert_allclose(logits, clf.head(clf.backbone.engine(batch)), atol=1e-4)


def test_flip_averaging_module(trained):
    _, result = trained
    from flowerid.model.checkpoint import load_checkpoint

    plain, _ = build_export_model(load_checkpoint(result.checkpoint_path))
    flip = ExportModel(plain.backbone, plain.head, hflip=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = 0.5 * (plain(x)[0] + plain(torch.flip(x, dims=[3]))[0])
        torch.testing.assert_close(flip(x), expected)
    with pytest.raises(UsageError):
        ExportModel(plain.backbone, plain.head, output="logits", hflip=True)


def test_export_onnx_of_any_module_has_dynamic_batch(tiny_backbone, tmp_path):
    module = tiny_backbone.factory().eval()
    path = export_onnx(module, tmp_path / "bb.onnx", 32, output_name="features")
    onnx.checker.check_model(str(path))
    for n in (1, 5):
        x = np.random.default_rng(n).normal(size=(n, 3, 32, 32)).astype(np.float32)
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(_run_onnx(path, x), expected, atol=1e-4)


def test_export_refuses_what_cannot_work(trained, tmp_path):
    _, result = trained
    ckpt = result.checkpoint_path
    with pytest.raises(UsageError, match="--format onnx"):
        export_checkpoint(ckpt, tmp_path / "m.pt", "torchscript", quantize="int8")
    with pytest.raises(UsageError, match="manifest"):
        export_checkpoint(ckpt, tmp_path / "m.json")
    with pytest.raises(UsageError, match="unknown export format"):
        export_checkpoint(ckpt, tmp_path / "m.tflite", "tflite")
    with pytest.raises(DataError, match="does not exist"):
        export_checkpoint(ckpt, tmp_path / "m.onnx", quantize="int8", calibration=tmp_path / "nowhere")
    from flowerid.model.checkpoint import load_checkpoint

    moved = load_checkpoint(ckpt)
    moved["training"]["data_dir"] = str(tmp_path / "gone")
    with pytest.raises(UsageError, match="--calibration"):
        export_checkpoint(moved, tmp_path / "m.onnx", quantize="int8")
    assert not list(tmp_path.glob("m.*"))


def test_cli_export_and_its_errors(trained, tmp_path, capsys):
    data, result = trained
    assert main(["export", str(result.checkpoint_path), "--out", str(tmp_path / "a.onnx")]) == 0
    assert "a.onnx" in capsys.readouterr().out
    assert json.loads((tmp_path / "a.json").read_text())["model"] == "a.onnx"
    code = main(["export", str(result.checkpoint_path), "--format", "torchscript", "--quantize", "int8", "--out", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("flowerid: error:") and "Traceback" not in err
    assert main(["export", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "b.onnx")]) == 1
    assert "not found" in capsys.readouterr().err


def test_cli_choices_match_the_library():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["export"]
    choices = {a.dest: tuple(a.choices) for a in sub._actions if a.choices}
    assert choices == {"format": FORMATS, "quantize": QUANTIZATIONS, "output": OUTPUTS}
