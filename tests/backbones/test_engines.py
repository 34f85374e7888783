import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import flowerid
from flowerid.backbones import engines, ensemble_spec, get_spec, register_backbone, unregister_backbone
from flowerid.backbones.build import build_backbone
from flowerid.backbones.cache import CacheKey
from flowerid.backbones.engines import load_backbone
from flowerid.errors import CheckpointError, UsageError, WeightsUnavailableError
from flowerid.model import _torchfile
from flowerid.model.checkpoint import load_checkpoint
from flowerid.training.run import TrainConfig, train

from ..conftest import (
    ROOT,
    TINY,
    build_folder,
    tiny_spec,
)
from ..model.test_checkpoint import Evil


def _photos(spec, n=4):
    rng = np.random.default_rng(0)
    return rng.normal(0, 1, size=(n, 3, spec.input_size, spec.input_size)).astype(np.float32)


def test_onnx_matches_torch_on_the_real_backbone():
    spec = get_spec("efficientnet_lite0")
    x = _photos(spec)
    a = load_backbone(spec, "cpu", engine="onnx").engine(x)
    b = load_backbone(spec, "cpu", engine="torch").engine(x)
    assert a.shape == (4, 1280)
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_stream_engines_share_the_threads_and_give_the_same_numbers():
    import threading

    spec = get_spec("efficientnet_lite0")
    whole = engines.OnnxEngine(load_backbone(spec, "cpu", engine="onnx").engine.path, threads=2)
    assert whole.for_streams(1) is whole
    part = whole.for_streams(2)
    assert part is not whole and part.threads == 1
    x = _photos(spec)
    expected = whole(x)
    got: list[np.ndarray] = [np.empty(0)] * 2

    def run(i: int) -> None:
        got[i] = part(x)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(2)]  # one session, two callers at once
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for g in got:
        np.testing.assert_allclose(g, expected, atol=1e-5, rtol=0)
    torch_engine = load_backbone(spec, "cpu", engine="torch").engine
    assert torch_engine.for_streams(2) is torch_engine  # torch's threads belong to the process


def test_cached_graph_is_reused_and_damage_rebuilt(monkeypatch):
    spec = get_spec("efficientnet_lite0")
    first = load_backbone(spec, "cpu", engine="onnx")
    path = CacheKey.of(spec, first.digest).graph_path()
    assert path.is_file()

    def no_build(*a, **k):
        raise AssertionError("the network was rebuilt although its graph is cached")

    monkeypatch.setattr(engines, "build_backbone", no_build)
    load_backbone(spec, "cpu", engine="onnx")
    monkeypatch.undo()
    path.write_bytes(b"not onnx")
    again = load_backbone(spec, "cpu", engine="onnx")
    np.testing.assert_allclose(again.engine(_photos(spec, 1)), first.engine(_photos(spec, 1)), atol=1e-5)


def test_engine_choice():
    assert engines.choose_engine("auto", "cpu") == "onnx"
    assert engines.choose_engine("auto", "cuda") == "torch"
    with pytest.raises(UsageError):
        engines.choose_engine("onnx", "cuda")
    with pytest.raises(UsageError):
        engines.choose_engine("tvm", "cpu")


def test_predictions_identical_whichever_engine(trained):
    data, result = trained
    photos = sorted((data / "valid").rglob("*.*"))
    by_onnx = flowerid.load(result.checkpoint_path, engine="onnx").predict_many(photos, top_k=3)
    by_torch = flowerid.load(result.checkpoint_path, engine="torch").predict_many(photos, top_k=3)
    for a, b in zip(by_onnx, by_torch, strict=True):
        assert [p.category for p in a] == [p.category for p in b]
        np.testing.assert_allclose([p.probability for p in a], [p.probability for p in b], atol=1e-4)


def test_torch_free_reader_agrees_with_torch_load(trained):
    path = trained[1].checkpoint_path
    ours = _torchfile.load(str(path))
    theirs = torch.load(path, weights_only=True)
    assert ours["categories"] == theirs["categories"] and ours["metrics"] == theirs["metrics"]
    for k, v in theirs["head"]["state_dict"].items():
        np.testing.assert_array_equal(ours["head"]["state_dict"][k], v.numpy())
    t = torch.arange(12, dtype=torch.float64).reshape(3, 4).t()[1:]  # a strided, offset view
    torch.save({"t": t, "i": torch.tensor(7), "e": torch.zeros(0, 3)}, path.parent / "views.pth")
    got = _torchfile.load(str(path.parent / "views.pth"))
    np.testing.assert_array_equal(got["t"], t.numpy())
    assert got["i"] == 7 and got["e"].shape == (0, 3)


