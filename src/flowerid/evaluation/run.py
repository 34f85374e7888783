"""Evaluation: run a labelled folder through a trained Classifier and report what it learned.

Photos go through `Classifier.predict_proba_many`, the same path as `predict`,
so the numbers here match what `flowerid predict` says about each photo.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import atomic_write_bytes, atomic_write_json
from .._text import Log, pct, shown, utf8_safe
from .._version import __version__
from ..data.folders import ImageFolder, scan_folder, write_skipped
from ..errors import DataError, UsageError
from .metrics import DEFAULT_BINS, Outcomes, compute_metrics, rejection_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..model.predictor import Classifier


#: The keys of metrics.json that make its summary (`--json` prints these).
SUMMARY_KEYS = (
    "checkpoint",
    "folder",
    "backbone",
    "n",
    "skipped",
    "num_classes",
    "classes_present",
    "top1",
    "top1_ci",
    "k",
    "top5",
    "top5_ci",
    "mean_class_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "nll",
    "seconds",
)

FEW_CATEGORIES = 10  # up to this many, the summary lists each category's precision and recall
WHY_LIMIT = 12  # mistakes shown with their maps in report.html
FIGURES = ("confusion", "per_class", "mistakes", "reliability", "curves", "unknown", "roc")


@dataclass
class Evaluation:
    """The result of `evaluate`: metrics.json's content, the skipped files and the files written.

    The `*_figure` methods give the report's pictures as matplotlib figures,
    for notebooks; matplotlib is imported only when one is asked for.
    """

    metrics: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    why: list[Any] = field(default_factory=list)  # why.MistakePicture: the mistakes' maps, for report.html
    why_note: str = ""

    def summary(self) -> dict[str, Any]:
        """The headline numbers: no per-image or matrix data, and per-category rows only for a few categories."""
        m = self.metrics
        out = {k: m[k] for k in SUMMARY_KEYS if k in m}
        out["ece"] = m["calibration"]["ece"]
        out["mean_confidence"] = m["calibration"]["mean_confidence"]
        out["most_confused"] = [{k: v for k, v in c.items() if k != "label"} for c in m["most_confused"][:10]]
        if "known_rejected" in m:
            out["known_rejected"] = m["known_rejected"]
        if "unknown" in m:
            out["unknown"] = {k: v for k, v in m["unknown"].items() if k not in ("roc", "histogram")}
        if "binary" in m:
            out["binary"] = {k: v for k, v in m["binary"].items() if k != "roc"}
        if m["num_classes"] <= FEW_CATEGORIES:
            out["per_class"] = m["per_class"]
        if self.out_dir is not None:
            out["out_dir"] = str(self.out_dir)
        return out

    @property
    def preprocessing(self):
        from ..data.preprocess import Preprocessing

        return Preprocessing.from_dict(self.metrics["preprocessing"])

    def confusion_figure(self, order: str = "name") -> Figure:
        from .figures import confusion_figure

        return confusion_figure(self.metrics, order)

    def per_class_figure(self) -> Figure:
        from .figures import per_class_figure

        return per_class_figure(self.metrics)

    def mistakes_figure(self, limit: int = 24) -> Figure:
        from .figures import mistakes_figure

        return mistakes_figure(self.metrics, self.preprocessing, limit)

    def reliability_figure(self) -> Figure:
        from .figures import reliability_figure

        return reliability_figure(self.metrics)

    def unknown_figure(self) -> Figure | None:
        """Score histogram and ROC of known photos against --unknown ones, or None without them."""
        from .figures import unknown_figure

        return unknown_figure(self.metrics["unknown"]) if "unknown" in self.metrics else None

    def roc_figure(self) -> Figure | None:
        """ROC curve of a two-category model (second category positive), or None for more categories."""
        from .figures import roc_figure

        return roc_figure(self.metrics)

    def curves_figure(self) -> Figure | None:
        """Training curves from the checkpoint's history, or None when it has none."""
        from .figures import curves_figure

        return curves_figure(self.history, self.best_epoch) if self.history else None


