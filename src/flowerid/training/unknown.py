"""Fitting the unknown-photo detector (model/unknown.py) from a trained model's features.

Class means come from the training photos; the scales, the knee and the threshold from the
valid photos, through the final (calibrated) head, as `predict` will see them: training
features are too familiar to the head to set a threshold on. Plain numpy: seconds even for
thousands of photos, and no photos of other things needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._numeric import unit_rows
from .._text import Log
from ..backbones.engines import Backbone
from ..backbones.features import extract_features
from ..data.folders import list_images
from ..errors import DataError, UsageError
from ..model.class_stats import ClassStats
from ..model.head import HeadConfig, build_head
from ..model.unknown import DEFAULT_ACCEPT_RATE, KNEE_QUANTILE, UnknownDetector, gen_score
from .config import Extraction, UnknownSettings

MAX_NEGATIVE_PROTOTYPES = 64  # k-means centres that stand for a --negatives folder, however large
_MIN_STD = 1e-6


def threshold_at(scores: np.ndarray, accept_rate: float) -> float:
    """The score under which `accept_rate` of these (known) photos fall."""
    check_accept_rate(accept_rate)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0 or not np.isfinite(scores).all():
        raise UsageError("setting the unknown threshold needs finite scores of at least one valid photo")
    return float(np.quantile(scores, accept_rate))


def check_accept_rate(accept_rate: float) -> None:
    if not (isinstance(accept_rate, int | float) and 0.5 <= accept_rate <= 1.0):
        raise UsageError(
            f"--accept-rate must be a fraction between 0.5 and 1 (0.95 keeps 95% of valid); got {accept_rate}"
        )


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, D) unit-length means of each class's unit-length features."""
    x = unit_rows(features)
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    if len(counts) != num_classes or (counts == 0).any():
        raise UsageError("every category needs at least one training photo to fit the unknown-photo detector")
    sums = np.zeros((num_classes, x.shape[1]))
    np.add.at(sums, labels, x)
    return unit_rows(sums / counts[:, None]).astype(np.float32)


def prototypes(features: np.ndarray, k: int = MAX_NEGATIVE_PROTOTYPES, seed: int = 0, iters: int = 25) -> np.ndarray:
    """At most `k` unit-length spherical k-means centres of the rows: a few vectors stand for many photos."""
    x = unit_rows(features)
    if len(x) <= k:
        return x.astype(np.float32)
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(len(x), k, replace=False)]
    for _ in range(iters):
        assign = (x @ centres.T).argmax(axis=1)
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, x)
        empty = np.bincount(assign, minlength=k) == 0
        sums[empty] = centres[empty]
        centres = unit_rows(sums)
    return centres.astype(np.float32)


def _standardise(values: np.ndarray) -> tuple[float, float]:
    std = float(values.std())
    return float(values.mean()), std if std > _MIN_STD else 1.0


def fit_unknown(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    valid_features: np.ndarray,
    valid_logits: np.ndarray,
    num_classes: int,
    accept_rate: float = DEFAULT_ACCEPT_RATE,
    negatives: np.ndarray | None = None,
) -> UnknownDetector:
    """Fit on the training features (class means) and the valid photos (scales, knee, threshold).

    `valid_logits` must be the final head's (after calibration), as `predict` will see them.
    Training features are too familiar to the head to set a threshold on; valid ones are not.
    """
    check_accept_rate(accept_rate)
    if len(valid_features) == 0:
        raise UsageError("fitting the unknown-photo detector needs at least one valid photo")
    means = class_means(train_features, train_labels, num_classes)
    dim = means.shape[1]
    negs = prototypes(negatives) if negatives is not None and len(negatives) else np.zeros((0, dim), dtype=np.float32)
    near_mean, near_std = _standardise(gen_score(valid_logits))
    draft = UnknownDetector(means, negs, near_mean, near_std, 0.0, 1.0, 0.0, 0.0, accept_rate)
    far_mean, far_std = _standardise(draft.far(valid_features))
    z_far = (draft.far(valid_features) - far_mean) / far_std
    knee = float(np.quantile(z_far, KNEE_QUANTILE))
    fitted = UnknownDetector(means, negs, near_mean, near_std, far_mean, far_std, knee, 0.0, accept_rate)
    return fitted.with_threshold(threshold_at(fitted.score(valid_features, valid_logits), accept_rate), accept_rate)


def fit_for_run(
    settings: UnknownSettings,
    ex: Extraction,
    backbone: Backbone,
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    x_va: torch.Tensor,
    head_cfg: HeadConfig,
    head_state: dict[str, torch.Tensor],
    metrics: dict[str, Any],
    log: Log,
) -> dict[str, Any]:
    """Fit the detector on the final model's features; the checkpoint's optional keys it fills, as plain tensors:
    "unknown" (the detector) and "class_stats" (what `flowerid add` needs, model/class_stats.py).

    `x_tr` are the training photos' head inputs (no augmented views), `x_va` the valid ones';
    `head_state` is the final, calibrated head. `backbone` extracts the --negatives photos.
    """
    head = build_head(head_cfg).eval()
    head.load_state_dict(head_state)
    with torch.no_grad():
        logits_va = head(x_va.cpu().float()).numpy()
    negatives = negative_features(settings.negatives, ex, backbone) if settings.negatives else None
    det = fit_unknown(
        x_tr.cpu().numpy(),
        y_tr.cpu().numpy(),
        x_va.cpu().numpy(),
        logits_va,
        head_cfg.num_classes,
        settings.accept_rate,
        negatives,
    )
    metrics["unknown"] = {"method": det.method, "threshold": det.threshold, "accept_rate": det.accept_rate}
    if negatives is not None:
        with torch.no_grad():
            logits_neg = head(torch.from_numpy(negatives)).numpy()
        rejected = float((~det.known(det.score(negatives, logits_neg))).mean())
        metrics["unknown"]["negatives_rejected"] = rejected
        log(f"negatives: {rejected:.1%} of {len(negatives)} are called unknown (photos it learned from)")
    log(f"unknown photos: {det.describe()}")
    with torch.no_grad():
        z_tr = head[:-1](x_tr.cpu().float()).numpy()  # the last linear layer's inputs: x_tr for a linear head
    stats = ClassStats.fit(z_tr, y_tr.cpu().numpy(), head_cfg.num_classes, x_tr.cpu().numpy())
    return {"unknown": _tensors(det.to_state()), "class_stats": _tensors(stats.to_state())}


def _tensors(state: dict[str, Any]) -> dict[str, Any]:
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}


def negative_features(negatives: str, ex: Extraction, backbone: Backbone) -> np.ndarray:
    """Features of the photos in --negatives DIR (any layout); unreadable ones are skipped, none is an error."""
    folder = Path(negatives)
    if not folder.is_dir():
        raise DataError(f"--negatives {folder} is not a folder")
    ex = extract_features(
        list_images(folder), backbone, num_workers=ex.num_workers, use_cache=ex.use_cache, desc="negatives features"
    )
    if not ex.ok.any():
        raise DataError(f"--negatives {folder} holds no readable photos")
    return ex.features[ex.ok]
