"""Figures of photos: one photo beside its top-K (`predict --plot`, notebooks) and a batch as the model
sees it (`flowerid show`). Like figures.py, importing it imports matplotlib."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from ..data.preprocess import Preprocessing
from ..errors import ImageError
from .figures import BLUE, GREEN, drawable, label_of, save_figure, wrap


def prediction_figure(
    image: np.ndarray, predictions: Sequence[Any], title: str | None = None, true_label: str | None = None
) -> Figure:
    """The sanity-check figure: the photo as the model saw it beside a bar chart of its top-K names.

    `image` is HWC in 0..1 (see `Preprocessing.denormalize`); `predictions` are
    Prediction objects or their dicts, most probable first.
    """
    preds = [p if isinstance(p, dict) else p.to_dict() for p in predictions]
    k = len(preds)
    fig = Figure(figsize=(9, max(3.4, 0.45 * k + 1.6)), layout="constrained")
    img_ax, bar_ax = fig.subplots(1, 2, width_ratios=[1, 1.25])
    img_ax.imshow(image)
    img_ax.set_axis_off()
    if title:
        img_ax.set_title(wrap(drawable(title), 40), fontsize=9)
    labels = [wrap(label_of(p["category"], p["name"]), 26) for p in preds]
    probs = [p["probability"] for p in preds]
    colours = [GREEN if true_label is not None and p["category"] == true_label else BLUE for p in preds]
    y = np.arange(k)
    bar_ax.barh(y, probs, color=colours)
    bar_ax.set_yticks(y, labels, fontsize=9)
    bar_ax.set_ylim(k - 0.5, -0.5)
    bar_ax.set_xlim(0, 1.18)
    bar_ax.set_xticks(np.linspace(0, 1, 6))
    bar_ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    for i, p in enumerate(probs):
        bar_ax.text(p + 0.01, i, f"{p:.1%}", va="center", fontsize=8)
    bar_ax.set_title(f"top {k}: {labels[0].replace(chr(10), ' ')}" if k else "no predictions", fontsize=10)
    bar_ax.spines[["top", "right"]].set_visible(False)
    return fig


def batch_figure(
    images: Sequence[np.ndarray], labels: Sequence[str], ncols: int = 4, title: str | None = None
) -> Figure:
    """A grid of photos (HWC, 0..1) with their category names."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(2.4 * ncols, 2.6 * nrows + (0.4 if title else 0)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, img, label in zip(axes, images, labels, strict=False):
        ax.imshow(img)
        ax.set_title(wrap(drawable(label), 26), fontsize=8.5)
    if title:
        fig.suptitle(drawable(title), fontsize=11)
    return fig


def plot_paths(images: Sequence[Any], target: str | os.PathLike) -> list[Path]:
    """Where each image's figure goes: TARGET itself for one image; for several, TARGET-<image stem>.png,
    or <image stem>.png inside TARGET when it is a folder (ends with a slash or exists)."""
    raw = str(target)
    target = Path(target)
    as_dir = target.is_dir() or raw.endswith(("/", os.sep))
    if len(images) == 1 and not as_dir:
        return [target]
    stems = [Path(str(i)).stem if isinstance(i, str | os.PathLike) else f"image{n + 1}" for n, i in enumerate(images)]
    if as_dir:
        paths = [target / f"{s}.png" for s in stems]
    else:
        suffix = target.suffix or ".png"
        paths = [target.with_name(f"{target.stem}-{s}{suffix}") for s in stems]
    seen: dict[Path, int] = {}
    out = []
    for p in paths:
        seen[p] = seen.get(p, 0) + 1
        out.append(p if seen[p] == 1 else p.with_name(f"{p.stem}-{seen[p]}{p.suffix}"))
    return out


def write_prediction_plots(
    classifier: Any, images: Sequence[Any], results: Sequence[Any], target: str | os.PathLike
) -> list[Path]:
    """One sanity-check figure per successfully predicted image; returns the files written."""
    written = []
    for image, res, path in zip(images, results, plot_paths(images, target), strict=True):
        if isinstance(res, ImageError):
            continue
        view = classifier.preprocessing.denormalize(classifier.preprocess(image))
        title = Path(str(image)).name if isinstance(image, str | os.PathLike) else None
        written.append(save_figure(prediction_figure(view, res, title), path))
    return written


def classifier_figure(classifier: Any, image: Any, top_k: int = 5) -> Figure:
    """Predict one photo and return the sanity-check figure (for notebooks)."""
    preds = classifier.predict(image, top_k=top_k)
    view = classifier.preprocessing.denormalize(classifier.preprocess(image))
    title = Path(str(image)).name if isinstance(image, str | os.PathLike) else None
    return prediction_figure(view, preds, title)


def sample_batch(
    folder: str | os.PathLike,
    n: int = 16,
    seed: int | None = 0,
    preprocessing: Preprocessing | None = None,
    names: dict[str, str] | None = None,
) -> tuple[list[np.ndarray], list[str], dict[str, str]]:
    """A random batch from an ImageFolder split as the model sees it (normalisation undone).

    Returns the images, their labels (names where known, else the category) and
    the unreadable files met on the way ({path: reason}), which are replaced.
    """
    from ..data.folders import scan_folder

    split = scan_folder(folder)
    rng = np.random.default_rng(seed)
    images: list[np.ndarray] = []
    labels: list[str] = []
    skipped: dict[str, str] = {}
    for i in rng.permutation(len(split.samples)).tolist():
        if len(images) >= n:
            break
        path, target = split.samples[i]
        try:
            if preprocessing is None:
                from ..data.images import load_image

                img = np.asarray(load_image(path), dtype=np.float32) / 255.0
            else:
                img = preprocessing.denormalize(preprocessing.load(path))
        except ImageError as exc:
            skipped[str(path)] = exc.reason
            continue
        cat = split.categories[target]
        images.append(img)
        labels.append((names or {}).get(cat) or cat)
    return images, labels, skipped
