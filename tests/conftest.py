"""Fixtures: a tiny random backbone and a small synthetic ImageFolder made in a temp folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowerid.backbones import BackboneSpec, WeightsSource, register_backbone

ROOT = Path(__file__).resolve().parents[1]  # the repository
SHARED_DATA = ROOT.parent / "shared" / "data" / "flowers102"
TINY = "tiny_test"

# Colours that a tiny random conv net separates easily; names are digits so order matters.
CLASS_COLOURS = {"1": (200, 40, 40), "10": (40, 180, 60), "2": (50, 60, 200)}
NAMES = {"1": "pink primrose", "10": "globe thistle", "2": "hard-leaved pocket orchid"}


def _tiny_factory():
    import torch
    import torch.nn as nn

    torch.manual_seed(1234)  # same random weights every build, so checkpoints reload
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
    )


@pytest.fixture(autouse=True)
def tiny_backbone():
    """The tiny test backbone, registered afresh for every test (a test may replace it)."""
    spec = tiny_spec()
    register_backbone(spec, replace=True)
    yield spec
    register_backbone(spec, replace=True)  # module- and session-scoped fixtures rely on it between tests


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("FLOWERID_CACHE", str(cache))
    return cache


def make_photo(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.float32)
    arr = base + rng.normal(0, 18, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def build_folder(
    root: Path, per_split: dict[str, int], classes: dict[str, tuple[int, int, int]] = CLASS_COLOURS, names: bool = True
) -> Path:
    seed = 0
    for split, count in per_split.items():
        for cat, colour in classes.items():
            d = root / split / cat
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                seed += 1
                ext = ".png" if i % 3 == 2 else ".jpg"
                make_photo(colour, seed).save(d / f"img_{i:03d}{ext}")
    if names:
        (root / "cat_to_name.json").write_text(json.dumps({k: NAMES[k] for k in classes}))
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """train 8, valid 4, test 4 photos for each of the categories "1", "10", "2"."""
    return build_folder(tmp_path / "data", {"train": 8, "valid": 4, "test": 4})


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One tiny model trained once for the tests that only read it."""
    import os

    from flowerid.training.run import TrainConfig, train

    root = tmp_path_factory.mktemp("trained")
    data = build_folder(root / "data", {"train": 8, "valid": 4, "test": 4})
    old = os.environ.get("FLOWERID_CACHE")
    os.environ["FLOWERID_CACHE"] = str(root / "cache")
    register_backbone(tiny_spec(), replace=True)
    try:
        result = train(
            data, root / "run", TrainConfig(arch=TINY, epochs=30, learning_rate=0.02, num_workers=0), log=lambda s: None
        )
    finally:
        if old is None:
            os.environ.pop("FLOWERID_CACHE", None)
        else:
            os.environ["FLOWERID_CACHE"] = old
    return data, result


@pytest.fixture
def hostile_folder(tmp_path):
    """A small ImageFolder whose train/1 and valid/2 also hold the hostile corpus (tests/hostile.py).

    Returns (data folder, {split/category/file name: Case}) so any command can be run
    over it and its outcome checked file by file.
    """
    from .hostile import build_hostile_corpus

    root = build_folder(tmp_path / "hostile_data", {"train": 4, "valid": 2})
    cases = {}
    for split, cat in (("train", "1"), ("valid", "2")):
        for name, case in build_hostile_corpus(root / split / cat, CLASS_COLOURS[cat]).items():
            cases[f"{split}/{cat}/{name}"] = case
    return root, cases


def tiny_spec() -> BackboneSpec:
    """The tiny test backbone's spec, for child processes that register it themselves."""
    return BackboneSpec(
        TINY,
        "custom",
        "tiny",
        WeightsSource("none"),
        32,
        0.875,
        "bilinear",
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        16,
        "MIT",
        factory=_tiny_factory,
    )


register_backbone(tiny_spec(), replace=True)  # before any fixture, whatever its scope
