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


def _nested(levels):
    value = [1]
    for _ in range(levels):
        value = [value]
    return value


def _saved(tmp_path, ckpt, name="c.pth"):
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def _changed(trained, change):
    ckpt = torch.load(trained[1].checkpoint_path, weights_only=True)
    change(ckpt)
    return ckpt


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda c: c["head"]["state_dict"]["0.weight"].fill_(float("nan")), "NaN or infinite"),
        (lambda c: c["head"]["state_dict"]["0.bias"].fill_(float("-inf")), "NaN or infinite"),
        (lambda c: c.update(categories=[c["categories"][0]] * 3), "lists a category twice"),
        (lambda c: c.update(metrics=["not", "a", "dict"]), "metrics record"),
        (lambda c: c.update(additions="garbage"), "additions record"),
        (lambda c: c.update(additions=[5, None]), "additions record"),
        (lambda c: c["metrics"].update(deep=_nested(20)), "nested deeper"),
        (
            lambda c: c["head"]["state_dict"].update({k: v.bfloat16() for k, v in c["head"]["state_dict"].items()}),
            "recorded shape",
        ),
    ],
)
def test_a_strangers_damaged_checkpoint_is_refused_when_it_loads(trained, tmp_path, change, why):
    """What would flow on into NaN answers, shifted names or `info` tracebacks is refused at the door."""
    with pytest.raises(CheckpointError, match=why) as exc:
        load_checkpoint(_saved(tmp_path, _changed(trained, change)))
    assert "arbitrary code" not in str(exc.value)


def test_a_head_that_does_not_fit_its_backbone_is_refused(trained, tmp_path):
    def wider(c):
        c["head"]["config"]["in_features"] = 4096
        c["head"]["state_dict"]["0.weight"] = torch.zeros(3, 4096)
        c["unknown"] = c["class_stats"] = None

    with pytest.raises(CheckpointError, match="head takes 4096 features"):
        load_checkpoint(_saved(tmp_path, _changed(trained, wider)))


def test_a_small_file_cannot_ask_for_gigabytes(trained, tmp_path):
    """An expanded view (20000 x 20000 floats from one) or a compression bomb is refused by both readers
    before it is made; a real checkpoint reads as ever."""
    import zipfile

    from flowerid.model import _torchfile

    assert _torchfile.load(str(trained[1].checkpoint_path))["categories"] == ["1", "10", "2"]
    expanded = _saved(tmp_path, _changed(trained, lambda c: c["metrics"].update(x=torch.zeros(1).expand(20000, 20000))))
    with pytest.raises(pickle.UnpicklingError, match="repeats its storage"):
        _torchfile.load(str(expanded))
    big = _saved(tmp_path, _changed(trained, lambda c: c["metrics"].update(x=torch.zeros(5_000_000))), "big.pth")
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(big) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(CheckpointError, match="far more than its size"):
        load_checkpoint(bomb)
    with pytest.raises(pickle.UnpicklingError, match="far more than its size"):
        _torchfile.load(str(bomb))


def test_a_weights_file_named_by_a_checkpoint_must_be_one(tmp_path):
    """A pipe would hang the reader and any other file would be handed to torch.load: both refused first."""
    from pathlib import Path

    from flowerid.backbones.weights import read_weights_file
    from flowerid.errors import WeightsUnavailableError

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(WeightsUnavailableError, match="not a regular file"):
        read_weights_file(fifo)
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(WeightsUnavailableError, match="is not a weights file"):
        read_weights_file(tmp_path / "passwd")
    (tmp_path / "trunc.pth").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(WeightsUnavailableError) as exc:
        read_weights_file(Path(tmp_path / "trunc.pth"))
    assert "\n" not in str(exc.value) and "weights_only" not in str(exc.value)


def test_info_json_stays_json_when_a_record_holds_nan(trained, tmp_path, capsys):
    import json

    from flowerid.apps.cli import main

    path = _saved(tmp_path, _changed(trained, lambda c: c["metrics"].update(valid_acc=float("nan"))))
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["valid_acc"] is None
    assert main(["info", str(path)]) == 0
