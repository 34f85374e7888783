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
from ..backbones import get_spec
from ..backbones.engines import load_backbone, resolve_device
from ..data.folders import ImageFolder, load_dataset
from ..data.folds import FOLDS, SEED, stratified_folds
from ..errors import DataError
from ..evaluation.metrics import calibration
from ..model.head import HeadConfig, build_head
from .calibrate import fit_temperature, softmax
from .common import features_of
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

    Frozen, tuned and distilled modes (distill_cv.py); features and activations come from the same
    cache `train()` uses.
    """
    from ..backbones.surgery import tuned_parts
    from .frozen import _logits, fit_head
    from .tail import fit_tail
    from .tuned import check_ensemble_recipe, part_activations

    if cfg.mode == "distilled":
        from .distill_cv import cross_validate_distilled

        return cross_validate_distilled(data_dir, cfg, only, log, k=k, seed=seed)
    if cfg.mode == "full" or cfg.views:
        raise DataError("cross-validation covers the frozen, tuned and distilled modes")
    device = resolve_device(cfg.device)
    spec = get_spec(cfg.arch)
    photos = pooled(data_dir)
    # The mode a run on this much data takes (adapt_to_data may keep the backbone frozen), from what a fold
    # trains on; each fold then fits the steps and the loss to its own photos, in that mode.
    fold_counts = [round(n * (k - 1) / k) for n in photos.counts().values()]
    cfg = dataclasses.replace(cfg, tune_stages=adapt_to_data(cfg, fold_counts)[0].tune_stages)
    if cfg.mode == "tuned":
        check_ensemble_recipe(spec, cfg)  # the recipe `train()` would refuse is not cross-validated either
        _, parts = tuned_parts(spec, cfg.weights, cfg.tune_stages)
        acts = part_activations(photos, parts, cfg.extraction, device, "all")
        xs, y, failed = acts.xs, acts.y, acts.failures
    else:
        backbone = load_backbone(spec, device, cfg.weights, cfg.engine)
        rows = features_of(photos, backbone, cfg.extraction, "all")
        x, y, failed = rows.x, rows.y, rows.failures
    labels, folds = deal(y, failed, k, seed)
    num_classes = len(photos.categories)
    head_cfg = HeadConfig(spec.num_features, num_classes, cfg.hidden_units, cfg.dropout)
    logits = np.zeros((len(labels), num_classes), dtype=np.float32)
    quiet: Log = lambda s: None  # noqa: E731
    preset_cfg = cfg
    for f in only if only is not None else range(k):
        tr = torch.from_numpy(np.flatnonzero(folds != f))
        te = torch.from_numpy(np.flatnonzero(folds == f))
        # As train() fits the preset to its train split, each fold's recipe is fitted to its training photos.
        fold = adapt_to_data(preset_cfg, np.bincount(labels[tr.numpy()], minlength=num_classes).tolist())[0]
        cfg = dataclasses.replace(fold, tune_stages=preset_cfg.tune_stages)
        if cfg.mode == "tuned":
            outs = []  # an ensemble's members each tuned, their logits averaged as their averaged heads give them
            for part, x in zip(tuned_parts(spec, cfg.weights, cfg.tune_stages)[1], xs, strict=True):
                part_cfg = HeadConfig(part.num_features, num_classes, cfg.hidden_units, cfg.dropout)
                outs.append(fit_tail(part, part_cfg, (x[tr], y[tr]), (x[te], y[te]), cfg.fit, device, quiet)[3])
            out = torch.stack(outs).mean(0)  # every fold starts from the pretrained networks
        else:
            state, history, _ = fit_head(x[tr], y[tr], x[te], y[te], head_cfg, cfg, quiet)
            head = build_head(head_cfg)
            head.load_state_dict(state)
            out = _logits(head, x[te])
        logits[te.numpy()] = out.float().numpy()
        acc = float((out.argmax(1) == y[te]).float().mean())
        alone = ""
        if cfg.mode == "tuned" and len(outs) > 1:
            alone = (
                " (members alone: "
                + ", ".join(f"{float((o.argmax(1) == y[te]).float().mean()):.2%}" for o in outs)
                + ")"
            )
        log(f"fold {f + 1}/{k}: held-out top-1 {acc:.2%} on {len(te)} photos{alone}")
    return out_of_fold(logits, labels, folds, only)
