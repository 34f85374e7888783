"""The frozen mode: extract (cached) backbone features once, then fit a head on them.

The default and the cheapest: an epoch over 6552 feature rows takes well under a
second, and with the cache a re-run computes no features at all.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from .._text import Log, first_line
from ..backbones import BackboneSpec, get_spec
from ..backbones.cache import cache_root
from ..backbones.engines import Backbone, load_backbone
from ..backbones.features import Rows
from ..data.folders import DataSet, ImageFolder
from ..errors import CheckpointError, DataError, UsageError
from ..model.head import HeadConfig, build_head
from .calibrate import calibrate
from .common import (
    Folds,
    Run,
    TrainResult,
    best_metrics,
    check_left,
    evaluate_head,
    features_of,
    finish,
    share_of,
    silent,
)
from .config import Extraction, Fit, TrainConfig
from .loop import Best, EpochStats, Stepper, run_epochs
from .resume import STATE_FILE, fingerprint, load_train_state, save_train_state
from .unknown import fit_for_run


def fit_head(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_valid: torch.Tensor,
    y_valid: torch.Tensor,
    head_cfg: HeadConfig,
    fit: Fit,
    log: Log = print,
    state_path: Path | None = None,
    resume: bool = False,
) -> tuple[dict[str, torch.Tensor], list[EpochStats], int]:
    """AdamW with one warm-up epoch then cosine decay; keep the epoch best on valid.

    Best means highest valid accuracy, ties broken by lower valid loss.
    Returns the best head state, the per-epoch history and the best epoch (1-based).
    With `state_path`, everything needed to continue (head, optimiser, random
    state, history) is written there atomically after every epoch; `resume`
    continues from it, giving the same result as an uninterrupted run.
    """
    gen = torch.Generator().manual_seed(fit.seed)
    torch.manual_seed(fit.seed)
    head = build_head(head_cfg).to(x_train.device)
    n = len(x_train)
    weight = Stepper.class_weights(y_train, head_cfg.num_classes, fit)
    stepper = Stepper([list(head.parameters())], [fit.learning_rate], fit, n, weight)
    history: list[EpochStats] = []
    best = Best(keep_last=not fit.keep_best_epoch)
    digest = ""
    if state_path is not None:
        digest = fingerprint(
            x_train,
            y_train,
            x_valid,
            y_valid,
            head=head_cfg.to_dict(),
            **{k: getattr(fit, k) for k in ("epochs", "learning_rate", "batch_size", "seed", "weight_decay")},
            label_smoothing=fit.label_smoothing,
            balance_classes=fit.balance_classes,
        )
        saved = load_train_state(state_path, digest) if resume else None
        if saved is not None:
            try:
                history = _restore(saved, head, stepper, gen, best, x_train.device)
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
                # the fingerprint matched, but the state's own entries are not as save_train_state wrote them
                raise CheckpointError(
                    f"{state_path} is damaged ({first_line(exc)}); delete it, or run without --resume to start "
                    "head training over"
                ) from None
            log(f"resuming head training after epoch {len(history)}/{fit.epochs} from {state_path}")
        elif resume:
            log(f"no saved training state in {state_path.parent}; starting head training at epoch 1")

    def train_epoch(epoch: int) -> tuple[float, int, int]:
        head.train()
        order = torch.randperm(n, generator=gen).to(x_train.device)
        loss_sum, correct = 0.0, 0
        for i in range(0, n, fit.batch_size):
            idx = order[i : i + fit.batch_size]
            batch_loss, batch_correct = stepper(head(x_train[idx]), y_train[idx])
            loss_sum += batch_loss
            correct += batch_correct
        return loss_sum, correct, n

    def validate(epoch: int) -> tuple[float, float, bool]:
        v_loss, v_acc = evaluate_head(head, x_valid, y_valid)
        return v_loss, v_acc, best.offer(epoch, v_loss, v_acc, head=head)

    def save_state(_: EpochStats) -> None:
        if state_path is not None:
            save_train_state(state_path, digest, **_state(head, stepper, gen, history, best, x_train.device))

    run_epochs(fit, stepper, history, train_epoch, validate, log, after_epoch=save_state)
    return best.states.get("head", {}), history, best.epoch


def _restore(
    saved: dict, head: torch.nn.Module, stepper: Stepper, gen: torch.Generator, best: Best, device: torch.device
) -> list[EpochStats]:
    """Put an interrupted run's head, optimiser, random state and kept epoch back; its history so far."""
    head.load_state_dict(saved["head"])
    stepper.opt.load_state_dict(saved["optimizer"])
    gen.set_state(saved["generator"])
    torch.set_rng_state(saved["rng"])
    if device.type == "cuda" and saved.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"], device)
    best.key, best.epoch = (saved["best_acc"], -saved["best_loss"]), saved["best_epoch"]
    best.states = {"head": saved["best_state"]}
    stepper.step = saved["step"]
    return [EpochStats(**h) for h in saved["history"]]


