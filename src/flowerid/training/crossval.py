"""k-fold cross-validation over train and valid pooled: how recipes are chosen without using up valid.

Every preset is chosen by its mean top-1 over stratified folds of all labelled
photos, each fold trained exactly as `train()` trains (the same features or cached
activations, the same fit, a fixed number of epochs); valid stays what a finished
run reports. The calibration error is measured out of fold: each fold's temperature
is fitted on the other folds' held-out predictions, as a run fits it on valid.
`benchmarks/bench_cv.py` prints the table the presets were chosen by.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch

from .._text import Log
from ..backbones.engines import resolve_device
from ..data.folders import ImageFolder, load_dataset
from ..data.folds import FOLDS, SEED, stratified_folds
from ..errors import DataError
from ..evaluation.metrics import calibration
from .calibrate import fit_temperature, softmax
from .config import TrainConfig, adapt_to_data


@dataclass
class CVResult:
    """Out-of-fold logits of one recipe (each row from the model that did not train on it) and what they say."""

    logits: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,)
    folds: np.ndarray  # (N,)

    def _per_fold(self, k: int) -> np.ndarray:
        top = np.argsort(-self.logits, axis=1, kind="stable")[:, :k]
        hit = (top == self.labels[:, None]).any(1)
        return np.array([hit[self.folds == f].mean() for f in np.unique(self.folds)])

    @property
    def top1(self) -> np.ndarray:
        return self._per_fold(1)

    @property
    def top5(self) -> np.ndarray:
        return self._per_fold(5)

    def calibrated(self) -> tuple[np.ndarray, list[float]]:
        """Probabilities with each fold's temperature fitted on the other folds' held-out predictions."""
        probs = np.zeros(self.logits.shape, dtype=np.float64)
        temps = []
        for f in np.unique(self.folds):
            rest = self.folds != f
            t = fit_temperature(self.logits[rest], self.labels[rest]).value
            probs[~rest] = softmax(self.logits[~rest], t)
            temps.append(t)
        return probs, temps

    def ece(self) -> float:
        """Out-of-fold ECE; NaN with a single fold, whose temperature has no other folds to be fitted on."""
        if len(np.unique(self.folds)) < 2:
            return float("nan")
        probs, _ = self.calibrated()
        return float(calibration(probs.max(1), probs.argmax(1) == self.labels)["ece"] or 0.0)

    def summary(self) -> str:
        t1, t5 = self.top1, self.top5
        _, temps = self.calibrated()
        sd = t1.std(ddof=1) if len(t1) > 1 else float("nan")
        return (
            f"top-1 {t1.mean():.2%} +- {sd:.2%}  top-5 {t5.mean():.2%}  "
            f"out-of-fold ECE {self.ece():.3f}  T {np.mean(temps):.2f}"
        )

    def save(self, path: str | os.PathLike) -> None:
        np.savez_compressed(path, logits=self.logits, labels=self.labels, folds=self.folds)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CVResult:
        d = np.load(path)
        return cls(d["logits"], d["labels"], d["folds"])


def combine(*results: CVResult) -> CVResult:
    """An ensemble of recipes measured on the same folds: their log-probabilities averaged."""
    first = results[0]
    for r in results[1:]:
        if not (np.array_equal(r.folds, first.folds) and np.array_equal(r.labels, first.labels)):
            raise ValueError("an ensemble combines results on the same folds of the same photos")
    logp = [np.log(softmax(r.logits)) for r in results]
    return CVResult(np.mean(logp, axis=0), first.labels, first.folds)


def out_of_fold(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray, only: list[int] | None) -> CVResult:
    """The result of the folds `only` (None: all of them)."""
    if only is None:
        return CVResult(logits, labels, folds)
    keep = np.isin(folds, only)
    return CVResult(logits[keep], labels[keep], folds[keep])


def deal(y: torch.Tensor, failed: dict, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The pooled photos' labels and folds; DataError when any photo could not be read."""
    if failed:
        raise DataError(f"{len(failed)} unreadable photos; run `flowerid check` and remove them first")
    labels = y.numpy()
    return labels, stratified_folds(labels, k, seed)


def pooled(data_dir: str | os.PathLike) -> ImageFolder:
    """train and valid as one split: the photos cross-validation deals into folds."""
    data = load_dataset(data_dir)
    return dataclasses.replace(data.train, samples=data.train.samples + data.valid.samples)


def cross_validate(
    data_dir: str | os.PathLike,
    cfg: TrainConfig,
    k: int = FOLDS,
    seed: int = SEED,
    only: list[int] | None = None,
    log: Log = print,
) -> CVResult:
    """Out-of-fold logits of the recipe `cfg` over train+valid pooled (folds `only`, default all).

    The mode comes from the same table `train()` uses (modes.MODES); features and activations from
    the same cache.
    """
    from .modes import MODES, mode_for

    mode = mode_for(cfg.mode)
    if mode.folds is None or (cfg.views and not mode.folds_take_views):
        measured = [name for name, m in MODES.items() if m.folds is not None]
        raise DataError(f"cross-validation covers the {', '.join(measured)} modes (views: distilled alone)")
    photos = pooled(data_dir)
    # The mode a run on this much data takes (adapt_to_data may keep the backbone frozen), from what a fold
    # trains on; each fold then fits the steps and the loss to its own photos, in that mode.
    fold_counts = [round(n * (k - 1) / k) for n in photos.counts().values()]
    cfg = dataclasses.replace(cfg, tune_stages=adapt_to_data(cfg, fold_counts)[0].tune_stages)
    mode = mode_for(cfg.mode)
    prepared = mode.folds(photos, cfg, resolve_device(cfg.device), log)
    labels, folds = deal(prepared.labels, prepared.failures, k, seed)
    y = prepared.labels
    logits = np.zeros((len(labels), len(photos.categories)), dtype=np.float32)
    for f in only if only is not None else range(k):
        te = torch.from_numpy(np.flatnonzero(folds == f))
        # As train() fits the preset to its train split, each fold's recipe is fitted to its training photos.
        counts = np.bincount(labels[folds != f], minlength=len(photos.categories)).tolist()
        fit = adapt_to_data(cfg, counts)[0].fit
        outs = prepared.held_out(folds, f, fit)  # every fold starts from the pretrained network
        out = torch.stack(outs).mean(0)
        logits[te.numpy()] = out.float().numpy()
        acc = float((out.argmax(1) == y[te]).float().mean())
        alone = ""
        if len(outs) > 1:
            alone = (
                " (members alone: "
                + ", ".join(f"{float((o.argmax(1) == y[te]).float().mean()):.2%}" for o in outs)
                + ")"
            )
        log(f"fold {f + 1}/{k}: held-out top-1 {acc:.2%} on {len(te)} photos{alone}")
    return out_of_fold(logits, labels, folds, only)
