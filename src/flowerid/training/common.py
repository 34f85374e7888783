"""What every training mode shares: the run's record, the features of a split, the checks on what is
left after skipping unreadable photos, and the files written at the end."""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed
from .._io import atomic_write_bytes, atomic_write_json
from .._text import Log
from ..backbones import get_spec
from ..backbones.engines import Backbone, load_backbone
from ..backbones.features import Rows, split_rows
from ..data.augment import Augment
from ..data.folders import SKIPPED_FILE, DataSet, ImageFolder, write_skipped
from ..errors import DataError
from ..model.checkpoint import build_checkpoint, save_checkpoint
from ..model.head import HeadConfig, build_head
from .calibrate import calibrate
from .config import Extraction, Fit, TrainConfig
from .resume import STATE_FILE
from .unknown import fit_for_run


@dataclass
class TrainResult:
    checkpoint_path: Path
    metrics: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class Folds:
    """What cross-validating a mode needs (modes.Mode.folds): the pooled photos' labels, the unreadable ones,
    and `held_out(folds, f, fit)`: fold `f`'s fit (`fit`: the recipe fitted to the fold's training photos)
    from the pretrained network, trained on the rows with `folds != f`, giving the logits of the rows with
    `folds == f`, one tensor per network trained (an ensemble's members; their mean is the ensemble's)."""

    labels: torch.Tensor
    failures: dict[str, str]
    held_out: Callable[[np.ndarray, int, Fit], list[torch.Tensor]]


@dataclass
class Run:
    """What every kind of training run shares: its data and settings, where it writes, how it reports."""

    data: DataSet
    data_dir: str | os.PathLike
    save_dir: Path
    cfg: TrainConfig
    names: list[str | None]
    device: str
    log: Log
    t_start: float


