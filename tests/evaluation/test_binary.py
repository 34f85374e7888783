"""`evaluate` on a two-category model: confusion matrix, precision and recall, ROC curve and AUC."""

import json

import numpy as np
import pytest

from flowerid.apps.cli import main
from flowerid.evaluation.metrics import Outcomes, auroc, binary_roc, compute_metrics, positive_scores, recompute
from flowerid.training.run import TrainConfig, train

from ..conftest import CLASS_COLOURS, TINY, build_folder

TWO = {"cats": CLASS_COLOURS["1"], "dogs": CLASS_COLOURS["2"]}


def test_binary_roc_from_probabilities():
    y = np.array([0, 0, 0, 1, 1, 1])
    p_dog = np.array([0.1, 0.4, 0.7, 0.35, 0.8, 0.9])
    out = Outcomes.from_probs(y, np.stack([1 - p_dog, p_dog], 1))
    b = binary_roc(out, ["cats", "dogs"], [None, None])
    # Pairs (dog, cat) ranked right: 0.35 beats 0.1 only; 0.8 and 0.9 beat all three: 7 of 9.
    assert b["auc"] == pytest.approx(7 / 9) and b["positive"] == "dogs"
    assert b["roc"]["fpr"][0] == 0.0 and b["roc"]["tpr"][-1] == 1.0 and b["roc"]["fpr"][-1] == 1.0
    assert all(np.diff(b["roc"]["fpr"]) >= 0) and all(np.diff(b["roc"]["tpr"]) >= 0)
    assert b["at_half"] == {"fpr": pytest.approx(1 / 3), "tpr": pytest.approx(2 / 3)}
    # Top-1 records alone (k = 1) give the same scores: the other probability is one minus the top one.
    top1 = Outcomes.from_probs(y, np.stack([1 - p_dog, p_dog], 1), k=1)
    assert np.allclose(positive_scores(top1), p_dog)
    assert auroc(p_dog[y == 0], p_dog[y == 1]) == b["auc"]


def test_one_category_present_has_no_curve():
    out = Outcomes.from_probs(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]))
    b = compute_metrics(out, ["a", "b"])["binary"]
    assert b["auc"] is None and b["roc"] is None and b["n_negative"] == 0
    assert "binary" not in compute_metrics(Outcomes.from_probs([0], np.array([[0.5, 0.3, 0.2]])), ["a", "b", "c"])


def test_evaluate_two_categories_end_to_end(tmp_path, capsys):
    data = build_folder(tmp_path / "data", {"train": 8, "valid": 5}, classes=TWO, names=False)
    cfg = TrainConfig(arch=TINY, epochs=20, learning_rate=0.02, num_workers=0)
    result = train(data, tmp_path / "run", cfg, log=lambda s: None)
    out_dir = tmp_path / "eval"
    args = ["evaluate", str(result.checkpoint_path), str(data / "valid"), "--out", str(out_dir)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "category  precision   recall  photos" in text and "confusion matrix (rows true, columns predicted)" in text
    assert "ROC AUC" in text and "(dogs as the positive category)" in text
    metrics = json.loads((out_dir / "metrics.json").read_text())
    b = metrics["binary"]
    assert b["n_positive"] == 5 and b["n_negative"] == 5 and 0.0 <= b["auc"] <= 1.0
    assert recompute(metrics)["binary"] == b  # the per-image records give it back
    assert sum(map(sum, metrics["confusion"])) == 10
    assert [p["category"] for p in metrics["per_class"]] == ["cats", "dogs"]
    assert (out_dir / "roc.png").stat().st_size > 1000
    html = (out_dir / "report.html").read_text()
    assert "<h2>ROC curve</h2>" in html and "dogs as the positive category" in html and "<details open>" in html
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["binary"]["auc"] == b["auc"] and "roc" not in summary["binary"]
    assert len(summary["per_class"]) == 2 and {"precision", "recall"} <= set(summary["per_class"][0])


def test_many_categories_have_no_roc(trained, tmp_path):
    data, result = trained
    assert main(["evaluate", str(result.checkpoint_path), str(data / "valid"), "--out", str(tmp_path / "e")]) == 0
    assert not (tmp_path / "e" / "roc.png").exists()
    assert "binary" not in json.loads((tmp_path / "e" / "metrics.json").read_text())