def _scan(folder: Path, categories: list[str]) -> ImageFolder:
    try:
        return scan_folder(folder, categories)
    except DataError as exc:
        from ..data.layout import find_layout

        try:
            layout = find_layout(folder)
        except DataError:
            raise exc from None
        if layout.flat:
            raise
        split = layout.valid or layout.test or layout.train
        raise DataError(
            f"{exc}. {folder} looks like a data folder with splits; evaluate one of them, e.g. {split}"
        ) from None


def _records(split: ImageFolder, keep: np.ndarray, out: Outcomes, categories: list[str]) -> list[dict[str, Any]]:
    recs = []
    for row, i in enumerate(keep.tolist()):
        recs.append(
            {
                "path": str(split.paths[i]),
                "true": categories[int(out.y_true[row])],
                "predicted": categories[int(out.y_pred[row])],
                "probability": float(out.confidence[row]),
                "true_probability": float(out.true_prob[row]),
                "top_k": [
                    [categories[int(c)], float(p)] for c, p in zip(out.topk[row], out.topk_prob[row], strict=True)
                ],
            }
        )
    return recs


def evaluate(
    checkpoint: str | os.PathLike | Classifier,
    folder: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    engine: str = "auto",
    batch_size: int = 32,
    category_names: str | os.PathLike | None = None,
    top_k: int = 5,
    n_bins: int = DEFAULT_BINS,
    figures: bool = True,
    mistakes: int = 24,
    unknown: str | os.PathLike | None = None,
    log: Log = print,
) -> Evaluation:
    """Evaluate a checkpoint (or a loaded Classifier) on FOLDER in ImageFolder layout.

    Categories match the checkpoint's by name; a category it does not know is a
    DataError naming it. Unreadable photos are skipped and listed. With
    `out_dir`, writes metrics.json, skipped.tsv (when any), the figures and
    report.html there. `unknown`: a folder of photos of none of the categories
    (any layout); how well the model tells them from FOLDER's goes in metrics["unknown"].
    """
    from tqdm.auto import tqdm

    from ..model.predictor import Classifier

    if top_k < 1 or n_bins < 1 or batch_size < 1:
        raise UsageError("top_k, n_bins and batch_size must each be at least 1")
    t0 = time.perf_counter()
    if isinstance(checkpoint, Classifier):
        clf, ckpt_path = checkpoint, None
    else:
        clf = Classifier.load(checkpoint, device=device, category_names=category_names, engine=engine)
        ckpt_path = str(Path(checkpoint).resolve())
    folder = Path(folder)
    others = _unknown_photos(clf, unknown) if unknown is not None else []  # before the long part: fail early
    split = _scan(folder, clf.categories)
    with tqdm(total=len(split.paths), desc="evaluate", unit="img", disable=None, leave=False) as bar:
        batch = clf.predict_proba_many(split.paths, batch_size=batch_size, progress=bar.update)
    skipped = {str(split.paths[i]): exc.reason for i, exc in sorted(batch.errors.items())}
    keep = np.flatnonzero(batch.ok)
    if len(keep) == 0:
        raise DataError(f"none of the {len(split.paths)} images in {folder} could be read")
    out = Outcomes.from_probs(np.asarray(split.targets)[keep], batch.probs[keep], k=top_k)
    computed = compute_metrics(out, clf.categories, clf.names, n_bins=n_bins)
    ck = clf.checkpoint
    history = list(ck.get("metrics", {}).get("history") or [])
    metrics: dict[str, Any] = {
        "checkpoint": ckpt_path,
        "folder": str(folder.resolve()),
        "backbone": clf.spec.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "flowerid_version": __version__,
        "skipped": len(skipped),
        **computed,
        "seconds": time.perf_counter() - t0,
        "categories": list(clf.categories),
        "names": list(clf.names),
        "preprocessing": clf.preprocessing.to_dict(),
        "predictions": _records(split, keep, out, clf.categories),
    }
    if batch.unknown_scores is not None and clf.unknown is not None:
        scores = batch.unknown_scores[keep]
        metrics["known_rejected"] = float((~clf.unknown.known(scores)).mean())
        for rec, score in zip(metrics["predictions"], scores.tolist(), strict=True):
            rec["unknown_score"] = score
        if unknown is not None:
            with tqdm(total=len(others), desc="evaluate unknown", unit="img", disable=None, leave=False) as bar:
                other = clf.predict_proba_many(others, batch_size=batch_size, progress=bar.update)
            ok = other.ok
            if not ok.any():
                raise DataError(f"none of the {len(others)} images in {unknown} could be read")
            skipped.update({str(others[i]): exc.reason for i, exc in sorted(other.errors.items())})
            assert other.unknown_scores is not None  # the same model as above
            metrics["unknown"] = {
                "folder": str(Path(unknown).resolve()),
                "method": clf.unknown.method,
                **rejection_metrics(scores, other.unknown_scores[ok], clf.unknown.threshold),
            }
            metrics["skipped"] = len(skipped)
    result = Evaluation(metrics, skipped, history=history, best_epoch=ck.get("metrics", {}).get("best_epoch"))
    if out_dir is not None and figures and mistakes > 0:
        from .why import mistake_pictures

        result.why, result.why_note = mistake_pictures(clf, metrics, min(mistakes, WHY_LIMIT))
    if out_dir is not None:
        write_outputs(result, Path(out_dir), figures=figures, mistakes=mistakes, checkpoint_info=_describe(ck))
    log(format_summary(result))
    return result


