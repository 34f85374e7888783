"""Classification metrics from per-image predictions, in plain numpy.

Everything here works from what `metrics.json` stores for each image (true
class, top-k classes with probabilities, the true class's probability), so a
saved evaluation can always be recomputed from its own records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: z for a two-sided 95% interval.
Z95 = 1.959963984540054

#: Equal-width confidence bins for the expected calibration error.
DEFAULT_BINS = 15


@dataclass
class Outcomes:
    """Per-image results: true index, top-k indices and probabilities, true-class probability."""

    y_true: np.ndarray  # (N,) int
    topk: np.ndarray  # (N, k) int, most probable first
    topk_prob: np.ndarray  # (N, k) float
    true_prob: np.ndarray  # (N,) float

    @classmethod
    def from_probs(cls, y_true: Sequence[int] | np.ndarray, probs: np.ndarray, k: int = 5) -> Outcomes:
        """From a full (N, C) probability matrix; ties break towards the lower class index."""
        probs = np.asarray(probs, dtype=np.float64)
        y = np.asarray(y_true, dtype=np.int64)
        k = min(k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return cls(y, order, np.take_along_axis(probs, order, axis=1), probs[np.arange(len(y)), y])

    @property
    def y_pred(self) -> np.ndarray:
        return self.topk[:, 0]

    @property
    def confidence(self) -> np.ndarray:
        return self.topk_prob[:, 0]


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion: sound at small n and near 0 or 1, unlike p ± z·se."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def per_class_scores(cm: np.ndarray) -> list[dict[str, Any]]:
    """Precision, recall, F1, support and predicted count for each class.

    Undefined values are None, never a silent 0: precision of a class never
    predicted, recall of a class with no support, F1 when both are absent.
    F1 is 2TP / (2TP + FP + FN), so a class with support that is never
    predicted (or predicted with no support) scores 0.
    """
    tp = np.diag(cm).astype(np.int64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    out = []
    for c in range(len(cm)):
        fp, fn = int(predicted[c] - tp[c]), int(support[c] - tp[c])
        out.append(
            {
                "precision": _ratio(tp[c], predicted[c]),
                "recall": _ratio(tp[c], support[c]),
                "f1": _ratio(2 * tp[c], 2 * tp[c] + fp + fn),
                "support": int(support[c]),
                "predicted": int(predicted[c]),
            }
        )
    return out


def calibration(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """Expected calibration error over equal-width bins of top-1 confidence, with the bins.

    A confidence of exactly 1.0 falls in the last bin; bins are (lo, hi].
    ECE = sum over bins of (bin count / N) * |accuracy - mean confidence|.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    n = len(conf)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    bins = []
    ece = 0.0
    for b in range(n_bins):
        sel = which == b
        count = int(sel.sum())
        acc = float(ok[sel].mean()) if count else None
        mean_conf = float(conf[sel].mean()) if count else None
        if count:
            ece += count / n * abs(acc - mean_conf)  # type: ignore[operator]
        bins.append(
            {"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count, "accuracy": acc, "confidence": mean_conf}
        )
    return {
        "ece": float(ece) if n else None,
        "n_bins": n_bins,
        "mean_confidence": float(conf.mean()) if n else None,
        "bins": bins,
    }


def most_confused(cm: np.ndarray, limit: int = 20) -> list[tuple[int, int, int]]:
    """Off-diagonal (true, predicted, count) cells: most images first, then the larger share of
    the true class, then class order."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    rows, cols = np.nonzero(off)
    support = cm.sum(axis=1)
    cells = zip(rows.tolist(), cols.tolist(), off[rows, cols].tolist(), strict=True)
    return sorted(cells, key=lambda t: (-t[2], -t[2] / support[t[0]], t[0], t[1]))[:limit]


def _mean(values: list[float | None]) -> float | None:
    return float(np.mean(values)) if values else None


def compute_metrics(
    out: Outcomes,
    categories: Sequence[str],
    names: Sequence[str | None] | None = None,
    *,
    n_bins: int = DEFAULT_BINS,
    confused_limit: int = 20,
) -> dict[str, Any]:
    """Every summary number, per-class table, confusion matrix and calibration, as plain JSON data.

    Macro averages and the mean per-class accuracy cover the classes present
    in the evaluated data (support > 0); a present class never predicted
    counts as precision 0 there, since that is a real failure of the model.
    """
    categories = list(categories)
    names = list(names) if names is not None else [None] * len(categories)
    c = len(categories)
    n = len(out.y_true)
    k = out.topk.shape[1] if out.topk.ndim == 2 else 0
    correct1 = out.y_pred == out.y_true if n else np.zeros(0, dtype=bool)
    in_topk = (out.topk == out.y_true[:, None]).any(axis=1) if n else np.zeros(0, dtype=bool)
    hits1, hitsk = int(correct1.sum()), int(in_topk.sum())
    cm = confusion_matrix(out.y_true, out.y_pred, c)
    per_class = [
        {"category": cat, "name": name, **scores}
        for cat, name, scores in zip(categories, names, per_class_scores(cm), strict=True)
    ]
    present = [p for p in per_class if p["support"] > 0]
    label = [nm or cat for cat, nm in zip(categories, names, strict=True)]
    confused = [
        {
            "true": categories[t],
            "true_name": names[t],
            "predicted": categories[p],
            "predicted_name": names[p],
            "count": int(cnt),
            "rate": float(cnt / cm[t].sum()),
            "label": f"{label[t]} → {label[p]}",
        }
        for t, p, cnt in most_confused(cm, confused_limit)
    ]
    nll = float(-np.mean(np.log(np.clip(out.true_prob, 1e-12, 1.0)))) if n else None
    binary = {"binary": binary_roc(out, categories, names)} if c == 2 else {}
    return {
        "n": n,
        "num_classes": c,
        "classes_present": len(present),
        "top1": hits1 / n if n else None,
        "top1_ci": list(wilson_interval(hits1, n)),
        "k": k,
        "top5": hitsk / n if n else None,
        "top5_ci": list(wilson_interval(hitsk, n)),
        "mean_class_accuracy": _mean([p["recall"] for p in present]),
        "macro_precision": _mean([p["precision"] or 0.0 for p in present]),
        "macro_recall": _mean([p["recall"] for p in present]),
        "macro_f1": _mean([p["f1"] for p in present]),
        "nll": nll,
        "calibration": calibration(out.confidence, correct1, n_bins),
        "most_confused": confused,
        "per_class": per_class,
        "confusion": cm.tolist(),
        **binary,
    }


def positive_scores(out: Outcomes) -> np.ndarray:
    """The probability of the second category (the positive one) for each photo of a two-category model.

    From the top-k records: with k = 1 the other category's probability is one minus the top one's.
    """
    hit = out.topk == 1
    p = np.where(hit.any(axis=1), (out.topk_prob * hit).sum(axis=1), np.nan)
    missing = np.isnan(p)
    p[missing] = 1.0 - out.topk_prob[missing, 0]
    return p


def binary_roc(
    out: Outcomes, categories: Sequence[str], names: Sequence[str | None], max_points: int = 400
) -> dict[str, Any]:
    """ROC curve and its area for a two-category model, the second category taken as the positive one.

    AUC is the chance that a photo of the positive category scores higher than one of the other (ties
    half); None when the data hold photos of only one of them. The curve runs from (0, 0) to (1, 1),
    one point per distinct score (at most `max_points`); `at_half` is the operating point of the
    model's own decision (the more probable category).
    """
    scores = positive_scores(out)
    pos, neg = scores[out.y_true == 1], scores[out.y_true == 0]
    cuts = np.unique(scores)[::-1]
    if len(cuts) > max_points:
        cuts = np.quantile(cuts, np.linspace(1, 0, max_points))
    both = len(pos) > 0 and len(neg) > 0
    rate = lambda xs, t: float((xs >= t).mean()) if len(xs) else None  # noqa: E731
    return {
        "positive": categories[1],
        "positive_name": names[1] if names else None,
        "n_positive": len(pos),
        "n_negative": len(neg),
        "auc": auroc(neg, pos) if both else None,
        "roc": {
            "fpr": [0.0] + [rate(neg, t) for t in cuts] + [1.0],
            "tpr": [0.0] + [rate(pos, t) for t in cuts] + [1.0],
        }
        if both
        else None,
        "at_half": {
            "fpr": float((out.y_pred[out.y_true == 0] == 1).mean()) if len(neg) else None,
            "tpr": float((out.y_pred[out.y_true == 1] == 1).mean()) if len(pos) else None,
        },
    }


def outcomes_from_records(records: Sequence[dict[str, Any]], categories: Sequence[str]) -> Outcomes:
    """Rebuild Outcomes from metrics.json's per-image `predictions` records."""
    index = {c: i for i, c in enumerate(categories)}
    y = np.asarray([index[r["true"]] for r in records], dtype=np.int64)
    k = min((len(r["top_k"]) for r in records), default=0)
    topk = np.asarray([[index[c] for c, _ in r["top_k"][:k]] for r in records], dtype=np.int64).reshape(len(y), k)
    topk_p = np.asarray([[p for _, p in r["top_k"][:k]] for r in records], dtype=np.float64).reshape(len(y), k)
    true_p = np.asarray([r["true_probability"] for r in records], dtype=np.float64)
    return Outcomes(y, topk, topk_p, true_p)


def recompute(metrics: dict[str, Any]) -> dict[str, Any]:
    """Recompute every derived number of a saved metrics.json from its per-image records."""
    cats = metrics["categories"]
    out = outcomes_from_records(metrics["predictions"], cats)
    return compute_metrics(
        out,
        cats,
        metrics.get("names"),
        n_bins=metrics["calibration"]["n_bins"],
        confused_limit=max(len(metrics["most_confused"]), 1) if metrics["most_confused"] else 20,
    )


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """The chance that an unknown photo scores higher than a known one (ties count half): ROC area."""
    k = np.sort(np.asarray(known, dtype=np.float64))
    u = np.asarray(unknown, dtype=np.float64)
    if not len(k) or not len(u):
        return float("nan")
    below = np.searchsorted(k, u, side="left")
    at_or_below = np.searchsorted(k, u, side="right")
    return float((below + 0.5 * (at_or_below - below)).sum() / (len(k) * len(u)))


def rejection_metrics(
    known: np.ndarray, unknown: np.ndarray, threshold: float, accept_rate: float = 0.95, bins: int = 40
) -> dict[str, Any]:
    """How well unknown scores (higher: less like training) separate photos of other things from known ones.

    `unknown_accepted_at_95`: the share of unknown photos let through by the threshold that keeps
    `accept_rate` of these known photos (FPR at 95% TPR, the usual figure); the `*_at_threshold`
    rates use the model's own stored threshold. The ROC and histogram are for the report's figure.
    """
    known = np.asarray(known, dtype=np.float64)
    unknown = np.asarray(unknown, dtype=np.float64)
    t95 = float(np.quantile(known, accept_rate))
    cuts = np.unique(np.concatenate([known, unknown]))
    if len(cuts) > 400:
        cuts = np.quantile(cuts, np.linspace(0, 1, 400))
    cuts = np.concatenate([[-np.inf], cuts])  # the ROC starts at (1, 1): everything called unknown
    lo, hi = float(min(known.min(), unknown.min())), float(max(known.max(), unknown.max()))
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    return {
        "n_known": len(known),
        "n_unknown": len(unknown),
        "auroc": auroc(known, unknown),
        "accept_rate": accept_rate,
        "unknown_accepted_at_95": float((unknown <= t95).mean()),
        "threshold": float(threshold),
        "known_rejected_at_threshold": float((known > threshold).mean()),
        "unknown_accepted_at_threshold": float((unknown <= threshold).mean()),
        "roc": {
            "known_rejected": [float((known > c).mean()) for c in cuts],
            "unknown_rejected": [float((unknown > c).mean()) for c in cuts],
        },
        "histogram": {
            "edges": edges.tolist(),
            "known": np.histogram(known, edges)[0].tolist(),
            "unknown": np.histogram(unknown, edges)[0].tolist(),
        },
    }