def _state(
    head: torch.nn.Module,
    stepper: Stepper,
    gen: torch.Generator,
    history: list[EpochStats],
    best: Best,
    device: torch.device,
) -> dict:
    """Everything `_restore` needs to continue after the last epoch, as `save_train_state` writes it."""
    return {
        "head": head.state_dict(),
        "optimizer": stepper.opt.state_dict(),
        "generator": gen.get_state(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "history": [asdict(h) for h in history],
        "best_acc": best.key[0],
        "best_loss": -best.key[1],
        "best_epoch": best.epoch,
        "best_state": best.states.get("head", {}),
        "step": stepper.step,
    }


@torch.no_grad()
def _logits(head: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    head.eval()
    return torch.cat([head(x[i : i + 4096]) for i in range(0, len(x), 4096)])


def frozen_folds(photos: ImageFolder, cfg: TrainConfig, device: str, log: Log = print) -> Folds:
    """Cross-validating the frozen mode: the photos' features once, then a head fitted per fold."""
    spec = get_spec(cfg.arch)
    backbone = load_backbone(spec, device, cfg.weights, cfg.engine)
    rows = features_of(photos, backbone, cfg.extraction, "all")
    x, y = rows.x, rows.y
    head_cfg = HeadConfig(spec.num_features, len(photos.categories), cfg.hidden_units, cfg.dropout)

    def held_out(folds: np.ndarray, f: int, fit: Fit) -> list[torch.Tensor]:
        tr, te = (torch.from_numpy(np.flatnonzero(m)) for m in (folds != f, folds == f))
        state, _, _ = fit_head(x[tr], y[tr], x[te], y[te], head_cfg, fit, silent)
        head = build_head(head_cfg)
        head.load_state_dict(state)
        return [_logits(head, x[te])]

    return Folds(y, rows.failures, held_out)


def _extract_share(
    data: DataSet, backbone: Backbone, ex: Extraction, views: int, w: distributed.World
) -> dict[str, str]:
    """This process's share of every photo (and view) the run needs, into the cache; returns its failures.

    Each photo belongs to exactly one process (strided shares, no padding), so each is
    extracted once; the main process then finds them all in the cache.
    """
    ex = dataclasses.replace(ex, use_cache=True)
    failed: dict[str, str] = {}
    readable = None
    for name, split in (("train", data.train), ("valid", data.valid), ("test", data.test)):
        if split is None:
            continue
        share = share_of(split)
        failed.update(features_of(share, backbone, ex, f"{name}, {w.label()}").failures)
        if name == "train":
            readable = dataclasses.replace(share, samples=[s for s in share.samples if str(s[0]) not in failed])
    for view in range(1, views + 1):
        features_of(readable, backbone, ex, "train", view)
    return failed


def _shared_extraction(run: Run, spec: BackboneSpec) -> tuple[Backbone, dict[str, str] | None]:
    """Under torchrun: every process extracts its share into the cache; the main process gets all failures.

    The main process loads the backbone first (exporting its ONNX graph once), then the
    others. Returns the backbone and, on the main process, the failures of the whole job
    (None elsewhere: that process's work is done).
    """
    cfg, w = run.cfg, distributed.world()
    if not cfg.use_cache:
        raise UsageError("under torchrun the processes hand features over through the cache: drop --no-cache")
    if w.is_main:
        backbone = load_backbone(spec, run.device, cfg.weights, cfg.engine)
    distributed.barrier()
    if not w.is_main:
        backbone = load_backbone(spec, run.device, cfg.weights, cfg.engine)
    parts = distributed.gather(_extract_share(run.data, backbone, cfg.extraction, cfg.views, w))
    return backbone, None if parts is None else {k: v for part in parts for k, v in part.items()}


def _with_views(
    split: ImageFolder, rows: Rows, backbone: Backbone, ex: Extraction, views: int
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """The train rows followed by `views` augmented views of each readable photo: (x, y, how many rows the
    views added, how many of them were computed)."""
    if not views or not len(rows.y):
        return rows.x, rows.y, 0, 0
    readable = dataclasses.replace(split, samples=[s for s in split.samples if str(s[0]) not in rows.failures])
    got = [features_of(readable, backbone, ex, "train", v) for v in range(1, views + 1)]
    x = torch.cat([rows.x, *(v.x for v in got)])
    y = torch.cat([rows.y, *(v.y for v in got)])
    return x, y, sum(len(v.y) for v in got), sum(v.computed for v in got)


def train_frozen(run: Run) -> TrainResult | None:
    """Features of every split (and augmented views) through the frozen backbone, then the head on them.

    Under torchrun the processes share the extraction; the main process then trains.
    """
    cfg, data, save_dir, log = run.cfg, run.data, run.save_dir, run.log
    spec = get_spec(cfg.arch)
    t_feat = time.perf_counter()
    known: dict[str, str] | None = None
    w = distributed.world()
    if w.distributed:
        backbone, known = _shared_extraction(run, spec)
        if known is None:
            return None  # the main process trains and writes; this one's features are in the cache
    else:
        backbone = load_backbone(spec, run.device, cfg.weights, cfg.engine)
    ex = cfg.extraction
    tr = features_of(data.train, backbone, ex, "train", known_failures=known)
    va = features_of(data.valid, backbone, ex, "valid", known_failures=known)
    skipped = {**tr.failures, **va.failures}
    computed = tr.computed + va.computed
    x_va, y_va = va.x, va.y
    x_tr, y_tr, n_view_rows, view_computed = _with_views(data.train, tr, backbone, ex, cfg.views)
    computed += view_computed
    feat_seconds = time.perf_counter() - t_feat
    if w.distributed and computed:
        raise DataError(
            f"{computed} photos that other processes extracted are not in this process's cache "
            f"({cache_root()}): on several machines FLOWERID_CACHE must be one folder they all share, "
            "and the data must have the same path on each (see docs/scaling.md)"
        )
    check_left(data.categories, y_tr, y_va, save_dir, skipped, log)
    log(f"features ready in {feat_seconds:.1f}s" + (f" ({w.size} processes)" if w.distributed else ""))

    head_cfg = HeadConfig(spec.num_features, len(data.categories), cfg.hidden_units, cfg.dropout)
    state_path = save_dir / STATE_FILE
    if not cfg.resume and state_path.exists():
        log(f"starting head training over; {state_path} holds an interrupted run that --resume would continue")
    device = run.device
    best_state, history, best_epoch = fit_head(
        x_tr.to(device),
        y_tr.to(device),
        x_va.to(device),
        y_va.to(device),
        head_cfg,
        cfg.fit,
        log,
        state_path,
        cfg.resume,
    )
    metrics = best_metrics([asdict(h) for h in history], best_epoch)
    head = build_head(head_cfg)
    if cfg.calibrate:
        head.load_state_dict(best_state)
        best_state = calibrate(best_state, _logits(head, x_va), y_va, metrics, log)
    n_photos = int(len(y_tr)) - n_view_rows  # the views come after the photos themselves
    extras = fit_for_run(
        cfg.unknown_settings, ex, backbone, x_tr[:n_photos], y_tr[:n_photos], x_va, head_cfg, best_state, metrics, log
    )
    if data.test is not None:
        head.load_state_dict(best_state)
        te = features_of(data.test, backbone, ex, "test", known_failures=known)
        skipped.update(te.failures)
        computed += te.computed
        metrics["test_loss"], metrics["test_acc"] = evaluate_head(head, te.x, te.y)
        log(f"test accuracy {metrics['test_acc']:.2%} on {len(te.y)} images")
    metrics["feature_seconds"] = feat_seconds
    metrics["features_computed"] = computed
    metrics["total_seconds"] = time.perf_counter() - run.t_start
    photos = {"train_images": n_photos, "train_rows": int(len(y_tr)), "valid_images": len(y_va)}
    weights = cfg.weights and str(Path(cfg.weights).resolve())
    return finish(run, backbone, weights, head_cfg, best_state, extras, metrics, skipped, photos)
