"""The built-in flower model: in the package, used by default, described by `info`, rebuilt by a script."""

import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest

from flowerid._io import file_sha256
from flowerid.apps.cli import main
from flowerid.errors import CheckpointError
from flowerid.model.builtin import shipped_model_path
from flowerid.model.checkpoint import load_checkpoint
from flowerid.training.config import PRESETS

from ..conftest import (
    ROOT,
    SHARED_DATA,
    TINY,
    build_folder,
    make_photo,
)


@pytest.fixture(scope="module")
def shipped():
    return load_checkpoint(shipped_model_path())


def test_shipped_model_is_small_complete_and_built_on_the_distilled_recipe(shipped):
    from flowerid.model.class_stats import ClassStats

    path = shipped_model_path()
    assert path.parent == ROOT / "src" / "flowerid" / "models"
    assert path.stat().st_size < 3_500_000  # a head, a class mean per category, and the statistics `add` needs
    assert ClassStats.from_state(shipped["class_stats"], 102, 1280).counts.sum() == 6552
    assert shipped["unknown"]["method"] == "gen+cosine" and shipped["unknown"]["accept_rate"] == 0.95
    # The tuned last stage ships beside it as the tensors tuning changed, not as a whole network.
    weights = Path(shipped["backbone"]["weights_path"])
    assert weights.parent == path.parent and weights.name == "flowers102-backbone.pth"
    assert weights.stat().st_size < 5_000_000 and file_sha256(weights) == shipped["backbone"]["weights_digest"]
    assert shipped["backbone"]["name"] == "efficientnet_lite0"
    assert len(shipped["categories"]) == 102 and all(shipped["names"])
    assert shipped["head"]["config"]["hidden_units"] == 0
    t, m = shipped["training"], shipped["metrics"]
    assert t["preset"] == "distilled" and t["tune_stages"] == 1 and t["data_dir"] == "flowers102, train/valid split"
    assert t["teacher"] == "best on flowers102, train/valid split" and m["teacher"]["preset"] == "best"
    recipe = PRESETS["distilled"]  # rebuilt whenever the recipe changes (scripts/build_shipped_model.py)
    assert (t["views"], t["epochs"], t["distill_temperature"]) == (
        recipe.views,
        recipe.epochs,
        recipe.distill_temperature,
    )
    assert t["train_images"] == 6552 and t["valid_images"] == 818
    assert m["valid_acc"] >= 0.96
    runs = t["selection"]
    assert runs and m["valid_acc"] == max(r["valid_acc"] for r in runs)


def test_readme_states_the_shipped_accuracy(shipped):
    readme = (ROOT / "README.md").read_text()
    assert f"valid top-1 {shipped['metrics']['valid_acc']:.2%}" in readme  # the built-in model's own sentence


def test_package_data_includes_the_model():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "models/*.pth" in config["tool"]["setuptools"]["package-data"]["flowerid"]


def test_predict_without_checkpoint_uses_the_shipped_model(shipped, tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    make_photo((220, 180, 40), seed=3, size=(300, 260)).save(photo)
    assert main(["predict", str(photo), "--top-k", "3", "--device", "cpu", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    preds = record["predictions"]
    assert len(preds) == 3 and all(p["name"] in shipped["names"] for p in preds)
    assert preds[0]["probability"] >= preds[1]["probability"] >= preds[2]["probability"]
    assert main(["predict", str(photo), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(str(photo)) and preds[0]["name"] in out


def test_missing_shipped_model_is_a_clear_error(monkeypatch, capsys):
    import flowerid.model.builtin as shipped_mod

    monkeypatch.setattr(shipped_mod, "SHIPPED_MODEL", "nope.pth")
    with pytest.raises(CheckpointError, match="reinstall flowerid"):
        shipped_mod.shipped_model_path()
    assert main(["info"]) == 1
    assert "reinstall" in capsys.readouterr().err


def test_info_describes_the_shipped_model(shipped, capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "built-in model" in out and "efficientnet_lite0" in out and "102: pink primrose" in out
    assert file_sha256(shipped_model_path()) in out
    assert f"top-1 {shipped['metrics']['valid_acc']:.2%}" in out
    assert "6552 train / 818 valid" in out and "chosen from" in out
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_classes"] == 102 and info["shipped"] is True
    assert info["metrics"]["valid_acc"] == shipped["metrics"]["valid_acc"]
    assert "state_dict" not in json.dumps(info) and "history" not in info["metrics"]


def test_info_on_a_trained_checkpoint(trained, capsys):
    _, result = trained
    assert main(["info", str(result.checkpoint_path)]) == 0
    out = capsys.readouterr().out
    assert TINY in out and "linear 16 → 3" in out and "test" in out and "built-in" not in out
    assert main(["info", str(result.checkpoint_path.parent / "nope.pth")]) == 1
    assert "not found" in capsys.readouterr().err


def _build_script():
    spec = importlib.util.spec_from_file_location("build_shipped_model", ROOT / "scripts" / "build_shipped_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_script_keeps_the_best_setting_on_valid(tmp_path, capsys):
    data = build_folder(tmp_path / "data", {"train": 6, "valid": 3})
    out = tmp_path / "model.pth"
    argv = ["--data", str(data), "--out", str(out), "--set", f"arch={TINY}", "--set", "num_workers=0"]
    code = _build_script().main([*argv, "--grid", "learning_rate=0.0001,0.05", "--grid", "epochs=3"])
    assert code == 0
    ckpt = load_checkpoint(out)
    runs = ckpt["training"]["selection"]
    assert [r["settings"] for r in runs] == [
        {"learning_rate": 0.0001, "epochs": 3},
        {"learning_rate": 0.05, "epochs": 3},
    ]
    best = max(runs, key=lambda r: (r["valid_acc"], -r["valid_loss"]))
    assert ckpt["training"]["learning_rate"] == best["settings"]["learning_rate"]
    assert ckpt["metrics"]["valid_acc"] == best["valid_acc"]
    assert re.search(r"chose .*valid top-1", capsys.readouterr().out)
    assert _build_script().main([*argv, "--grid", "nonsense=1"]) == 2


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared flowers data not present")
def test_shipped_model_accuracy_on_valid_sample(shipped):
    from flowerid.data.folders import load_dataset
    from flowerid.model.predictor import Classifier

    valid = load_dataset(SHARED_DATA).valid
    first = {}
    for path, target in valid.samples:  # one photo per category
        first.setdefault(target, path)
    clf = Classifier.load(shipped_model_path(), device="cpu")
    results = clf.predict_many([first[t] for t in sorted(first)], top_k=1)
    correct = sum(r[0].category == valid.categories[t] for t, r in zip(sorted(first), results, strict=True))
    assert correct / len(first) >= 0.9


def test_library_load_defaults_to_the_shipped_model(shipped):
    import flowerid

    clf = flowerid.load(device="cpu")
    assert clf.categories == shipped["categories"] and clf.num_classes == 102


def test_a_model_is_of_flowers_when_most_of_its_names_are_the_builtin_flowers():
    from flowerid.model.builtin import names_flowers

    assert names_flowers(["1", "2"], ["Pink Primrose", "hard-leaved pocket orchid"])
    assert names_flowers(["a", "b"], ["sunflower", "my garden weed"])  # half is enough
    assert not names_flowers(["cats", "dogs"], ["cat", None])
    assert not names_flowers([], [])
    assert not names_flowers(["1", "2", "3"], [None, None, None])  # numbered categories of anything
    assert names_flowers([str(i) for i in range(1, 103)], [None] * 102)  # the flowers data without names
