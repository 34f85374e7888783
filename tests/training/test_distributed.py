"""torchrun: two processes with gloo on the CPU against one process, on the tiny synthetic data.

Each launch takes several seconds (torchrun and torch start in every process); the longer ones are
marked slow.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowerid.distributed import World, world
from flowerid.errors import UsageError
from flowerid.model.checkpoint import load_checkpoint
from flowerid.model.info import checkpoint_info, format_info
from flowerid.training.config import TrainConfig
from flowerid.training.run import train

from ..conftest import TINY, build_folder

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "dist_driver.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
ARGS = ["--arch", TINY, "--epochs", "8", "--learning-rate", "0.02", "--preset", "fast"]


def _launch(args: list[str], cache: Path, procs: int = 2, **env: str) -> subprocess.CompletedProcess:
    cmd = [*(TORCHRUN if procs == 2 else [sys.executable]), str(DRIVER), *args]
    # CPU processes (gloo) wherever the suite runs: these tests compare bit-identical CPU results
    full = dict(os.environ, FLOWERID_CACHE=str(cache), PYTHONPATH=str(ROOT / "src"), CUDA_VISIBLE_DEVICES="", **env)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        full.pop(key, None)
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=300)


def _features(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in cache.rglob("*.f32")}


def _loads(folder: Path) -> list[str]:
    return [line for p in folder.glob("*.log") for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The same training run by two processes under torchrun and by one, each with its own cache."""
    root = tmp_path_factory.mktemp("dist")
    data = build_folder(root / "data", {"train": 9, "valid": 4, "test": 3})
    (data / "train" / "2" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    loads = root / "loads"
    loads.mkdir()
    two = _launch(
        ["train", str(data), "--save-dir", str(root / "two"), *ARGS], root / "c2", FLOWERID_TEST_LOADS=str(loads)
    )
    assert two.returncode == 0, two.stderr
    one = _launch(["train", str(data), "--save-dir", str(root / "one"), *ARGS], root / "c1", procs=1)
    assert one.returncode == 0, one.stderr
    return root, data, two, loads


def test_two_processes_extract_each_photo_once_and_train_the_same_head(job):
    root, data, two, loads = job
    photos = sorted(str(p) for split in ("train", "valid", "test") for p in (data / split).rglob("*.*"))
    assert sorted(_loads(loads)) == photos  # each photo read once in the whole job, the broken one too
    assert _features(root / "c2") == _features(root / "c1")  # bit-identical features
    a = load_checkpoint(root / "one" / "checkpoint.pth")
    b = load_checkpoint(root / "two" / "checkpoint.pth")
    for k, v in a["head"]["state_dict"].items():
        torch.testing.assert_close(b["head"]["state_dict"][k], v, rtol=1e-5, atol=1e-6)
    assert (a["training"]["world_size"], b["training"]["world_size"]) == (1, 2)
    assert a["metrics"]["valid_acc"] == b["metrics"]["valid_acc"]
    assert "world size 2" in format_info(checkpoint_info(root / "two" / "checkpoint.pth"))
    # one summary, from the main process; the broken photo listed once
    assert two.stdout.count("saved ") == 1 and two.stdout.count("data: ") == 1
    assert (root / "two" / "skipped.tsv").read_text().count("broken.jpg") == 1


def test_predict_under_torchrun_leaves_one_complete_file(job):
    root, data, _, _ = job
    ckpt = str(root / "two" / "checkpoint.pth")
    outs = {}
    for procs in (2, 1):
        out = root / f"pred{procs}.csv"
        res = _launch(
            ["predict", str(data), "--out", str(out), "--checkpoint", ckpt, "--top-k", "2"], root / "c2", procs
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.count("named ") == 1 and "named 48 photos" in res.stdout
        with open(out, newline="") as f:
            outs[procs] = sorted(map(tuple, csv.reader(f)))
    assert outs[2] == outs[1] and len(outs[2]) == 1 + 49  # header, 48 photos and the broken one
    assert not list(root.glob("pred2.csv.rank-*"))


@pytest.mark.slow  # two torchrun launches of a small EfficientNet, 10-20 s each
@pytest.mark.parametrize("mode", [["--tune-stages", "1"], ["--full-finetune", "--tune-stages", "0"]])
def test_tuned_and_full_train_with_ddp_and_count_each_valid_photo_once(tmp_path, mode):
    from .test_finetune import TINY_EFFNET, _tiny_effnet

    data = build_folder(tmp_path / "data", {"train": 6, "valid": 3})  # 9 valid photos: shares of 5 and 4
    (data / "train" / "1" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    args = ["--arch", TINY_EFFNET, *mode, "--epochs", "2", "--learning-rate", "0.01", "--preset", "fast"]
    res = _launch(["train", str(data), "--save-dir", str(tmp_path / "run"), *args], tmp_path / "c")
    assert res.returncode == 0, res.stderr
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pth")
    assert ckpt["training"]["world_size"] == 2 and ckpt["training"]["valid_images"] == 9
    assert ckpt["training"]["train_images"] == 18
    # accuracies are whole photos out of 9: no photo padded in, none counted twice
    assert all(abs(h["valid_acc"] * 9 - round(h["valid_acc"] * 9)) < 1e-5 for h in ckpt["metrics"]["history"])
    tuned = torch.load(tmp_path / "run" / "backbone.pth", weights_only=True)
    pristine = _tiny_effnet().state_dict()
    changed = {k for k in pristine if not torch.equal(pristine[k], tuned[k])}
    if mode[0] == "--tune-stages":
        last = len(_tiny_effnet().blocks) - 1
        assert changed and all(k.startswith((f"blocks.{last}.", "conv_head.")) for k in changed)
    else:
        assert any(k.startswith("conv_stem.") for k in changed)  # every layer trained
    assert sum(line.startswith("epoch ") for line in res.stdout.splitlines()) == 2  # the main process reports
    assert (tmp_path / "run" / "skipped.tsv").read_text().count("broken.jpg") == 1


@pytest.mark.slow  # a torchrun launch of two small EfficientNets
def test_an_ensemble_tunes_its_members_with_ddp_and_scores_their_average_once_per_photo(tmp_path):
    from .test_finetune import TINY_ENSEMBLE

    data = build_folder(tmp_path / "data", {"train": 6, "valid": 3})
    (data / "valid" / "2" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    args = ["--arch", TINY_ENSEMBLE, "--tune-stages", "1", "--epochs", "2", "--learning-rate", "0.01"]
    res = _launch(["train", str(data), "--save-dir", str(tmp_path / "run"), *args, "--preset", "fast"], tmp_path / "c")
    assert res.returncode == 0, res.stderr
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pth")
    m = ckpt["metrics"]
    assert ckpt["training"]["world_size"] == 2 and ckpt["training"]["valid_images"] == 9
    assert len(m["members"]) == 2 and len(m["history"]) == 2
    assert all(abs(h["valid_acc"] * 9 - round(h["valid_acc"] * 9)) < 1e-5 for h in m["history"])
    assert sum(line.startswith("epoch ") for line in res.stdout.splitlines()) == 2 * 2  # each member's epochs


@pytest.mark.slow  # two torchrun launches
def test_a_failed_process_stops_the_job_clearly_and_a_rerun_resumes(tmp_path):
    data = build_folder(tmp_path / "data", {"train": 12, "valid": 4})
    cache, loads = tmp_path / "cache", tmp_path / "loads"
    loads.mkdir()
    args = ["train", str(data), "--save-dir", str(tmp_path / "run"), *ARGS]
    res = _launch(args, cache, FLOWERID_TEST_CRASH_RANK="1")
    assert res.returncode != 0
    assert "flowerid: rank 1 of 2: error: RuntimeError: simulated crash" in res.stderr
    assert "Run the same command again" in res.stderr
    assert not (tmp_path / "run" / "checkpoint.pth").exists()
    kept = len(_features(cache))
    assert kept >= 8  # at least the failed process's first batch
    res = _launch(args, cache, FLOWERID_TEST_LOADS=str(loads))
    assert res.returncode == 0, res.stderr
    assert len(_loads(loads)) == 3 * 16 - kept  # only what the first run had not finished


def test_world_from_torchrun_environment(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert world() == World(0, 1, 0, 1) and world().is_main and not world().distributed
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert world() == World(3, 4, 1, 2) and not world().is_main and world().label() == "rank 3 of 4"
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(UsageError, match="do not fit"):
        world()


def test_more_processes_than_gpus_is_a_clear_error_in_every_process(monkeypatch):
    import torch

    from flowerid import distributed as d

    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(d._dist(), "is_initialized", lambda: False)
    with pytest.raises(UsageError, match=r"2 processes on this machine, which has 1 GPU: .*--nproc_per_node 1"):
        d.init("cuda")


def test_no_cache_under_torchrun_is_refused(image_folder, tmp_path, monkeypatch):
    import flowerid.distributed as d

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(d, "init", lambda device="cpu": d.world())  # no job to join here
    with pytest.raises(UsageError, match="drop --no-cache"):
        train(image_folder, tmp_path, TrainConfig(arch=TINY, epochs=1, use_cache=False), log=lambda s: None)


def test_leaving_the_job_after_an_early_ctrl_c_imports_nothing(monkeypatch):
    """Ctrl-C while torch is being imported leaves a half-made torch.distributed in sys.modules; the CLI's
    shutdown must not import it again (that raised a traceback instead of exiting 130)."""
    import types

    from flowerid.distributed import shutdown

    bare = types.ModuleType("torch.distributed")
    monkeypatch.setitem(sys.modules, "torch.distributed", bare)
    monkeypatch.setattr(torch, "distributed", bare)  # what `import torch.distributed` would hand back
    shutdown()
    half = types.ModuleType("torch.distributed")
    half.is_initialized = lambda: (_ for _ in ()).throw(RuntimeError("half-initialised"))
    half.is_available = lambda: True
    monkeypatch.setitem(sys.modules, "torch.distributed", half)
    monkeypatch.setattr(torch, "distributed", half)
    shutdown()
