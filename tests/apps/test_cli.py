import json
import os
import subprocess
import sys

import pytest

from flowerid.apps.cli import main

from ..conftest import (
    ROOT,
    TINY,
    build_folder,
    make_photo,
)


def test_train_then_predict_json(image_folder, tmp_path, capsys):
    assert (
        main(
            [
                "train",
                str(image_folder),
                "--save-dir",
                str(tmp_path / "run"),
                "--arch",
                TINY,
                "--epochs",
                "25",
                "--learning-rate",
                "0.02",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "epoch  25/25" in out and (tmp_path / "run" / "checkpoint.pth").exists()
    images = [str(next((image_folder / "test" / c).iterdir())) for c in ("1", "10", "2")]
    assert (
        main(["predict", *images, "--checkpoint", str(tmp_path / "run" / "checkpoint.pth"), "--top-k", "2", "--json"])
        == 0
    )
    records = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in records] == images
    for rec, cat in zip(records, ("1", "10", "2"), strict=True):
        assert list(rec) == ["image", "known", "unknown_score", "predictions"]
        assert rec["known"] is True and isinstance(rec["unknown_score"], float)  # its own test photos: flowers it knows
        assert len(rec["predictions"]) == 2
        assert set(rec["predictions"][0]) == {"category", "name", "probability"}
        assert rec["predictions"][0]["category"] == cat


def test_predict_table_and_bad_image(trained, tmp_path, capsys):
    data, result = trained
    bad = tmp_path / "half.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0\0\x10JFIF")
    good = str(next((data / "valid" / "1").iterdir()))
    code = main(["predict", good, str(bad), "--checkpoint", str(result.checkpoint_path)])
    captured = capsys.readouterr()
    assert code == 1
    assert "pink primrose" in captured.out
    assert "half.jpg" in captured.err and "Traceback" not in captured.err
    main(["predict", str(bad), good, "--checkpoint", str(result.checkpoint_path), "--json"])
    records = json.loads(capsys.readouterr().out)
    assert "error" in records[0] and "predictions" not in records[0]
    assert records[1]["predictions"][0]["name"] == "pink primrose"


def test_predict_without_names_gives_null(tmp_path, capsys):
    data = build_folder(tmp_path / "d", {"train": 4, "valid": 2}, names=False)
    main(["train", str(data), "--save-dir", str(tmp_path / "r"), "--arch", TINY, "--epochs", "2"])
    capsys.readouterr()
    main(
        [
            "predict",
            str(next((data / "valid" / "1").iterdir())),
            "--checkpoint",
            str(tmp_path / "r" / "checkpoint.pth"),
            "--json",
        ]
    )
    assert json.loads(capsys.readouterr().out)[0]["predictions"][0]["name"] is None


def test_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["predict", "x.jpg", "--checkpoint", str(tmp_path / "missing.pth")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flowerid: error:") and "not found" in err and "Traceback" not in err
    assert main(["train", str(tmp_path), "--arch", "nope"]) != 0
    assert "choose one of" in capsys.readouterr().err


def test_an_output_where_a_file_is_in_the_way_is_one_line(trained, tmp_path, capsys, monkeypatch):
    (tmp_path / "a-file").write_bytes(b"x")
    photo = tmp_path / "p.png"
    make_photo((200, 30, 30), 1).save(photo)
    ckpt = str(trained[1].checkpoint_path)
    for args in (
        ["predict", str(photo), "--checkpoint", ckpt, "--out", str(tmp_path / "a-file" / "o.csv")],
        ["export", ckpt, "--out", str(tmp_path / "a-file" / "m.onnx")],
    ):
        assert main(args) == 1, args
        assert capsys.readouterr().err.strip() == f"flowerid: error: {tmp_path / 'a-file'} is a file, not a folder"
    monkeypatch.setenv("FLOWERID_TRACEBACK", "1")  # for whoever must see where it happened
    with pytest.raises(FileExistsError):
        main(["export", ckpt, "--out", str(tmp_path / "a-file" / "m.onnx")])


def test_bad_numbers_are_usage_errors(trained, tmp_path, capsys):
    """Exit code 2 for bad arguments, as argparse gives for its own checks."""
    ckpt = str(trained[1].checkpoint_path)
    assert main(["predict", "x.jpg", "--checkpoint", ckpt, "--top-k", "0"]) == 2
    assert "--top-k must be at least 1" in capsys.readouterr().err
    assert main(["evaluate", ckpt, str(tmp_path), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err


def _heritage_train():
    import importlib.util

    spec = importlib.util.spec_from_file_location("heritage_train", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_unknown_backbone_is_a_bad_argument(image_folder, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", str(image_folder), "--arch", "nosuch", "--save-dir", run]) == 2
    err = capsys.readouterr().err
    assert "--arch: unknown backbone 'nosuch'" in err and "efficientnet_lite0" in err
    assert _heritage_train().main([str(image_folder), "--arch", "VGG16", "--save_dir", run]) == 2
    assert "did you mean vgg16?" in capsys.readouterr().err
    assert main(["show", str(image_folder), "--arch", "nosuch", "--out", str(tmp_path / "s.png")]) == 2
    assert main(["check", str(image_folder), "--deep", "--arch", "nosuch", "--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "run").exists() and not (tmp_path / "s.png").exists()


def test_heritage_train_names_its_own_flags_in_errors(image_folder, tmp_path, capsys):
    heritage = _heritage_train()
    run = ["--arch", TINY, "--save_dir", str(tmp_path / "run")]
    assert heritage.main([str(image_folder), "--learning_rate", "0", *run]) == 2
    err = capsys.readouterr().err
    assert "--learning_rate must be a positive number" in err and "--learning-rate" not in err
    assert heritage.main([str(image_folder), "--hidden_units", "-1", *run]) == 2
    assert "--hidden_units must be" in capsys.readouterr().err
    assert main(["train", str(image_folder), "--learning-rate", "0", *run[:2]]) == 2
    assert "--learning-rate must be a positive number" in capsys.readouterr().err


def test_backbones_lists_registry(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0" in out and "offline" in out and "downloads" in out


def _run(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_module_entry_point():
    proc = _run("-m", "flowerid", "--version")
    assert proc.returncode == 0 and "flowerid" in proc.stdout


def test_heritage_scripts_with_real_weights(tmp_path):
    data = build_folder(tmp_path / "data", {"train": 3, "valid": 2})
    proc = _run(
        str(ROOT / "train.py"),
        str(data),
        "--save_dir",
        str(tmp_path / "save"),
        "--arch",
        "efficientnet_lite0",
        "--learning_rate",
        "0.001",
        "--hidden_units",
        "256",
        "--epochs",
        "3",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("valid loss") == 3
    img = next((data / "valid" / "10").iterdir())
    proc = _run(
        str(ROOT / "predict.py"),
        str(img),
        str(tmp_path / "save" / "checkpoint.pth"),
        "--top_k",
        "3",
        "--category_names",
        str(data / "cat_to_name.json"),
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == str(img) and len(lines) == 4 and "%" in lines[1]


def test_heritage_gpu_flag_without_cuda_fails_clearly(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    data = build_folder(tmp_path / "data", {"train": 1, "valid": 1})
    proc = _run(str(ROOT / "train.py"), str(data), "--save_dir", str(tmp_path), "--gpu")
    assert proc.returncode == 1
    assert "no CUDA" in proc.stderr and "Traceback" not in proc.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`flowerid ... | head`: the pipe closes before the output is written; no traceback, exit 141
    (128 + SIGPIPE, as the shell reports other tools)."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "flowerid", "backbones"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before the program has started: every write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == ""