def _unknown_photos(clf: Classifier, folder: str | os.PathLike) -> list[Path]:
    """The photos of --unknown DIR; a model that cannot tell, or a folder with none, is a clear error."""
    from ..data.folders import list_images

    if clf.unknown is None:
        raise UsageError(
            "this checkpoint was trained before flowerid could tell photos of other things; "
            "retrain it with this version to evaluate --unknown"
        )
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--unknown {folder} is not a folder")
    paths = list_images(folder)
    if not paths:
        raise DataError(f"--unknown {folder} holds no photos")
    return paths


def _describe(ck: dict[str, Any]) -> dict[str, Any]:
    tr = ck.get("training", {})
    m = ck.get("metrics", {})
    return {
        "backbone": ck["backbone"]["name"],
        "categories": len(ck["categories"]),
        "created": ck.get("created"),
        "trained on": tr.get("data_dir"),
        "epochs": tr.get("epochs"),
        "best epoch": m.get("best_epoch"),
        "valid accuracy at training": m.get("valid_acc"),
        "head": "linear" if not tr.get("hidden_units") else f"{tr.get('hidden_units')} hidden units",
    }


def write_outputs(
    result: Evaluation,
    out_dir: Path,
    *,
    figures: bool = True,
    mistakes: int = 24,
    checkpoint_info: dict[str, Any] | None = None,
) -> list[Path]:
    """Write metrics.json, skipped.tsv, the PNG figures and report.html into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result.out_dir = out_dir
    files = [atomic_write_json(out_dir / "metrics.json", result.metrics)]
    skipped_path = write_skipped(out_dir, result.skipped)
    if skipped_path is not None:
        files.append(skipped_path)
    if figures:
        from .figures import figure_png
        from .report import render_report

        pngs: dict[str, bytes] = {}
        makers = {
            "confusion": result.confusion_figure,
            "per_class": result.per_class_figure,
            "mistakes": lambda: result.mistakes_figure(mistakes),
            "reliability": result.reliability_figure,
            "curves": result.curves_figure,
            "unknown": result.unknown_figure,
            "roc": result.roc_figure,
        }
        for name, make in makers.items():
            fig = make()
            if fig is None:
                continue
            pngs[name] = figure_png(fig)
            files.append(atomic_write_bytes(out_dir / f"{name}.png", pngs[name], fsync=False))
        if "mistakes" in pngs:  # a grid of photos is 5-10x smaller as JPEG: keeps the page light
            from PIL import Image

            buf = io.BytesIO()
            with Image.open(io.BytesIO(pngs["mistakes"])) as im:
                im.convert("RGB").save(buf, format="JPEG", quality=85)
            pngs = {**pngs, "mistakes": buf.getvalue()}
        html = render_report(result.metrics, pngs, checkpoint_info or {}, result.skipped, (result.why, result.why_note))
        files.append(atomic_write_bytes(out_dir / "report.html", utf8_safe(html).encode("utf-8")))
    result.files = files
    return files


def format_summary(result: Evaluation) -> str:
    """The evaluation as a few lines of text for the terminal."""
    m = result.metrics
    lo1, hi1 = m["top1_ci"]
    lo5, hi5 = m["top5_ci"]
    lines = [
        f"evaluated {m['n']} images in {m['classes_present']} categories with {m['backbone']}"
        + (f" ({m['skipped']} unreadable skipped)" if m["skipped"] else "")
        + f" in {m['seconds']:.0f}s",
        f"  top-1 accuracy          {pct(m['top1']):>7}  (95% CI {lo1:.1%} to {hi1:.1%})",
        f"  top-{m['k']} accuracy          {pct(m['top5']):>7}  (95% CI {lo5:.1%} to {hi5:.1%})",
        f"  mean per-class accuracy {pct(m['mean_class_accuracy']):>7}",
        f"  macro F1                {pct(m['macro_f1']):>7}",
        f"  calibration error (ECE) {m['calibration']['ece']:7.3f}"
        f"   mean confidence {pct(m['calibration']['mean_confidence'])}",
    ]
    if m["num_classes"] <= FEW_CATEGORIES:
        lines += _per_class_lines(m)
    if "known_rejected" in m:
        lines.append(f"  called unknown          {pct(m['known_rejected']):>7}   of these photos (stored threshold)")
    if "unknown" in m:
        u = m["unknown"]
        lines += [
            f"photos of other things ({u['n_unknown']} in {u['folder']}):",
            f"  AUROC                   {u['auroc']:7.4f}",
            f"  let through at 95% kept {pct(u['unknown_accepted_at_95']):>7}   (false-positive rate at 95% of known)",
            f"  let through at stored   {pct(u['unknown_accepted_at_threshold']):>7}   "
            f"(threshold {u['threshold']:.3f}; known photos called unknown {pct(u['known_rejected_at_threshold'])})",
        ]
    confused = m["most_confused"][:10]
    if confused:
        lines.append("most confused (true → predicted):")
        width = max(len(str(c["count"])) for c in confused)
        for c in confused:
            lines.append(f"  {c['count']:>{width}} × {shown(c['label'])}  ({c['rate']:.0%} of the true class)")
    else:
        lines.append("no confusions: every image's top-1 is right")
    if result.skipped:
        lines.append(f"skipped {len(result.skipped)} unreadable images" + (
            f"; list in {result.out_dir / 'skipped.tsv'}" if result.out_dir else ""
        ))  # fmt: skip
    if result.out_dir is not None:
        lines.append(f"wrote {', '.join(p.name for p in result.files)} to {result.out_dir}")
    return "\n".join(lines)


def _per_class_lines(m: dict[str, Any]) -> list[str]:
    """Each category's precision and recall, the confusion matrix for a few, and for two the ROC area:
    what the user of a small model looks at."""
    labels = [shown(p["name"] or p["category"]) for p in m["per_class"]]
    width = max(8, *(len(label) for label in labels))
    lines = [f"  {'category':<{width}}  {'precision':>9}  {'recall':>7}  {'photos':>6}"]
    for label, p in zip(labels, m["per_class"], strict=True):
        lines.append(f"  {label:<{width}}  {pct(p['precision'], 1):>9}  {pct(p['recall'], 1):>7}  {p['support']:>6}")
    if m["num_classes"] <= 5:
        cell = max(6, *(len(label) for label in labels))
        lines.append("  confusion matrix (rows true, columns predicted):")
        lines.append(f"  {'':<{width}}  " + "  ".join(f"{label:>{cell}}" for label in labels))
        for label, row in zip(labels, m["confusion"], strict=True):
            lines.append(f"  {label:<{width}}  " + "  ".join(f"{v:>{cell}}" for v in row))
    b = m.get("binary")
    if b and b["auc"] is not None:
        name = shown(b["positive_name"] or b["positive"])
        lines.append(f"  ROC AUC                 {b['auc']:7.4f}   ({name} as the positive category)")
    return lines
