"""Figures as matplotlib objects: evaluation pictures and training curves (photos: photo_figures.py).

Importing this module imports matplotlib, so nothing else imports it at module
level: prediction never pays for plotting. Figures are built on
`matplotlib.figure.Figure` without pyplot, so no GUI backend or global state is
touched; a notebook displays a returned figure, a script saves it with
`save_figure` (atomic, like every other file flowerid writes).
"""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from .._io import atomic_write_bytes
from .._text import shown, utf8_safe
from ..data.preprocess import Preprocessing
from ..errors import ImageError

DPI = 110
RED, GREEN, BLUE, ORANGE, GREY = "#c0392b", "#1e8449", "#2e6da4", "#e67e22", "#7f8c8d"


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def drawable(text: object) -> str:
    """Text from outside (a category, a file or folder name) as matplotlib can draw it, literally: control
    characters escaped as `shown` prints them, bytes that are not UTF-8 (kept as surrogates) as \\xNN, which
    matplotlib cannot render at all, and `$` escaped, which would start (maybe broken) mathtext."""
    return utf8_safe(shown(text)).replace("$", r"\$")


def label_of(category: str, name: str | None) -> str:
    """The drawn label of a category: its name where known."""
    return drawable(name or category)


def _labels(metrics: dict[str, Any]) -> list[str]:
    names = metrics.get("names") or [None] * len(metrics["categories"])
    return [label_of(c, n) for c, n in zip(metrics["categories"], names, strict=True)]


def wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


# ---------------------------------------------------------------- evaluation


def confusion_figure(metrics: dict[str, Any], order: str = "name") -> Figure:
    """Confusion matrix (rows true, columns predicted) with a log colour scale; zero cells stay white.

    `order`: "name" sorts classes alphabetically by name so a class is easy to
    find; "accuracy" puts the worst classes first; "index" keeps checkpoint order.
    Classes absent from the data and never predicted are left out.
    """
    cm = np.asarray(metrics["confusion"], dtype=np.int64)
    labels = _labels(metrics)
    keep = [i for i in range(len(cm)) if cm[i].sum() or cm[:, i].sum()]
    if order == "name":
        keep.sort(key=lambda i: (labels[i].lower(), i))
    elif order == "accuracy":
        recall = [(cm[i, i] / cm[i].sum()) if cm[i].sum() else 2.0 for i in range(len(cm))]
        keep.sort(key=lambda i: (recall[i], labels[i].lower()))
    sub = cm[np.ix_(keep, keep)]
    c = len(keep)
    font = 9 if c <= 20 else (7 if c <= 60 else 6)
    # Fixed margins in inches, sized to the longest label, so 100+ labels neither overlap nor get clipped.
    cell = max(0.16, font * 0.024)
    side = max(2.5, cell * c)
    margin = 0.35 + 0.62 * font / 72 * max((len(labels[i]) for i in keep), default=4)
    top, right = 0.6, 1.3
    width, height = margin + side + right, margin + side + top
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((margin / width, margin / height, side / width, side / height))
    cax = fig.add_axes(
        ((margin + side + 0.15) / width, margin / height + 0.25 * side / height, 0.2 / width, 0.5 * side / height)
    )
    masked = np.ma.masked_equal(sub, 0)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    vmax = max(int(sub.max()) if sub.size else 1, 2)
    im = ax.imshow(masked, cmap=cmap, norm=LogNorm(vmin=1, vmax=vmax), interpolation="nearest", aspect="equal")
    ax.set_xticks(range(c), [labels[i] for i in keep], rotation=90, fontsize=font)
    ax.set_yticks(range(c), [labels[i] for i in keep], fontsize=font)
    ax.set_xticks(np.arange(-0.5, c, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, c, 1), minor=True)
    ax.grid(which="minor", color="#eeeeee", linewidth=0.4)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= 20:
        for (r, q), v in np.ndenumerate(sub):
            if v:
                ax.text(q, r, str(v), ha="center", va="center", fontsize=8, color="white" if v < vmax**0.5 else "black")
    top1 = metrics.get("top1")
    ax.set_title(
        f"Confusion matrix: {metrics['n']} images, {c} classes"
        + (f", top-1 {top1:.1%}" if top1 is not None else "")
        + f" (sorted by {order})",
        fontsize=11,
    )
    cb = fig.colorbar(im, cax=cax)
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if t <= vmax]
    cb.set_ticks(ticks, labels=[str(t) for t in ticks])
    cb.ax.minorticks_off()
    cb.set_label("images (log scale; white = none)")
    return fig


