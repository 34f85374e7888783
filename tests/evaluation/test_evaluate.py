"""`evaluate`, its files and figures, `predict --plot`, `show` and train's curves.png, on the tiny backbone."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowerid.apps.cli import main
from flowerid.errors import DataError
from flowerid.evaluation.metrics import recompute
from flowerid.evaluation.photo_figures import plot_paths
from flowerid.evaluation.run import evaluate
from flowerid.model.predictor import Classifier

from ..conftest import (
    ROOT,
    SHARED_DATA,
    build_folder,
)

PNGS = ("confusion.png", "per_class.png", "mistakes.png", "reliability.png", "curves.png")


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    """One evaluation of the tiny model for the tests that only read it."""
    data, result = trained
    out = tmp_path_factory.mktemp("eval") / "valid"
    ev = evaluate(result.checkpoint_path, data / "valid", out, log=lambda s: None)
    return data, result, ev, out


def test_writes_every_file(evaluated):
    _, _, ev, out = evaluated
    for name in ("metrics.json", "report.html", *PNGS):
        assert (out / name).is_file(), name
    for name in PNGS:
        w, h = _png_size(out / name)
        assert w > 300 and h > 100
    assert not (out / "skipped.tsv").exists()
    assert {p.name for p in ev.files} == {"metrics.json", "report.html", *PNGS}


def test_metrics_json_recomputes_and_is_complete(evaluated):
    data, _, ev, out = evaluated
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n"] == 12 and saved["skipped"] == 0
    assert saved["categories"] == ["1", "10", "2"]
    assert saved["names"] == ["pink primrose", "globe thistle", "hard-leaved pocket orchid"]
    again = recompute(saved)
    for key, value in again.items():
        assert saved[key] == pytest.approx(value) if isinstance(value, float) else saved[key] == value, key
    rec = saved["predictions"][0]
    assert set(rec) == {"path", "true", "predicted", "probability", "true_probability", "top_k", "unknown_score"}
    assert Path(rec["path"]).is_file() and Path(rec["path"]).parent.parent == (data / "valid").resolve()
    assert {p["name"] for p in saved["per_class"]} == set(saved["names"])
    assert {"precision", "recall", "f1", "support"} <= set(saved["per_class"][0])
    assert np.asarray(saved["confusion"]).sum() == 12
    assert 0.0 <= saved["calibration"]["ece"] <= 1.0
    assert saved["top1"] >= 0.9  # the tiny model separates the three colours


def test_matches_predict(evaluated):
    _, result, ev, _ = evaluated
    clf = Classifier.load(result.checkpoint_path)
    recs = ev.metrics["predictions"]
    preds = clf.predict_many([r["path"] for r in recs], top_k=1, batch_size=5)
    for rec, pred in zip(recs, preds, strict=True):
        assert pred[0].category == rec["predicted"]
        assert pred[0].probability == pytest.approx(rec["probability"], rel=1e-4)


def test_report_is_self_contained(evaluated):
    _, _, ev, out = evaluated
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"(src|href)=\"(?!data:)", html), "external reference"
    assert "<script" not in html and "<link" not in html and "http" not in html
    assert html.count('src="data:image/') == 5  # curves too: the checkpoint has a history
    assert html.count('src="data:image/jpeg;base64,') == 1  # the photo grid
    assert "globe thistle" in html and f"{ev.metrics['top1']:.1%}"[:-1] in html


def test_figures_for_notebooks(evaluated):
    from matplotlib.figure import Figure

    _, _, ev, _ = evaluated
    for fig in (ev.confusion_figure("accuracy"), ev.per_class_figure(), ev.reliability_figure(), ev.curves_figure()):
        assert isinstance(fig, Figure)
    assert ev.mistakes_figure().axes or ev.mistakes_figure().texts


def test_summary_has_no_bulk(evaluated):
    _, _, ev, _ = evaluated
    s = ev.summary()
    assert {"top1", "top1_ci", "top5", "mean_class_accuracy", "ece", "most_confused", "n"} <= set(s)
    assert not {"predictions", "confusion"} & set(s)
    assert len(s["per_class"]) == 3  # a few categories' precision and recall are headline numbers too


def test_unreadable_images_are_skipped_counted_and_listed(trained, tmp_path):
    data, result = trained
    folder = tmp_path / "valid"
    shutil.copytree(data / "valid", folder)
    (folder / "10" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    ev = evaluate(result.checkpoint_path, folder, tmp_path / "out", figures=False, log=lambda s: None)
    assert ev.metrics["n"] == 12 and ev.metrics["skipped"] == 1
    assert list(ev.skipped) == [str(folder / "10" / "broken.jpg")]
    lines = (tmp_path / "out" / "skipped.tsv").read_text().splitlines()
    assert lines[0] == "path\treason" and lines[1].startswith(str(folder / "10" / "broken.jpg") + "\t")
    (folder / "10" / "broken.jpg").unlink()
    evaluate(result.checkpoint_path, folder, tmp_path / "out", figures=False, log=lambda s: None)
    assert not (tmp_path / "out" / "skipped.tsv").exists()  # no stale list


def test_unknown_category_is_named(trained, tmp_path):
    _, result = trained
    folder = build_folder(tmp_path / "d", {"valid": 2}, classes={"1": (200, 40, 40), "77": (9, 9, 9)}, names=False)
    with pytest.raises(DataError, match="77"):
        evaluate(result.checkpoint_path, folder / "valid", None, log=lambda s: None)


def test_data_root_gets_a_hint(trained):
    data, result = trained
    with pytest.raises(DataError, match=r"valid"):
        evaluate(result.checkpoint_path, data, None, log=lambda s: None)


def test_subset_of_categories_is_fine(trained, tmp_path):
    data, result = trained
    folder = tmp_path / "two"
    for cat in ("1", "2"):
        shutil.copytree(data / "valid" / cat, folder / cat)
    ev = evaluate(result.checkpoint_path, folder, tmp_path / "o", log=lambda s: None)
    assert ev.metrics["classes_present"] == 2 and ev.metrics["n"] == 8
    assert [p["support"] for p in ev.metrics["per_class"]] == [4, 0, 4]


def test_cli_evaluate_text_and_json(trained, tmp_path, capsys):
    data, result = trained
    out = tmp_path / "e"
    assert main(["evaluate", str(result.checkpoint_path), str(data / "valid"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "top-1 accuracy" in text and "95% CI" in text and "mean per-class accuracy" in text
    assert (out / "report.html").exists()
    code = main(["evaluate", str(result.checkpoint_path), str(data / "valid"), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert code == 0 and summary["n"] == 12 and "predictions" not in summary
    assert summary["top1"] == json.loads((out / "metrics.json").read_text())["top1"]


def test_cli_evaluate_default_out_and_errors(trained, tmp_path, capsys):
    data, result = trained
    ck = tmp_path / "run" / "checkpoint.pth"
    ck.parent.mkdir()
    shutil.copy(result.checkpoint_path, ck)
    assert main(["evaluate", str(ck), str(data / "valid"), "--no-figures"]) == 0
    assert (tmp_path / "run" / "eval-valid" / "metrics.json").exists()
    assert not (tmp_path / "run" / "eval-valid" / "confusion.png").exists()
    capsys.readouterr()
    assert main(["evaluate", str(ck), str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flowerid: error:") and "Traceback" not in err


def test_a_folder_name_too_long_to_prefix_gets_a_shortened_default_out(trained, tmp_path, capsys):
    data, result = trained
    ck = tmp_path / "run" / "checkpoint.pth"
    ck.parent.mkdir()
    shutil.copy(result.checkpoint_path, ck)
    long = tmp_path / ("v" * 253)
    shutil.copytree(data / "valid", long)
    assert main(["evaluate", str(ck), str(long), "--no-figures"]) == 0
    (out,) = [p for p in (tmp_path / "run").iterdir() if p.name.startswith("eval-")]
    assert (out / "metrics.json").exists() and len(out.name) <= 100 and out.name.startswith("eval-vvv")
    other = tmp_path / ("v" * 252 + "w")
    long.rename(other)
    assert main(["evaluate", str(ck), str(other), "--no-figures"]) == 0
    assert len([p for p in (tmp_path / "run").iterdir() if p.name.startswith("eval-")]) == 2  # kept apart


def test_train_writes_curves(trained):
    _, result = trained
    assert _png_size(result.checkpoint_path.parent / "curves.png")[0] > 500


def test_predict_plot_one_and_many(trained, tmp_path, capsys):
    data, result = trained
    imgs = [str(data / "valid" / "1" / "img_000.jpg"), str(data / "valid" / "10" / "img_002.png")]
    ck = str(result.checkpoint_path)
    assert main(["predict", imgs[0], "--checkpoint", ck, "--plot", str(tmp_path / "one.png"), "--top-k", "3"]) == 0
    assert _png_size(tmp_path / "one.png")[0] > 500
    capsys.readouterr()
    assert main(["predict", *imgs, "--checkpoint", ck, "--json", "--plot", str(tmp_path / "many.png")]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # plot notes go to stderr, stdout stays JSON
    stems = ["img_000", "img_002"]
    assert sorted(p.name for p in tmp_path.glob("many-*")) == ["many-img_000.png", "many-img_002.png"]
    assert main(["predict", *imgs, "--checkpoint", ck, "--plot", str(tmp_path / "dir") + "/"]) == 0
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == sorted(f"{s}.png" for s in stems)
    assert main(["predict", imgs[0], "--checkpoint", ck, "--plot", str(tmp_path / "x.svg")]) == 0
    assert (tmp_path / "x.svg").read_text().lstrip().startswith("<?xml")
    assert main(["predict", imgs[0], "--checkpoint", ck, "--plot", str(tmp_path / "x.nope")]) == 2
    assert "cannot write a picture" in capsys.readouterr().err


def test_plot_paths(tmp_path):
    assert plot_paths(["a/x.jpg"], tmp_path / "p.png") == [tmp_path / "p.png"]
    assert plot_paths(["a/x.jpg", "b/x.jpg", "y.png"], tmp_path / "p.png") == [
        tmp_path / "p-x.png",
        tmp_path / "p-x-2.png",
        tmp_path / "p-y.png",
    ]
    assert plot_paths(["a/x.jpg"], str(tmp_path) + "/") == [tmp_path / "x.png"]


def test_show_draws_a_batch(image_folder, tmp_path, capsys):
    out = tmp_path / "batch.png"
    assert main(["show", str(image_folder), "--out", str(out), "-n", "6", "--arch", "tiny_test"]) == 0
    assert str(out) in capsys.readouterr().out
    assert _png_size(out)[0] > 300
    from flowerid.backbones import get_spec
    from flowerid.evaluation.photo_figures import sample_batch

    prep = get_spec("tiny_test").preprocessing
    images, labels, skipped = sample_batch(image_folder / "train", 5, 1, prep, {"1": "pink primrose"})
    assert len(images) == 5 and not skipped
    assert images[0].shape == (32, 32, 3) and images[0].min() >= 0.0 and images[0].max() <= 1.0
    assert set(labels) <= {"pink primrose", "10", "2"}
    images, labels, _ = sample_batch(image_folder / "train", 100, 0, prep, {"1": "pink primrose"})
    assert len(images) == 24 and labels.count("pink primrose") == 8  # asking for more gives them all
    # normalisation is undone: the red (200, 40, 40) photos look red again, at about their colour
    red = np.mean([img.mean(axis=(0, 1)) for img, lab in zip(images, labels, strict=True) if lab == "pink primrose"], 0)
    assert red == pytest.approx(np.array([200, 40, 40]) / 255, abs=0.05)


def test_prediction_does_not_import_matplotlib(trained):
    data, result = trained
    code = (
        "import sys, flowerid\n"
        "import tests.conftest  # registers the tiny backbone\n"
        f"clf = flowerid.load({str(result.checkpoint_path)!r})\n"
        f"clf.predict({str(next((data / 'valid' / '1').iterdir()))!r})\n"
        "from flowerid.evaluation import run\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_confusion_figure_at_102_classes():
    """A full-size synthetic case: labels get room, so the figure grows with the class count."""
    from flowerid.evaluation.figures import confusion_figure
    from flowerid.evaluation.metrics import Outcomes, compute_metrics

    rng = np.random.default_rng(0)
    cats = [str(i) for i in range(1, 103)]
    names = [f"flower number {i} with a long name" for i in range(1, 103)]
    y = np.repeat(np.arange(102), 3)
    probs = rng.dirichlet(np.ones(102) * 0.05, size=len(y))
    m = compute_metrics(Outcomes.from_probs(y, probs), cats, names)
    fig = confusion_figure({**m, "categories": cats, "names": names})
    w, h = fig.get_size_inches()
    assert w > 15 and h > 15
    assert len(fig.axes[0].get_xticklabels()) == 102


ODD = os.fsdecode(b"r\xffd")  # a folder name that is not UTF-8, as Python holds it (a surrogate)


def test_figures_draw_names_that_are_not_utf8_or_hold_dollars_and_control_characters(tmp_path):
    from flowerid.evaluation.figures import confusion_figure, drawable, figure_png, mistakes_figure, per_class_figure
    from flowerid.evaluation.metrics import Outcomes, compute_metrics
    from flowerid.evaluation.photo_figures import batch_figure, prediction_figure

    cats = [ODD, "a$\\foo$b", "x\x1by", "\ud800"]
    y = np.repeat(np.arange(4), 3)
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=len(y))
    m = compute_metrics(Outcomes.from_probs(y, probs), cats, [None] * 4)
    m = {**m, "categories": cats, "names": [None] * 4}
    m["predictions"] = [{"path": str(tmp_path / f"{ODD}.jpg"), "true": ODD, "predicted": "x\x1by", "probability": 0.9}]
    for fig in (confusion_figure(m), per_class_figure(m), mistakes_figure(m)):
        assert figure_png(fig)[:4] == b"\x89PNG"
    preds = [{"category": c, "name": None, "probability": 0.25} for c in cats]
    img = np.zeros((8, 8, 3))
    assert figure_png(prediction_figure(img, preds, title=f"{ODD}.jpg"))[:4] == b"\x89PNG"
    assert figure_png(batch_figure([img, img], [ODD, "\ud800"], title=f"/data/{ODD}"))[:4] == b"\x89PNG"
    assert drawable(ODD) == "r\\xffd" and drawable("a$b") == "a\\$b" and drawable("x\x1by") == "x\\x1by"


def test_evaluate_predict_plot_and_show_a_category_folder_that_is_not_utf8(tmp_path, capsys):
    from flowerid.training.run import TrainConfig, train

    data = build_folder(tmp_path / "data", {"train": 3, "valid": 2}, names=False)
    for split in ("train", "valid"):
        os.rename(data / split / "1", data / split / ODD)
    result = train(data, tmp_path / "run", TrainConfig(arch="tiny_test", epochs=1, num_workers=0), log=lambda s: None)
    ck = str(result.checkpoint_path)
    assert main(["evaluate", ck, str(data / "valid"), "--out", str(tmp_path / "ev")]) == 0
    assert "r\\xffd" in (tmp_path / "ev" / "report.html").read_text(encoding="utf-8")
    assert _png_size(tmp_path / "ev" / "confusion.png")[0] > 300
    photo = next((data / "valid" / ODD).iterdir())
    assert main(["predict", str(photo), "--checkpoint", ck, "--plot", str(tmp_path / "p.png")]) == 0
    assert main(["show", str(data), "--out", str(tmp_path / "s.png"), "-n", "4", "--arch", "tiny_test"]) == 0
    assert _png_size(tmp_path / "p.png")[0] > 300 and _png_size(tmp_path / "s.png")[0] > 300


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs the shared flowers data")
def test_shared_valid_subset(tmp_path):
    """A real backbone on a few real photos: evaluate agrees with training's own valid accuracy."""
    sub = tmp_path / "data"
    cats = sorted(os.listdir(SHARED_DATA / "train"))[:4]
    for split, count in (("train", 6), ("valid", 4)):
        for cat in cats:
            (sub / split / cat).mkdir(parents=True)
            for p in sorted((SHARED_DATA / split / cat).iterdir())[:count]:
                (sub / split / cat / p.name).symlink_to(p)
    shutil.copy(SHARED_DATA / "cat_to_name.json", sub)
    from flowerid.training.run import TrainConfig, train

    res = train(sub, tmp_path / "run", TrainConfig(epochs=10), log=lambda s: None)
    ev = evaluate(res.checkpoint_path, sub / "valid", tmp_path / "eval", log=lambda s: None)
    assert ev.metrics["top1"] == pytest.approx(res.metrics["valid_acc"], abs=1 / ev.metrics["n"])
    assert (tmp_path / "eval" / "report.html").stat().st_size > 10_000
