"""Metrics against values worked out by hand on a 7-image, 4-class case.

Classes a, b, c, d. True: a a a b b c c. Top-1: a a b b d a b.
Confusion (rows true):  a [2 1 0 0]  b [0 1 0 1]  c [1 1 0 0]  d [0 0 0 0]
c has support but is never predicted; d is predicted once but has no support.
"""

import math

import numpy as np
import pytest

from flowerid.evaluation.metrics import (
    Outcomes,
    calibration,
    compute_metrics,
    outcomes_from_records,
    recompute,
    wilson_interval,
)

CATS = ["a", "b", "c", "d"]
NAMES = ["alpha", "beta", None, "delta"]
Y = [0, 0, 0, 1, 1, 2, 2]
PROBS = np.array(
    [
        [0.6, 0.3, 0.05, 0.05],
        [0.5, 0.1, 0.3, 0.1],
        [0.2, 0.7, 0.05, 0.05],  # a predicted b, a second: a top-2 hit
        [0.1, 0.8, 0.05, 0.05],
        [0.1, 0.2, 0.3, 0.4],  # b predicted d, then c: a top-2 miss
        [0.45, 0.35, 0.1, 0.1],  # c predicted a, then b: miss
        [0.1, 0.5, 0.4, 0.0],  # c predicted b, then c: hit
    ]
)


@pytest.fixture
def m():
    return compute_metrics(Outcomes.from_probs(Y, PROBS, k=2), CATS, NAMES, n_bins=2)


def test_accuracy_and_intervals(m):
    assert m["n"] == 7 and m["k"] == 2
    assert m["top1"] == pytest.approx(3 / 7)
    assert m["top5"] == pytest.approx(5 / 7)  # the top-k figure, k = 2 here
    assert m["top1_ci"] == pytest.approx(list(wilson_interval(3, 7)))
    assert m["classes_present"] == 3


def test_wilson_interval_published_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_confusion_and_per_class(m):
    assert m["confusion"] == [[2, 1, 0, 0], [0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]]
    a, b, c, d = m["per_class"]
    assert (a["category"], a["name"], c["name"]) == ("a", "alpha", None)
    assert a["precision"] == pytest.approx(2 / 3) and a["recall"] == pytest.approx(2 / 3)
    assert a["f1"] == pytest.approx(2 / 3)
    assert b["precision"] == pytest.approx(1 / 3) and b["recall"] == pytest.approx(1 / 2)
    assert b["f1"] == pytest.approx(0.4)
    # never predicted: precision undefined, not a silent 0; recall 0, F1 0
    assert c["precision"] is None and c["recall"] == 0.0 and c["f1"] == 0.0
    assert (c["support"], c["predicted"]) == (2, 0)
    # no support: recall undefined; its one prediction is wrong, so precision 0 and F1 0
    assert d["recall"] is None and d["precision"] == 0.0 and d["f1"] == 0.0
    assert (d["support"], d["predicted"]) == (0, 1)


def test_macro_averages_cover_present_classes(m):
    assert m["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert m["macro_recall"] == m["mean_class_accuracy"]
    assert m["macro_precision"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.4 + 0) / 3)


def test_calibration_by_hand(m):
    cal = m["calibration"]
    # bins (0, .5]: confidences .5 .4 .45 .5, one right; (.5, 1]: .6 .7 .8, two right
    low, high = cal["bins"]
    assert (low["count"], high["count"]) == (4, 3)
    assert low["accuracy"] == pytest.approx(1 / 4) and low["confidence"] == pytest.approx(0.4625)
    assert high["accuracy"] == pytest.approx(2 / 3) and high["confidence"] == pytest.approx(0.7)
    assert cal["ece"] == pytest.approx(4 / 7 * 0.2125 + 3 / 7 * (0.7 - 2 / 3))
    assert cal["mean_confidence"] == pytest.approx(3.95 / 7)


def test_calibration_edges_and_empty_bins():
    cal = calibration(np.array([1.0, 0.0, 0.95]), np.array([True, False, True]), n_bins=10)
    assert cal["bins"][-1]["count"] == 2 and cal["bins"][0]["count"] == 1
    assert cal["bins"][5]["count"] == 0 and cal["bins"][5]["accuracy"] is None
    assert cal["ece"] == pytest.approx(1 / 3 * 0.0 + 2 / 3 * abs(1 - 0.975))


def test_nll(m):
    true_p = [0.6, 0.5, 0.2, 0.8, 0.2, 0.1, 0.4]
    assert m["nll"] == pytest.approx(-sum(math.log(p) for p in true_p) / 7)


def test_most_confused_order(m):
    pairs = [(c["true"], c["predicted"], c["count"]) for c in m["most_confused"]]
    # all counts 1: larger share of the true class first (b→d, c→a, c→b are 1/2; a→b is 1/3)
    assert pairs == [("b", "d", 1), ("c", "a", 1), ("c", "b", 1), ("a", "b", 1)]
    assert m["most_confused"][0]["rate"] == pytest.approx(0.5)
    assert m["most_confused"][0]["label"] == "beta → delta"
    assert m["most_confused"][1]["label"] == "c → alpha"  # no name: the category


def test_perfect_predictions_have_no_confusions():
    probs = np.eye(3)[[0, 1, 2, 2]] * 0.9 + 0.1 / 3
    m = compute_metrics(Outcomes.from_probs([0, 1, 2, 2], probs), ["x", "y", "z"])
    assert m["top1"] == 1.0 and m["most_confused"] == [] and m["macro_f1"] == 1.0
    assert m["k"] == 3  # k is capped at the number of classes


def test_ties_break_towards_the_lower_index():
    out = Outcomes.from_probs([1], np.array([[0.5, 0.5]]), k=2)
    assert out.y_pred.tolist() == [0]


def test_records_round_trip(m):
    out = Outcomes.from_probs(Y, PROBS, k=2)
    records = [
        {
            "true": CATS[y],
            "top_k": [[CATS[c], float(p)] for c, p in zip(out.topk[i], out.topk_prob[i], strict=True)],
            "true_probability": float(out.true_prob[i]),
        }
        for i, y in enumerate(Y)
    ]
    back = outcomes_from_records(records, CATS)
    assert back.y_pred.tolist() == [0, 0, 1, 1, 3, 0, 1]
    saved = {**m, "categories": CATS, "names": NAMES, "predictions": records}
    assert recompute(saved) == m
