"""Training: extract (cached) frozen-backbone features, then fit a head on them."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from .._io import atomic_write_bytes, atomic_write_json
from ..backbones import get_spec
from ..backbones.build import build_backbone
from ..backbones.engines import Backbone, load_backbone, resolve_device
from ..backbones.features import extract_features
from ..data.augment import Augment
from ..data.folders import (
    CATEGORY_NAMES_FILE,
    SKIPPED_FILE,
    ImageFolder,
    load_category_names,
    load_dataset,
    names_for,
    write_skipped,
)
from ..errors import CheckpointError, DataError, UsageError
from ..model.checkpoint import save_checkpoint
from ..model.head import HeadConfig, build_head
from .config import TrainConfig
from .schedule import warmup_cosine

Log = Callable[[str], None]


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    valid_loss: float
    valid_acc: float
    lr: float
    seconds: float

    def line(self, epochs: int, improved: bool) -> str:
        """The progress line every training loop prints after an epoch; `*` marks a new best."""
        return (
            f"epoch {self.epoch:>3}/{epochs}  train loss {self.train_loss:.4f}  acc {self.train_acc:6.2%}  "
            f"valid loss {self.valid_loss:.4f}  acc {self.valid_acc:6.2%}{'  *' if improved else ''}"
        )


@dataclass
class TrainResult:
    checkpoint_path: Path
    metrics: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)


@torch.no_grad()
def evaluate_head(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of a head on feature rows."""
    head.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch):
        logits = head(x[i : i + batch])
        loss += F.cross_entropy(logits, y[i : i + batch], reduction="sum").item()
        correct += (logits.argmax(1) == y[i : i + batch]).sum().item()
    n = max(1, len(x))
    return loss / n, correct / n


STATE_FILE = "train_state.pt"
_STATE_FORMAT = "flowerid-train-state"


