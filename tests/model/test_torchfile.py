"""The predict path without torch: the torch-free checkpoint reader (model/_torchfile.py) and `flowerid predict`."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from flowerid.errors import CheckpointError
from flowerid.model import _torchfile
from flowerid.model.checkpoint import load_checkpoint
from flowerid.training.run import TrainConfig, train

from ..conftest import ROOT, build_folder
from .test_checkpoint import Evil


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