@torch.no_grad()
def evaluate_head(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of a head on feature rows."""
    head.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch):
        logits = head(x[i : i + batch])
        loss += torch.nn.functional.cross_entropy(logits, y[i : i + batch], reduction="sum").item()
        correct += (logits.argmax(1) == y[i : i + batch]).sum().item()
    n = max(1, len(x))
    return loss / n, correct / n


def silent(_: str) -> None:
    """The log of a torchrun process other than the main one: only the main process reports."""


def share_of(split: ImageFolder) -> ImageFolder:
    """This process's share of a split under torchrun (every N-th photo, none twice); alone, the split."""
    w = distributed.world()
    return dataclasses.replace(split, samples=distributed.shard_list(split.samples, w)) if w.distributed else split


def features_of(
    split: ImageFolder,
    backbone: Backbone,
    ex: Extraction,
    name: str,
    view: int = 0,
    known_failures: dict[str, str] | None = None,
) -> Rows:
    """A split's (cached) feature rows, labels and unreadable photos (view > 0: that augmented view).

    `known_failures`: photos other torchrun processes found unreadable, not read again.
    """
    return split_rows(
        split,
        backbone,
        f"{name} features" + (f", view {view}" if view else ""),
        use_cache=ex.use_cache,
        num_workers=ex.num_workers,
        augment=Augment() if view else None,
        view=view,
        known_failures=known_failures,
    )


def report_skipped(save_dir: Path, skipped: dict[str, str], log: Log) -> None:
    """Say how many images were skipped and list them (path, reason) in save_dir/skipped.tsv."""
    if not distributed.world().is_main:
        return  # under torchrun the main process writes
    path = write_skipped(save_dir, skipped)
    if path is not None:
        log(f"skipped {len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''}; paths and reasons in {path}")


def check_left(
    categories: list[str], y_tr: torch.Tensor, y_va: torch.Tensor, save_dir: Path, skipped: dict[str, str], log: Log
) -> None:
    """Stop with a message when skipping unreadable photos left a split or a category empty."""
    if len(y_tr) == 0 or len(y_va) == 0:
        report_skipped(save_dir, skipped, log)
        raise DataError("no readable images left in train/ or valid/ after skipping unreadable files")
    lost = [c for i, c in enumerate(categories) if not bool((y_tr == i).any())]
    if lost:
        report_skipped(save_dir, skipped, log)
        raise DataError(
            f"no readable images left in train/ for categories: {', '.join(lost[:10])}"
            + (" …" if len(lost) > 10 else "")
            + f"; see {save_dir / SKIPPED_FILE} for why, fix or remove them"
        )


def best_metrics(history: list[dict[str, Any]], best_epoch: int) -> dict[str, Any]:
    best = history[best_epoch - 1]
    return {
        "best_epoch": best_epoch,
        "valid_acc": best["valid_acc"],
        "valid_loss": best["valid_loss"],
        "train_acc": best["train_acc"],
        "history": history,
    }


def _write_curves(path: Path, history: list[dict[str, Any]], best_epoch: int, log: Log) -> None:
    """curves.png beside the checkpoint; a missing matplotlib must not cost the trained model."""
    try:
        from ..evaluation.figures import curves_figure, save_figure
    except ImportError as exc:
        log(f"no curves.png: matplotlib is not available ({exc}); pip install matplotlib")
        return
    save_figure(curves_figure(history, best_epoch), path)


def finish(
    run: Run,
    backbone: Backbone,
    weights_path: str | None,
    head_cfg: HeadConfig,
    head_state: dict[str, torch.Tensor],
    extras: dict[str, Any],
    metrics: dict[str, Any],
    skipped: dict[str, str],
    photos: dict[str, int],
) -> TrainResult:
    """Write checkpoint.pth, metrics.json, curves.png and skipped.tsv; say where.

    `extras`: the optional checkpoint keys `fit_for_run` fills (unknown, class_stats).
    `photos`: train_images (photos), train_rows (views add rows, not photos), valid_images.
    """
    spec, data = backbone.spec, run.data
    best_epoch = metrics["best_epoch"]
    ckpt = build_checkpoint(
        backbone={
            "name": spec.name,
            "weights_digest": backbone.digest,
            "weights_path": weights_path,
            "num_features": spec.num_features,
        },
        preprocessing=backbone.preprocessing.to_dict(),
        categories=list(data.categories),
        names=run.names,
        head_config=head_cfg.to_dict(),
        head_state=head_state,
        training={
            **asdict(run.cfg),
            "data_dir": str(Path(run.data_dir).resolve()),
            **{k: int(v) for k, v in photos.items()},
            "device": run.device,
            "engine": backbone.engine.name,
            "world_size": distributed.world().size,
            "layout": data.layout.describe() if data.layout is not None else None,
            "split": data.split,  # the valid split held out of train, or None when valid/ was given
        },
        metrics=metrics,
        **extras,
    )
    path = save_checkpoint(ckpt, run.save_dir / "checkpoint.pth")
    atomic_write_json(run.save_dir / "metrics.json", metrics)
    (run.save_dir / STATE_FILE).unlink(missing_ok=True)  # the run is complete: nothing left to resume
    _write_curves(run.save_dir / "curves.png", metrics["history"], best_epoch, run.log)
    report_skipped(run.save_dir, skipped, run.log)
    run.log(
        f"kept epoch {best_epoch}: valid accuracy {metrics['valid_acc']:.2%}; saved {path} "
        f"({metrics['total_seconds']:.0f}s in all)"
    )
    return TrainResult(path, metrics, skipped)


BACKBONE_FILE = "backbone.pth"


def save_backbone(module: torch.nn.Module, save_dir: Path) -> Path:
    """The whole tuned feature extractor as a plain state dict beside the checkpoint, written atomically."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
    return atomic_write_bytes(save_dir / BACKBONE_FILE, buf.getvalue())


def finish_trained_backbone(
    run: Run,
    module: torch.nn.Module,
    head_cfg: HeadConfig,
    head_state: dict[str, torch.Tensor],
    logits_va: torch.Tensor,
    y_va: torch.Tensor,
    metrics: dict[str, Any],
    skipped: dict[str, str],
    photos: dict[str, int],
    feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> TrainResult:
    """After a run that trained the backbone too: calibrate on valid logits, save backbone.pth, test, finish.

    `feats`: the tuned network's train features, labels and valid features, when the run has them
    at hand (the tuned mode's tail on cached activations); otherwise they are extracted here, for
    the unknown-photo detector.
    """
    cfg = run.cfg
    if cfg.calibrate:
        head_state = calibrate(head_state, logits_va, y_va, metrics, run.log)
    weights = save_backbone(module.cpu().eval(), run.save_dir)
    backbone = load_backbone(get_spec(cfg.arch), run.device, str(weights), cfg.engine)  # the digest later loads see
    no_cache = dataclasses.replace(cfg.extraction, use_cache=False)  # the tuned network's features: once only
    if feats is None:
        tr = features_of(run.data.train, backbone, no_cache, "train")
        feats = (tr.x, tr.y, features_of(run.data.valid, backbone, no_cache, "valid").x)
    extras = fit_for_run(cfg.unknown_settings, cfg.extraction, backbone, *feats, head_cfg, head_state, metrics, run.log)
    if run.data.test is not None:
        head = build_head(head_cfg)
        head.load_state_dict(head_state)
        te = features_of(run.data.test, backbone, no_cache, "test")
        skipped.update(te.failures)
        metrics["test_loss"], metrics["test_acc"] = evaluate_head(head, te.x, te.y)
        run.log(f"test accuracy {metrics['test_acc']:.2%} on {len(te.y)} images")
    metrics["total_seconds"] = time.perf_counter() - run.t_start
    return finish(run, backbone, BACKBONE_FILE, head_cfg, head_state, extras, metrics, skipped, photos)