@torch.no_grad()
def _logits(head: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    head.eval()
    return torch.cat([head(x[i : i + 4096]) for i in range(0, len(x), 4096)])


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The T that minimises the negative log-likelihood of softmax(logits / T) (Guo et al., 2017).

    One number fitted on held-out data: it changes how sure the model says it
    is, never which category comes first. A coarse grid, then a fine one, is
    exact enough and cannot diverge.
    """
    logits, y = logits.double().cpu(), y.cpu()

    def nll(t: float) -> float:
        return F.cross_entropy(logits / t, y).item()

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    t0 = min(grid, key=nll)
    fine = t0 * np.exp(np.linspace(-0.06, 0.06, 61))
    return float(min(fine, key=nll))


def scale_logits(state: dict[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    """A head state whose logits are `factor` times the original: the last Linear, scaled.

    Folding the temperature into the weights keeps every consumer (predict,
    ONNX, exports) unchanged.
    """
    last = max((k.rsplit(".", 1)[0] for k in state if k.endswith(".weight")), key=int)
    out = dict(state)
    out[f"{last}.weight"] = state[f"{last}.weight"] * factor
    out[f"{last}.bias"] = state[f"{last}.bias"] * factor
    return out


def _fingerprint(*tensors: torch.Tensor, **settings: Any) -> str:
    """A digest of the features, labels and settings a head training run depends on."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for t in tensors:
        h.update(np.ascontiguousarray(t.detach().cpu().numpy()).tobytes())
    return h.hexdigest()


def load_train_state(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The saved state of an interrupted head training run, or None if there is none.

    A state file from other data or settings, or a damaged one, is an error that
    says what to do: resuming it would silently train something else.
    """
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is damaged ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "delete it, or run without --resume to start head training over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise CheckpointError(f"{path} is not a flowerid training state; delete it or run without --resume")
    if state.get("fingerprint") != fingerprint:
        raise UsageError(
            f"{path} was saved by a run with other data or settings (epochs, learning rate, batch size, seed, "
            "head, backbone or readable images differ); use the same command line, or run without --resume"
        )
    return state


def fit_head(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_valid: torch.Tensor,
    y_valid: torch.Tensor,
    head_cfg: HeadConfig,
    cfg: TrainConfig,
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
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    head = build_head(head_cfg).to(x_train.device)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    n = len(x_train)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))

    def lr_at(step: int) -> float:
        return cfg.learning_rate * warmup_cosine(step, steps_per_epoch, cfg.epochs)

    history: list[EpochStats] = []
    best: tuple[float, float] = (-1.0, float("inf"))
    best_state: dict[str, torch.Tensor] = {}
    best_epoch = 0
    step = 0
    fingerprint = ""
    if state_path is not None:
        fingerprint = _fingerprint(
            x_train,
            y_train,
            x_valid,
            y_valid,
            head=head_cfg.to_dict(),
            **{k: getattr(cfg, k) for k in ("epochs", "learning_rate", "batch_size", "seed", "weight_decay")},
            label_smoothing=cfg.label_smoothing,
        )
        saved = load_train_state(state_path, fingerprint) if resume else None
        if saved is not None:
            head.load_state_dict(saved["head"])
            opt.load_state_dict(saved["optimizer"])
            gen.set_state(saved["generator"])
            torch.set_rng_state(saved["rng"])
            if x_train.is_cuda and saved.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(saved["cuda_rng"], x_train.device)
            history = [EpochStats(**h) for h in saved["history"]]
            best, best_epoch, step = (saved["best_acc"], saved["best_loss"]), saved["best_epoch"], saved["step"]
            best_state = saved["best_state"]
            log(f"resuming head training after epoch {len(history)}/{cfg.epochs} from {state_path}")
        elif resume:
            log(f"no saved training state in {state_path.parent}; starting head training at epoch 1")
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        head.train()
        order = torch.randperm(n, generator=gen).to(x_train.device)
        run_loss, run_correct = 0.0, 0
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            logits = head(x_train[idx])
            loss = F.cross_entropy(logits, y_train[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            run_loss += loss.item() * len(idx)
            run_correct += (logits.argmax(1) == y_train[idx]).sum().item()
        v_loss, v_acc = evaluate_head(head, x_valid, y_valid)
        stats = EpochStats(
            epoch, run_loss / n, run_correct / n, v_loss, v_acc, lr_at(step - 1), time.perf_counter() - t0
        )
        history.append(stats)
        improved = (v_acc, -v_loss) > (best[0], -best[1])
        if improved:
            best, best_epoch = (v_acc, v_loss), epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in head.state_dict().items()})
        if state_path is not None:
            state = {
                "format": _STATE_FORMAT,
                "fingerprint": fingerprint,
                "head": head.state_dict(),
                "optimizer": opt.state_dict(),
                "generator": gen.get_state(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(x_train.device) if x_train.is_cuda else None,
                "history": [asdict(h) for h in history],
                "best_acc": best[0],
                "best_loss": best[1],
                "best_epoch": best_epoch,
                "best_state": best_state,
                "step": step,
            }
            buf = io.BytesIO()
            torch.save(state, buf)
            atomic_write_bytes(state_path, buf.getvalue())
        log(stats.line(cfg.epochs, improved))
    return best_state, history, best_epoch


def _features_for(
    split: ImageFolder,
    backbone: Backbone,
    cfg: TrainConfig,
    name: str,
    skipped: dict[str, str],
    counts: dict[str, int],
    view: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    ex = extract_features(
        split.paths,
        backbone,
        num_workers=cfg.num_workers,
        use_cache=cfg.use_cache,
        desc=f"{name} features" + (f", view {view}/{cfg.views}" if view else ""),
        augment=Augment() if view else None,
        view=view,
    )
    counts["computed"] = counts.get("computed", 0) + ex.computed
    for i, reason in ex.failures.items():
        skipped[str(split.paths[i])] = reason
    keep = np.flatnonzero(ex.ok)
    x = torch.from_numpy(ex.features[keep])
    y = torch.as_tensor(np.asarray(split.targets, dtype=np.int64)[keep])
    return x, y


def _report_skipped(save_dir: Path, skipped: dict[str, str], log: Log) -> None:
    """Say how many images were skipped and list them (path, reason) in save_dir/skipped.tsv."""
    path = write_skipped(save_dir, skipped)
    if path is not None:
        log(f"skipped {len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''}; paths and reasons in {path}")


def _write_curves(path: Path, history: list[dict[str, Any]], best_epoch: int, log: Log) -> None:
    """curves.png beside the checkpoint; a missing matplotlib must not cost the trained model."""
    try:
        from ..evaluation.figures import curves_figure, save_figure
    except ImportError as exc:
        log(f"no curves.png: matplotlib is not available ({exc}); pip install matplotlib")
        return
    save_figure(curves_figure(history, best_epoch), path)


def _check_left(
    categories: list[str], y_tr: torch.Tensor, y_va: torch.Tensor, save_dir: Path, skipped: dict[str, str], log: Log
) -> None:
    """Stop with a message when skipping unreadable photos left a split or a category empty."""
    if len(y_tr) == 0 or len(y_va) == 0:
        _report_skipped(save_dir, skipped, log)
        raise DataError("no readable images left in train/ or valid/ after skipping unreadable files")
    lost = [c for i, c in enumerate(categories) if not bool((y_tr == i).any())]
    if lost:
        _report_skipped(save_dir, skipped, log)
        raise DataError(
            f"no readable images left in train/ for categories: {', '.join(lost[:10])}"
            + (" …" if len(lost) > 10 else "")
            + f"; see {save_dir / SKIPPED_FILE} for why, fix or remove them"
        )


@dataclass
class _Run:
    """What every kind of training run shares: its data and settings, where it writes, how it reports."""

    data: Any
    data_dir: str | os.PathLike
    save_dir: Path
    cfg: TrainConfig
    names: list[str | None]
    device: str
    log: Log
    t_start: float


def _best_metrics(history: list[dict[str, Any]], best_epoch: int) -> dict[str, Any]:
    best = history[best_epoch - 1]
    return {
        "best_epoch": best_epoch,
        "valid_acc": best["valid_acc"],
        "valid_loss": best["valid_loss"],
        "train_acc": best["train_acc"],
        "history": history,
    }


def _calibrate(
    head_state: dict[str, torch.Tensor], logits_va: torch.Tensor, y_va: torch.Tensor, metrics: dict[str, Any], log: Log
) -> dict[str, torch.Tensor]:
    """Fit a temperature on the valid logits, record it in `metrics` and fold it into the head."""
    temperature = fit_temperature(logits_va, y_va)
    metrics["temperature"] = temperature
    metrics["valid_loss_uncalibrated"] = metrics["valid_loss"]
    metrics["valid_loss"] = F.cross_entropy(logits_va.cpu() / temperature, y_va.cpu()).item()
    log(
        f"calibrated: temperature {temperature:.3f}, fitted on valid "
        f"(its cross-entropy {metrics['valid_loss_uncalibrated']:.4f} -> {metrics['valid_loss']:.4f})"
    )
    return scale_logits(head_state, 1.0 / temperature)


def train(
    data_dir: str | os.PathLike, save_dir: str | os.PathLike, cfg: TrainConfig | None = None, log: Log = print
) -> TrainResult:
    """Train a head on a frozen backbone and write checkpoint.pth and metrics.json into save_dir."""
    cfg = cfg or TrainConfig()
    cfg.check()
    t_start = time.perf_counter()
    spec = get_spec(cfg.arch)
    device = resolve_device(cfg.device)
    data = load_dataset(data_dir)
    names_path = Path(cfg.category_names) if cfg.category_names else Path(data_dir) / CATEGORY_NAMES_FILE
    mapping = load_category_names(names_path) if (cfg.category_names or names_path.exists()) else None
    names = names_for(data.categories, mapping)
    save_dir = Path(save_dir)
    log(
        f"data: {len(data.train.samples)} train, {len(data.valid.samples)} valid"
        + (f", {len(data.test.samples)} test" if data.test else "")
        + f" images in {len(data.categories)} categories; backbone {spec.name} on {device}"
    )
    run = _Run(data, data_dir, save_dir, cfg, names, device, log, t_start)
    if cfg.full_finetune:
        return _train_full(run)
    if cfg.tune_stages:
        return _train_tuned(run)

    backbone = load_backbone(spec, device, cfg.weights, cfg.engine)
    skipped: dict[str, str] = {}
    counts: dict[str, int] = {}
    t_feat = time.perf_counter()
    x_tr, y_tr = _features_for(data.train, backbone, cfg, "train", skipped, counts)
    x_va, y_va = _features_for(data.valid, backbone, cfg, "valid", skipped, counts)
    n_view_rows = 0
    if cfg.views and len(x_tr):
        readable = dataclasses.replace(data.train, samples=[s for s in data.train.samples if str(s[0]) not in skipped])
        views = [_features_for(readable, backbone, cfg, "train", {}, counts, v) for v in range(1, cfg.views + 1)]
        n_view_rows = sum(len(x) for x, _ in views)
        x_tr = torch.cat([x_tr, *(x for x, _ in views)])
        y_tr = torch.cat([y_tr, *(y for _, y in views)])
    feat_seconds = time.perf_counter() - t_feat
    _check_left(data.categories, y_tr, y_va, save_dir, skipped, log)
    log(f"features ready in {feat_seconds:.1f}s")

    head_cfg = HeadConfig(spec.num_features, len(data.categories), cfg.hidden_units, cfg.dropout)
    state_path = save_dir / STATE_FILE
    if not cfg.resume and state_path.exists():
        log(f"starting head training over; {state_path} holds an interrupted run that --resume would continue")
    best_state, history, best_epoch = fit_head(
        x_tr.to(device), y_tr.to(device), x_va.to(device), y_va.to(device), head_cfg, cfg, log, state_path, cfg.resume
    )
    metrics = _best_metrics([asdict(h) for h in history], best_epoch)
    head = build_head(head_cfg)
    if cfg.calibrate:
        head.load_state_dict(best_state)
        best_state = _calibrate(best_state, _logits(head, x_va), y_va, metrics, log)
    if data.test is not None:
        head.load_state_dict(best_state)
        x_te, y_te = _features_for(data.test, backbone, cfg, "test", skipped, counts)
        metrics["test_loss"], metrics["test_acc"] = evaluate_head(head, x_te, y_te)
        log(f"test accuracy {metrics['test_acc']:.2%} on {len(y_te)} images")
    metrics["feature_seconds"] = feat_seconds
    metrics["features_computed"] = counts.get("computed", 0)
    metrics["total_seconds"] = time.perf_counter() - t_start
    photos = {"train_images": int(len(y_tr)) - n_view_rows, "train_rows": int(len(y_tr)), "valid_images": len(y_va)}
    weights = cfg.weights and str(Path(cfg.weights).resolve())
    return _finish(run, backbone, weights, head_cfg, best_state, metrics, skipped, photos)


def _finish(
    run: _Run,
    backbone: Backbone,
    weights_path: str | None,
    head_cfg: HeadConfig,
    head_state: dict[str, torch.Tensor],
    metrics: dict[str, Any],
    skipped: dict[str, str],
    photos: dict[str, int],
) -> TrainResult:
    """Write checkpoint.pth, metrics.json, curves.png and skipped.tsv; say where.

    `photos`: train_images (photos), train_rows (views add rows, not photos), valid_images.
    """
    spec, data = backbone.spec, run.data
    best_epoch = metrics["best_epoch"]
    ckpt = {
        "flowerid_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "backbone": {
            "name": spec.name,
            "weights_digest": backbone.digest,
            "weights_path": weights_path,
            "num_features": spec.num_features,
        },
        "preprocessing": backbone.preprocessing.to_dict(),
        "categories": list(data.categories),
        "names": run.names,
        "class_to_idx": {c: i for i, c in enumerate(data.categories)},
        "head": {"config": head_cfg.to_dict(), "state_dict": head_state},
        "training": {
            **asdict(run.cfg),
            "data_dir": str(Path(run.data_dir).resolve()),
            **{k: int(v) for k, v in photos.items()},
            "device": run.device,
            "engine": backbone.engine.name,
        },
        "metrics": metrics,
    }
    path = save_checkpoint(ckpt, run.save_dir / "checkpoint.pth")
    atomic_write_json(run.save_dir / "metrics.json", metrics)
    (run.save_dir / STATE_FILE).unlink(missing_ok=True)  # the run is complete: nothing left to resume
    _write_curves(run.save_dir / "curves.png", metrics["history"], best_epoch, run.log)
    _report_skipped(run.save_dir, skipped, run.log)
    run.log(
        f"best epoch {best_epoch}: valid accuracy {metrics['valid_acc']:.2%}; saved {path} "
        f"({metrics['total_seconds']:.0f}s in all)"
    )
    return TrainResult(path, metrics, skipped)


def _train_tuned(run: _Run) -> TrainResult:
    """--tune-stages N: the last N stages train with the head on cached front activations (finetune.py)."""
    from . import finetune

    cfg, data = run.cfg, run.data
    if cfg.views:
        raise UsageError("--tune-stages and --views do not combine: tuning mirrors activations instead; use --views 0")
    if cfg.resume:
        raise UsageError("--resume continues head training on frozen features; a --tune-stages run starts over")
    spec = get_spec(cfg.arch)
    module, digest = build_backbone(spec, cfg.weights)
    front, tail = finetune.split_backbone(module, spec, cfg.tune_stages)
    skipped: dict[str, str] = {}
    t_feat = time.perf_counter()
    x_tr, y_tr, failed_tr = finetune.front_activations(data.train, front, spec, digest, cfg, "train")
    x_va, y_va, failed_va = finetune.front_activations(data.valid, front, spec, digest, cfg, "valid")
    for split, failed in ((data.train, failed_tr), (data.valid, failed_va)):
        skipped.update({str(split.paths[i]): reason for i, reason in failed.items()})
    feat_seconds = time.perf_counter() - t_feat
    _check_left(data.categories, y_tr, y_va, run.save_dir, skipped, run.log)
    run.log(
        f"activations before the last {cfg.tune_stages} stage(s) ready in {feat_seconds:.1f}s: {tuple(x_tr.shape[1:])}"
    )

    head_cfg = HeadConfig(spec.num_features, len(data.categories), cfg.hidden_units, cfg.dropout)
    head_state, history, best_epoch, logits_va = finetune.fit_tail(
        tail, x_tr, y_tr, x_va, y_va, head_cfg, cfg, run.device, run.log
    )
    metrics = _best_metrics(history, best_epoch)
    metrics["feature_seconds"] = feat_seconds
    metrics["features_computed"] = len(y_tr) + len(y_va)
    photos = {"train_images": len(y_tr), "train_rows": len(y_tr), "valid_images": len(y_va)}
    return _save_tuned(run, module, head_cfg, head_state, logits_va, y_va, metrics, skipped, photos)


def _save_tuned(
    run: _Run,
    module: torch.nn.Module,
    head_cfg: HeadConfig,
    head_state: dict[str, torch.Tensor],
    logits_va: torch.Tensor,
    y_va: torch.Tensor,
    metrics: dict[str, Any],
    skipped: dict[str, str],
    photos: dict[str, int],
) -> TrainResult:
    """After a run that trained the backbone too: calibrate on valid logits, save backbone.pth, test, finish."""
    from . import finetune

    cfg = run.cfg
    if cfg.calibrate:
        head_state = _calibrate(head_state, logits_va, y_va, metrics, run.log)
    weights = finetune.save_backbone(module.cpu().eval(), run.save_dir)
    backbone = load_backbone(get_spec(cfg.arch), run.device, str(weights), cfg.engine)  # the digest later loads see
    if run.data.test is not None:
        head = build_head(head_cfg)
        head.load_state_dict(head_state)
        no_cache = dataclasses.replace(cfg, use_cache=False)
        x_te, y_te = _features_for(run.data.test, backbone, no_cache, "test", skipped, {})
        metrics["test_loss"], metrics["test_acc"] = evaluate_head(head, x_te, y_te)
        run.log(f"test accuracy {metrics['test_acc']:.2%} on {len(y_te)} images")
    metrics["total_seconds"] = time.perf_counter() - run.t_start
    return _finish(run, backbone, finetune.BACKBONE_FILE, head_cfg, head_state, metrics, skipped, photos)


def _train_full(run: _Run) -> TrainResult:
    """--full-finetune: every layer trains on augmented photos (finetune.fit_full); meant for a GPU."""
    from . import finetune

    cfg, data = run.cfg, run.data
    if cfg.views or cfg.resume or cfg.tune_stages:
        raise UsageError("--full-finetune trains on fresh augmented photos; drop --views, --resume and --tune-stages")
    spec = get_spec(cfg.arch)
    if spec.family == "ensemble":
        raise UsageError(f"--full-finetune takes one network; {spec.name} is an ensemble of {', '.join(spec.members)}")
    if run.device == "cpu":
        run.log(
            "full fine-tuning on a CPU is slow (every photo through the whole network, both ways, every epoch); "
            "it is meant for a GPU. On a CPU, --tune-stages 1 gets most of the gain in minutes"
        )
    module, _ = build_backbone(spec, cfg.weights)
    head_cfg = HeadConfig(spec.num_features, len(data.categories), cfg.hidden_units, cfg.dropout)
    skipped: dict[str, str] = {}
    head_state, history, best_epoch, logits_va, y_va = finetune.fit_full(
        module, head_cfg, data.train, data.valid, spec, cfg, run.device, skipped, run.log
    )
    metrics = _best_metrics(history, best_epoch)
    metrics["feature_seconds"] = 0.0
    metrics["features_computed"] = 0
    readable = sum(1 for p in data.train.paths if str(p) not in skipped)
    photos = {"train_images": readable, "train_rows": readable, "valid_images": len(y_va)}
    return _save_tuned(run, module, head_cfg, head_state, logits_va, y_va, metrics, skipped, photos)
