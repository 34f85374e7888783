import os
import pickle

import pytest
import torch

from flowerid.errors import CheckpointError
from flowerid.model.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_round_trip_is_plain_data(trained):
    _, result = trained
    raw = torch.load(result.checkpoint_path, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION
    ckpt = load_checkpoint(result.checkpoint_path)
    assert ckpt["categories"] == ["1", "10", "2"]
    assert ckpt["names"] == ["pink primrose", "globe thistle", "hard-leaved pocket orchid"]
    assert ckpt["class_to_idx"] == {"1": 0, "10": 1, "2": 2}
    assert ckpt["backbone"]["name"] == "tiny_test"
    assert ckpt["preprocessing"]["crop_size"] == 32
    assert "backbone" not in "".join(ckpt["head"]["state_dict"])  # no backbone weights inside


def test_pickle_needing_file_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"format": "flowerid-checkpoint", "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="arbitrary code"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, pickle.dumps({"a": 1})])
def test_damaged_files(tmp_path, content):
    path = tmp_path / "c.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"", "an empty file"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 40, "a JPEG image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "a PNG image"),
        (b"\x08\x08\x12\x07pytorch", "an ONNX model"),
    ],
)
def test_a_file_that_is_plainly_something_else_is_named(tmp_path, content, kind):
    """A photo given where the checkpoint goes (the heritage order is `predict image checkpoint`)."""
    path = tmp_path / "c.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"is not a checkpoint \\({kind}"):
        load_checkpoint(path)


def test_truncated_checkpoint(trained, tmp_path):
    data = trained[1].checkpoint_path.read_bytes()
    (tmp_path / "t.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "t.pth")


def test_newer_format_refused_and_foreign_dict(trained, tmp_path):
    ckpt = load_checkpoint(trained[1].checkpoint_path)
    save_checkpoint(ckpt, tmp_path / "n.pth")
    raw = torch.load(tmp_path / "n.pth", weights_only=True)
    raw["format_version"] = FORMAT_VERSION + 1
    torch.save(raw, tmp_path / "n.pth")
    with pytest.raises(CheckpointError, match="upgrade flowerid"):
        load_checkpoint(tmp_path / "n.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "sd.pth")
    with pytest.raises(CheckpointError, match="not a flowerid checkpoint"):
        load_checkpoint(tmp_path / "sd.pth")


def test_failed_write_keeps_the_old_file(trained, tmp_path, monkeypatch):
    path = tmp_path / "c.pth"
    ckpt = load_checkpoint(trained[1].checkpoint_path)
    save_checkpoint(ckpt, path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint({**ckpt, "names": [None] * 3}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]  # no temp file left behind


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pth")
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_read_without_torch_saves_back_loadable(tmp_path):
    """The torch-free reader gives numpy arrays; saving them back must not need full pickle to load."""
    import subprocess
    import sys

    from flowerid.model.builtin import shipped_model_path

    out = tmp_path / "copy.pth"
    code = (
        "import sys; from flowerid.model.checkpoint import load_checkpoint, save_checkpoint; "
        f"c = load_checkpoint({str(shipped_model_path())!r}); assert 'torch' not in sys.modules; "
        f"save_checkpoint(c, {str(out)!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    again = load_checkpoint(out)
    assert again["categories"] == load_checkpoint(shipped_model_path())["categories"]