def test_torch_free_reader_refuses_code(tmp_path):
    torch.save({"format": "flowerid-checkpoint", "x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(_torchfile.UnsafeCheckpoint):
        _torchfile.load(str(tmp_path / "evil.pth"))


def test_checkpoint_loader_without_torch_refuses_code(tmp_path, monkeypatch):
    torch.save({"format": "flowerid-checkpoint", "x": Evil()}, tmp_path / "evil.pth")
    monkeypatch.delitem(sys.modules, "torch")  # take the torch-free path
    with pytest.raises(CheckpointError, match="arbitrary code"):
        load_checkpoint(tmp_path / "evil.pth")


def test_cli_predict_does_not_import_torch(tmp_path):
    data = build_folder(tmp_path / "d", {"train": 2, "valid": 1})
    train(data, tmp_path / "run", TrainConfig(epochs=2, num_workers=0), log=lambda s: None)  # lite0, graph cached
    photo = next((data / "valid" / "2").iterdir())
    code = (
        "import sys; from flowerid.apps.cli import main; "
        "rc = main(['predict', sys.argv[1], '--checkpoint', sys.argv[2], '--json']); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(photo), str(tmp_path / "run" / "checkpoint.pth")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("NO-TORCH 0")
    assert '"predictions"' in proc.stdout


def test_tiny_backbone_via_onnx_matches_torch():
    spec = get_spec(TINY)
    x = _photos(spec, 3)
    np.testing.assert_allclose(
        load_backbone(spec, "cpu", engine="onnx").engine(x),
        load_backbone(spec, "cpu", engine="torch").engine(x),
        atol=1e-5,
    )


@pytest.fixture
def tiny_ensemble():
    """Two tiny members with different input sizes, and an ensemble of them with flip averaging."""
    small = dataclasses.replace(tiny_spec(), name="tiny_small", input_size=24)
    register_backbone(small, replace=True)
    spec = register_backbone(ensemble_spec("tiny_pair", (TINY, "tiny_small"), flip_tta=True), replace=True)
    yield spec
    unregister_backbone("tiny_pair")
    unregister_backbone("tiny_small")


def test_ensemble_is_its_members_side_by_side_averaged_with_the_mirror(tiny_ensemble, tmp_path):
    spec = tiny_ensemble
    assert spec.input_size == 32 and spec.num_features == 32 and spec.offline
    module, digest = build_backbone(spec)
    first, _ = build_backbone(TINY)
    second, _ = build_backbone("tiny_small")
    x = torch.tensor(_photos(spec, 3))
    small = torch.nn.functional.interpolate(x, size=(24, 24), mode="bilinear")

    def side_by_side(a, b):
        return torch.cat([torch.nn.functional.normalize(a) * 10, torch.nn.functional.normalize(b) * 10], 1)

    with torch.no_grad():
        plain = side_by_side(first(x), second(small))
        mirrored = side_by_side(first(x.flip(3)), second(small.flip(3)))
        torch.testing.assert_close(module(x), (plain + mirrored) / 2, atol=1e-5, rtol=0)
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # the flip is not a no-op on these photos
    np.testing.assert_allclose(
        load_backbone(spec, "cpu", engine="onnx").engine(x.numpy()), module(x).detach().numpy(), atol=1e-5
    )
    # A tuned ensemble's weights: the whole network's state dict; anything else says what it must be.
    state = {k: v + 1.0 if v.is_floating_point() else v for k, v in module.state_dict().items()}
    torch.save(state, tmp_path / "ensemble.pth")
    again, digest2 = build_backbone(spec, tmp_path / "ensemble.pth")
    assert digest2 != digest and all(torch.equal(v, again.state_dict()[k]) for k, v in state.items())
    torch.save(first.state_dict(), tmp_path / "member.pth")
    with pytest.raises(WeightsUnavailableError, match="whole ensemble"):
        build_backbone(spec, tmp_path / "member.pth")
    with pytest.raises(WeightsUnavailableError, match="not found"):
        build_backbone(spec, tmp_path / "none.pth")


def test_a_members_own_view_is_pillows_resampling_of_its_own_crop():
    """OwnView's matrices resample exactly as Pillow does (a float image, both axes), and on a photo the
    member's view of the ensemble's crop is close to the member's own preprocessing of it."""
    from PIL import Image

    from flowerid.backbones.ensemble import OwnView, Resize, resampling_matrix
    from flowerid.data.preprocess import _RESAMPLE

    rng = np.random.default_rng(0)
    img = rng.random((60, 60), dtype=np.float32)
    a = resampling_matrix(60, 45, 3.25, 57.5, "bicubic")
    want = np.asarray(Image.fromarray(img).resize((45, 45), _RESAMPLE["bicubic"], box=(3.25, 3.25, 57.5, 57.5)))
    np.testing.assert_allclose(a @ img @ a.T, want, atol=1e-5)
    assert np.allclose(a.sum(1), 1.0, atol=1e-5)  # a weighted mean of pixels: normalisation commutes with it

    ensemble, member = get_spec("efficientnet_lite012"), get_spec("efficientnet_lite0")
    photo = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).resize((400, 300))  # smooth blobs
    x = torch.from_numpy(ensemble.preprocessing(photo))[None]
    own = member.preprocessing(photo)
    view = OwnView(ensemble.preprocessing, member.preprocessing)
    assert view(x).shape == (1, 3, 224, 224) and not view.state_dict()
    by_view = np.abs(view(x)[0].numpy() - own).mean()
    by_resize = np.abs(Resize(224)(x)[0].numpy() - own).mean()
    assert by_view < 0.5 * by_resize, (by_view, by_resize)


def test_real_ensembles_are_offline_and_sized_for_their_largest_member():
    spec = get_spec("efficientnet_lite0_lite2_flip")
    assert spec.offline and spec.input_size == 260 and spec.num_features == 2560 and spec.flip_tta
    assert spec.preprocessing == get_spec("efficientnet_lite2").preprocessing
