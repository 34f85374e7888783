"""Property-based: whatever bytes or structures come in, only flowerid's typed errors come out."""

import copy
import io
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from flowerid.data.images import load_image
from flowerid.errors import CheckpointError, FlowerIdError, ImageError
from flowerid.model.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint, validate

from .hostile import OK, hostile_files

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

# Small valid images of every format the loader reads: mutations of these reach deep into the decoders.
_SEEDS = [content for content, case in hostile_files().values() if case.outcome == OK and len(content) < 20_000]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 8))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(max_size=16))
    return bytes(data)


def _check_image(blob: bytes) -> None:
    try:
        img = load_image(blob, min_size=16, max_pixels=4_000_000)
    except ImageError:
        return
    assert img.mode == "RGB" and img.width > 0 and img.height > 0


@settings(FUZZ, max_examples=150)
@given(st.binary(max_size=2048))
def test_image_loader_on_arbitrary_bytes(blob):
    _check_image(blob)


@settings(FUZZ, max_examples=400)
@given(mutated(_SEEDS))
def test_image_loader_on_damaged_images(blob):
    _check_image(blob)


@pytest.fixture(scope="module")
def checkpoint_bytes(trained) -> bytes:
    return trained[1].checkpoint_path.read_bytes()


def _check_checkpoint_file(blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.pth"
        path.write_bytes(blob)
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError:
            return
    assert ckpt["format"] == "flowerid-checkpoint"  # a mutation that left it intact


@settings(FUZZ, max_examples=100)
@given(st.binary(max_size=4096))
def test_checkpoint_loader_on_arbitrary_bytes(blob):
    _check_checkpoint_file(blob)


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_checkpoint_loader_on_damaged_checkpoints(checkpoint_bytes, data):
    _check_checkpoint_file(data.draw(mutated([checkpoint_bytes])))


_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
    st.builds(lambda shape: torch.zeros(shape), st.lists(st.integers(0, 4), max_size=3)),
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_checkpoint_with_wrong_fields_is_refused_or_works(trained, data):
    """Replace any field of a real checkpoint with junk: validate and the Classifier refuse it
    with a typed error, or it still predicts."""
    from flowerid.model.predictor import Classifier

    ckpt = load_checkpoint(trained[1].checkpoint_path)
    bad = copy.deepcopy(ckpt)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from([p for p in _paths(bad) if p]))
        target = bad
        for key in path[:-1]:
            target = target[key]
        if data.draw(st.booleans()):
            target[path[-1]] = data.draw(_JUNK)
        else:
            del target[path[-1]]
    try:
        clf = Classifier(validate(bad), device="cpu")
        preds = clf.predict(Image.new("RGB", (40, 30), (200, 40, 40)), top_k=2)
    except FlowerIdError:
        return
    assert len(preds) == 2 and all(0.0 <= p.probability <= 1.0 for p in preds)


def test_migrations_run_as_explicit_steps(trained, tmp_path, monkeypatch):
    """An older file is brought up to date one tested step at a time; a broken step is refused."""
    import flowerid.model.checkpoint as ck

    path = tmp_path / "old.pth"
    save_checkpoint(load_checkpoint(trained[1].checkpoint_path), path)

    def v1_to_v2(c):  # e.g. a renamed field
        c["labels"] = c.pop("names")
        return {**c, "format_version": 2}

    def v2_to_v3(c):
        c["names"] = c.pop("labels")
        return {**c, "format_version": 3}

    monkeypatch.setattr(ck, "FORMAT_VERSION", 3)
    monkeypatch.setattr(ck, "MIGRATIONS", {1: v1_to_v2, 2: v2_to_v3})
    ckpt = load_checkpoint(path)
    assert ckpt["format_version"] == 3 and ckpt["names"][0] == "pink primrose" and "labels" not in ckpt
    monkeypatch.setattr(ck, "MIGRATIONS", {1: v1_to_v2})
    with pytest.raises(CheckpointError, match="version 2, which cannot be migrated"):
        load_checkpoint(path)
    monkeypatch.setattr(ck, "MIGRATIONS", {1: lambda c: c, 2: v2_to_v3})  # forgets to bump the version
    with pytest.raises(CheckpointError, match="did not advance"):
        load_checkpoint(path)
    monkeypatch.setattr(ck, "MIGRATIONS", {1: lambda c: c["missing"], 2: v2_to_v3})
    with pytest.raises(CheckpointError, match="migrating from format version 1 failed"):
        load_checkpoint(path)


def test_current_format_needs_no_migration():
    assert FORMAT_VERSION == 1, "a new format version needs a MIGRATIONS step and a test above"


def test_pickle_payload_in_a_zip_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    buf = io.BytesIO()
    torch.save({"format": "flowerid-checkpoint", "format_version": 1, "x": Evil()}, buf)
    (tmp_path / "e.pth").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="arbitrary code"):
        load_checkpoint(tmp_path / "e.pth")
    assert not marker.exists()
