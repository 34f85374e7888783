"""Ctrl-C and crashes: train stops quickly and cleanly, re-runs reuse work, files stay whole."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flowerid.errors import CheckpointError, UsageError
from flowerid.model.checkpoint import load_checkpoint
from flowerid.training.resume import STATE_FILE
from flowerid.training.run import TrainConfig, train

from ..conftest import (
    ROOT,
    TINY,
    build_folder,
)

DRIVER = ROOT / "tests" / "train_driver.py"


def _quiet(line: str) -> None:
    pass


def _stop_after_epoch(k: int):
    def log(line: str) -> None:
        if line.startswith(f"epoch {k:>3}/"):
            raise KeyboardInterrupt

    return log


CFG = TrainConfig(arch=TINY, epochs=6, learning_rate=0.02, hidden_units=8, dropout=0.2, num_workers=0)


def test_resume_gives_the_same_model_as_an_uninterrupted_run(image_folder, tmp_path):
    full = train(image_folder, tmp_path / "full", CFG, log=_quiet)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(image_folder, cut, CFG, log=_stop_after_epoch(3))
    assert (cut / STATE_FILE).exists() and not (cut / "checkpoint.pth").exists()
    lines: list[str] = []
    resumed = train(image_folder, cut, dataclasses.replace(CFG, resume=True), log=lines.append)
    assert f"resuming head training after epoch 3/6 from {cut / STATE_FILE}" in lines
    assert [s.split()[1] for s in lines if s.startswith("epoch")] == ["4/6", "5/6", "6/6"]
    a = load_checkpoint(full.checkpoint_path)["head"]["state_dict"]
    b = load_checkpoint(resumed.checkpoint_path)["head"]["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full.metrics["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.metrics["history"]]
    assert resumed.metrics["best_epoch"] == full.metrics["best_epoch"]
    assert not (cut / STATE_FILE).exists()  # finished: nothing left to resume


def test_resume_refuses_other_settings_and_damaged_state(image_folder, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(image_folder, tmp_path, CFG, log=_stop_after_epoch(2))
    with pytest.raises(UsageError, match="other data or settings"):
        train(image_folder, tmp_path, dataclasses.replace(CFG, epochs=9, resume=True), log=_quiet)
    state = tmp_path / STATE_FILE
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="damaged.*without --resume"):
        train(image_folder, tmp_path, dataclasses.replace(CFG, resume=True), log=_quiet)
    lines: list[str] = []
    train(image_folder, tmp_path, CFG, log=lines.append)  # without --resume: starts over, says so
    assert any("--resume would continue" in s for s in lines)
    assert sum(s.startswith("epoch") for s in lines) == 6


def test_resume_without_a_state_starts_at_epoch_one(image_folder, tmp_path):
    lines: list[str] = []
    train(image_folder, tmp_path, dataclasses.replace(CFG, epochs=2, resume=True), log=lines.append)
    assert any("starting head training at epoch 1" in s for s in lines)
    assert sum(s.startswith("epoch") for s in lines) == 2


def _start(stage: str, marker: Path, args: list[str], cache: Path) -> subprocess.Popen:
    env = dict(os.environ, FLOWERID_CACHE=str(cache), PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen(
        [sys.executable, str(DRIVER), stage, str(marker), "train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so Ctrl-C can reach the workers too
    )


def _wait_for(check, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.communicate()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the stage to start")
        time.sleep(0.05)


def _ctrl_c(proc: subprocess.Popen) -> tuple[float, str, str]:
    """Send SIGINT to the whole process group as a terminal does; seconds until it exits."""
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("did not stop within 30 s of Ctrl-C") from None
    return time.monotonic() - t0, out, err


def _entries(cache: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in cache.rglob("*.f32")}


def test_ctrl_c_in_feature_extraction_and_head_training_then_resume(tmp_path):
    data = build_folder(tmp_path / "data", {"train": 30, "valid": 4})
    total = 3 * 34
    cache, run = tmp_path / "cache", tmp_path / "run"
    args = [str(data), "--save-dir", str(run), "--arch", TINY, "--epochs", "40", "--learning-rate", "0.02"]

    # 1. Ctrl-C while the workers decode and the backbone runs: quick, one line, exit 130.
    proc = _start("features", tmp_path / "m1", args, cache)
    _wait_for(lambda: len(_entries(cache)) >= 16, proc)  # at least one batch cached
    seconds, _, err = _ctrl_c(proc)
    assert proc.returncode == 130, err
    print(f"stopped {seconds:.2f}s after Ctrl-C in feature extraction")
    assert seconds < 5, f"took {seconds:.1f}s to stop"
    assert "Traceback" not in err and err.strip().splitlines() == [
        "flowerid: interrupted; run it again to reuse the features (or activations) computed so far, "
        "with --resume to continue a frozen backbone's head training"
    ]
    first = _entries(cache)
    assert 16 <= len(first) < total and not (run / "checkpoint.pth").exists()
    assert not list(cache.rglob("*.tmp"))  # no half-written cache entries left behind

    # 2. The same command again reuses those features; Ctrl-C it during head training.
    proc = _start("head", tmp_path / "m2", args, cache)
    _wait_for(lambda: (run / STATE_FILE).exists(), proc)
    seconds, out, err = _ctrl_c(proc)
    print(f"stopped {seconds:.2f}s after Ctrl-C in head training")
    assert proc.returncode == 130 and seconds < 5 and "Traceback" not in err, err
    second = _entries(cache)
    assert len(second) == total
    assert all(second[k] == v for k, v in first.items())  # reused, not recomputed
    done = len([line for line in out.splitlines() if line.startswith("epoch")])
    assert done < 40

    # 3. --resume finishes head training from the last saved epoch, computing no features.
    proc = _start("none", tmp_path / "m3", [*args, "--resume"], cache)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    # The state is saved just before an epoch's line is printed, so Ctrl-C can land between the two.
    saved = int(re.search(r"resuming head training after epoch (\d+)/40", out).group(1))
    assert saved >= 1 and done in (saved - 1, saved)
    assert sum(line.startswith("epoch") for line in out.splitlines()) == 40 - saved
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["features_computed"] == 0 and len(metrics["history"]) == 40
    load_checkpoint(run / "checkpoint.pth")
    assert not (run / STATE_FILE).exists()


_WRITER = """
import sys, torch
sys.path.insert(0, sys.argv[3])
from flowerid.model.checkpoint import load_checkpoint, save_checkpoint
ckpt = load_checkpoint(sys.argv[1])
ckpt["padding"] = torch.randn(6_000_000)  # 24 MB: each write takes a while
i = 0
while True:
    ckpt["names"] = [f"version {i}"] * len(ckpt["categories"])
    save_checkpoint(ckpt, sys.argv[2])
    print(i, flush=True)
    i += 1