def per_class_figure(metrics: dict[str, Any]) -> Figure:
    """Recall (per-class accuracy) as bars, worst class first, with precision as dots and support as text."""
    rows = [p for p in metrics["per_class"] if p["support"] > 0]
    rows.sort(key=lambda p: (p["recall"], p["f1"] if p["f1"] is not None else 0.0, label_of(p["category"], p["name"])))
    n = len(rows)
    fig = Figure(figsize=(8.5, max(3.0, 0.17 * n + 1.4)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(n)
    recall = [p["recall"] for p in rows]
    colours = [RED if r < 0.5 else (ORANGE if r < 0.8 else BLUE) for r in recall]
    ax.barh(y, recall, color=colours, height=0.75)
    has_prec = [i for i, p in enumerate(rows) if p["precision"] is not None]  # never predicted: no precision
    ax.scatter([rows[i]["precision"] for i in has_prec], has_prec, marker="D", s=12, color="black", zorder=3)
    font = 8 if n <= 40 else 6.5
    ax.set_yticks(y, [label_of(p["category"], p["name"]) for p in rows], fontsize=font)
    for i, p in enumerate(rows):
        ax.text(1.035, i, f"{p['recall']:.0%} of {p['support']}", va="center", fontsize=font, color=GREY)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(0, 1.17)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.xaxis.set_ticks_position("both")
    ax.tick_params(axis="x", labeltop=True)
    ax.grid(axis="x", alpha=0.3)
    mean = metrics.get("mean_class_accuracy")
    if mean is not None:
        ax.axvline(mean, color=GREY, linestyle="--", linewidth=1)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(color=BLUE, label="recall ≥ 80%"),
        Patch(color=ORANGE, label="50–80%"),
        Patch(color=RED, label="< 50%"),
        Line2D([], [], marker="D", color="black", linestyle="", markersize=4, label="precision"),
    ]
    if mean is not None:
        handles.append(Line2D([], [], color=GREY, linestyle="--", label=f"mean per-class accuracy {mean:.1%}"))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=8, frameon=False)
    absent = len(metrics["per_class"]) - n
    ax.set_title(
        f"Per-class accuracy, worst first ({n} classes" + (f"; {absent} absent from the data" if absent else "") + ")",
        fontsize=11,
    )
    return fig