"""


def test_kill_while_writing_a_checkpoint_leaves_one_that_loads(trained, tmp_path):
    path = tmp_path / "checkpoint.pth"
    for delay in (0.0, 0.05):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(trained[1].checkpoint_path), str(path), str(ROOT / "src")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # one complete write done; the next is under way
        time.sleep(delay)
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.wait()
        ckpt = load_checkpoint(path)
        assert ckpt["names"][0].startswith("version ")
        assert ckpt["padding"].shape == (6_000_000,)


@pytest.mark.parametrize("damage", ["optimizer", "rng", "head"])
def test_a_state_whose_entries_are_damaged_is_refused_in_one_line(image_folder, tmp_path, damage):
    """The fingerprint still matches, but an entry is missing or the wrong shape: it was a KeyError or a
    size-mismatch traceback."""
    with pytest.raises(KeyboardInterrupt):
        train(image_folder, tmp_path, CFG, log=_stop_after_epoch(2))
    path = tmp_path / STATE_FILE
    state = torch.load(path, weights_only=True)
    if damage == "head":
        key = next(iter(state["head"]))
        state["head"][key] = torch.zeros(3, 3)
    else:
        state.pop(damage)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="is damaged.*without --resume"):
        train(image_folder, tmp_path, dataclasses.replace(CFG, resume=True), log=_quiet)