def reliability_figure(metrics: dict[str, Any]) -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin, with how many images each bin holds."""
    cal = metrics["calibration"]
    bins = cal["bins"]
    fig = Figure(figsize=(6.0, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
    width = bins[0]["hi"] - bins[0]["lo"] if bins else 0.1
    acc = [b["accuracy"] if b["accuracy"] is not None else 0.0 for b in bins]
    conf = [b["confidence"] if b["confidence"] is not None else c for b, c in zip(bins, centres, strict=True)]
    top.bar(centres, acc, width=width * 0.95, color=BLUE, edgecolor="white", label="accuracy in bin")
    filled = [i for i, b in enumerate(bins) if b["count"]]
    top.scatter(
        [centres[i] for i in filled],
        [conf[i] for i in filled],
        marker="_",
        s=(width * 260) ** 2,
        linewidths=2.5,
        color=RED,
        zorder=3,
        label="mean confidence in bin",
    )
    top.plot([0, 1], [0, 1], color=GREY, linestyle="--", linewidth=1, label="perfectly calibrated")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    ece = cal.get("ece")
    top.set_title(
        "Reliability"
        + (f": ECE {ece:.3f}" if ece is not None else "")
        + (f", mean confidence {cal['mean_confidence']:.1%}" if cal.get("mean_confidence") is not None else "")
        + (f", top-1 {metrics['top1']:.1%}" if metrics.get("top1") is not None else ""),
        fontsize=10,
    )
    top.legend(loc="upper left", fontsize=8)
    top.text(
        0.98, 0.03, "bars above the red marks: underconfident\nbars below: overconfident",
        ha="right", va="bottom", fontsize=8, transform=top.transAxes,
        bbox={"facecolor": "white", "edgecolor": "#cccccc", "alpha": 0.9},
    )  # fmt: skip
    counts = [b["count"] for b in bins]
    bottom.bar(centres, counts, width=width * 0.95, color=GREY)
    if any(counts):
        bottom.set_yscale("symlog", linthresh=1)
    bottom.set_ylabel("images")
    bottom.set_xlabel("top-1 confidence")
    bottom.set_xlim(0, 1)
    return fig


def _model_view(path: str | os.PathLike, prep: Preprocessing | None) -> np.ndarray | None:
    """The photo as the model saw it (crop, normalisation undone), or None if unreadable."""
    from ..data.images import load_image

    try:
        if prep is None:
            return np.asarray(load_image(path), dtype=np.float32) / 255.0
        return prep.denormalize(prep.load(path))
    except ImageError:
        return None


def mistakes_figure(
    metrics: dict[str, Any], preprocessing: Preprocessing | None = None, limit: int = 24, ncols: int = 6
) -> Figure:
    """A grid of misclassified photos, most confident mistakes first, with true and predicted names."""
    names = dict(zip(metrics["categories"], _labels(metrics), strict=True))
    wrong = [r for r in metrics["predictions"] if r["predicted"] != r["true"]]
    wrong.sort(key=lambda r: -r["probability"])
    worst = wrong[:limit]
    if not worst:
        fig = Figure(figsize=(5, 1.5), layout="constrained")
        fig.text(0.5, 0.5, f"No misclassified images among {metrics['n']}.", ha="center", va="center")
        return fig
    ncols = min(ncols, len(worst))
    nrows = -(-len(worst) // ncols)
    fig = Figure(figsize=(2.3 * ncols, 2.75 * nrows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, rec in zip(axes, worst, strict=False):
        img = _model_view(rec["path"], preprocessing)
        if img is None:
            ax.text(0.5, 0.5, "(unreadable now)", ha="center", va="center", fontsize=8, transform=ax.transAxes)
        else:
            ax.imshow(img)
        ax.set_title(
            wrap(f"predicted: {names[rec['predicted']]} {rec['probability']:.0%}", 28), color=RED, fontsize=7.5
        )
        ax.text(
            0.5, -0.03, wrap(f"true: {names[rec['true']]}", 28), color=GREEN, fontsize=7.5,
            ha="center", va="top", transform=ax.transAxes,
        )  # fmt: skip
    fig.suptitle(
        f"Most confident mistakes: {len(worst)} of {len(wrong)} misclassified images (of {metrics['n']})", fontsize=11
    )
    return fig


# ---------------------------------------------------------------- training


def curves_figure(history: Sequence[dict[str, Any]], best_epoch: int | None = None) -> Figure:
    """Loss and accuracy per epoch for train and valid, with the kept (best) epoch marked."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    loss_ax.plot(epochs, [h["train_loss"] for h in history], color=BLUE, label="train")
    loss_ax.plot(epochs, [h["valid_loss"] for h in history], color=ORANGE, label="valid")
    acc_ax.plot(epochs, [h["train_acc"] for h in history], color=BLUE, label="train")
    acc_ax.plot(epochs, [h["valid_acc"] for h in history], color=ORANGE, label="valid")
    for ax, title in ((loss_ax, "loss (train with label smoothing)"), (acc_ax, "accuracy")):
        if best_epoch:
            ax.axvline(best_epoch, color=GREY, linestyle="--", linewidth=1, label=f"kept: epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    return fig


# ---------------------------------------------------------------- files


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Save atomically in the format the file name asks for (png, svg, pdf, jpg...); UsageError for an unknown one."""
    from ..errors import UsageError

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise UsageError(f"cannot write a picture as {path.name!r}; use one of: .{', .'.join(sorted(supported))}")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue(), fsync=False)


def unknown_figure(unknown: dict[str, Any]) -> Figure:
    """Unknown-score histogram of known photos and photos of other things, with the threshold; and the ROC."""
    hist, roc = unknown["histogram"], unknown["roc"]
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    edges = np.asarray(hist["edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    left.bar(centres, hist["known"], width=width, color=BLUE, alpha=0.7, label=f"known ({unknown['n_known']})")
    others = f"other things ({unknown['n_unknown']})"
    left.bar(centres, hist["unknown"], width=width, color=RED, alpha=0.6, label=others)
    left.axvline(unknown["threshold"], color=GREY, linestyle="--", linewidth=1.2, label="threshold: above is unknown")
    left.set_xlabel("unknown score (higher: less like the training photos)")
    left.set_ylabel("photos")
    if max(hist["known"] + hist["unknown"], default=0) > 0:
        left.set_yscale("symlog", linthresh=1)
    left.legend(fontsize=8)
    left.set_title("Scores", fontsize=10)
    _roc_panel(right, roc["known_rejected"], roc["unknown_rejected"], "known photos called unknown",
               "other things called unknown", f"ROC: AUROC {unknown['auroc']:.4f}")  # fmt: skip
    return fig


def _roc_panel(ax: Any, fpr: Sequence[float], tpr: Sequence[float], xlabel: str, ylabel: str, title: str) -> None:
    ax.plot(fpr, tpr, color=RED, drawstyle="default")
    ax.plot([0, 1], [0, 1], color=GREY, linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title, fontsize=10)


def roc_figure(metrics: dict[str, Any]) -> Figure | None:
    """ROC curve of a two-category model (the second category positive), its area, and where the model's
    own decision sits on it; None when the data hold photos of one category only."""
    b = metrics.get("binary")
    if not b or b["roc"] is None:
        return None
    labels = _labels(metrics)
    fig = Figure(figsize=(5.2, 5.0), layout="constrained")
    ax = fig.add_subplot()
    title = f"ROC, {labels[1]} as positive: AUC {b['auc']:.4f} ({b['n_positive']} + {b['n_negative']} photos)"
    xlabel, ylabel = f"{labels[0]} called {labels[1]} (false-positive rate)", f"{labels[1]} found (true-positive rate)"
    _roc_panel(ax, b["roc"]["fpr"], b["roc"]["tpr"], xlabel, ylabel, title)
    at = b["at_half"]
    ax.scatter([at["fpr"]], [at["tpr"]], color=BLUE, zorder=3, label="the model's decision (the likelier category)")
    ax.legend(loc="lower right", fontsize=8)
    return fig
