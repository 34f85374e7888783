"""The tuned mode (tune_stages N): partial fine-tuning that stays cheap on a CPU.

The last stages of an EfficientNet train with the head (tail.py). The frozen front of the
network runs once per photo, up to the first tuned stage (through ONNX Runtime on a
CPU, 3x faster than torch there), and its activations are cached on disk in float16 as
their own kind of cached output (backbones/cache.CacheKey; damaged entries are
recomputed): a re-run, or another preset on the same backbone, costs only the tuned
part. An epoch then costs only the tuned stages (Lite0's last stage: about 7 s over the
6552 flower photos on 2 quiet cores; half that where the CPU computes bfloat16). Where the
network splits comes from its spec's anatomy (backbones/surgery.py). The tuned network is
saved beside the checkpoint as a plain state dict, so prediction, exports and the ONNX
engine treat it like any backbone with local weights.

An ensemble of EfficientNets whose features stay raw (efficientnet_lite012, the `best`
preset) tunes each member in turn, with a linear head of its own, on the activations of
its front fed its view of the ensemble's crop (ensemble.OwnView), as it is fed at prediction.
The members' heads averaged are one linear head over the ensemble's features, so the
result is a checkpoint like any other: one backbone, one head.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import distributed
from .._text import Log
from ..backbones import BackboneSpec, get_spec
from ..backbones.engines import load_front
from ..backbones.features import Rows, split_rows
from ..backbones.surgery import TunedPart, tuned_parts
from ..data.augment import Augment
from ..data.folders import ImageFolder
from ..errors import UsageError
from ..model.head import HeadConfig
from .common import Folds, Run, TrainResult, best_metrics, check_left, finish_trained_backbone, share_of, silent
from .config import Extraction, Fit, TrainConfig
from .loop import score
from .tail import fit_tail, head_inputs


def check_ensemble_recipe(spec: BackboneSpec, hidden_units: int, keep_best_epoch: bool) -> None:
    """An ensemble's tuned heads average into one only when each is linear and trained a fixed number of epochs."""
    if spec.family == "ensemble" and (hidden_units or keep_best_epoch):
        raise UsageError(
            f"{spec.name} tunes each member with a linear head and averages them after a fixed number of "
            "epochs: leave out --hidden_units and --keep-best-epoch"
        )


def front_rows(split: ImageFolder, part: TunedPart, ex: Extraction, device: str, desc: str, view: int = 0) -> Rows:
    """The part's front activations of a split (float16, cached), through the one route into the cache;
    `view` k > 0: each photo's augmented view k (data/augment.py), cached apart."""
    front = load_front(part.front, part.key, device, ex.engine)
    aug = Augment() if view else None
    desc += f", view {view}" if view else ""
    return split_rows(split, front, desc, use_cache=ex.use_cache, num_workers=ex.num_workers, augment=aug, view=view)


@dataclass
class Activations:
    """Each part's front activations of the same photos (those every part could read), their labels,
    the photos left out (path: why) and how many activations were computed rather than found cached."""

    xs: list[torch.Tensor]
    y: torch.Tensor
    failures: dict[str, str]
    computed: int


def part_activations(
    split: ImageFolder, parts: list[TunedPart], ex: Extraction, device: str, name: str, view: int = 0
) -> Activations:
    """Every part's activations of a split (`view` k > 0: augmented view k), narrowed to the photos every part
    read, in the same order."""
    got = [front_rows(split, p, ex, device, f"{name} activations" + (f", {p.name}" if len(parts) > 1 else ""), view)
           for p in parts]  # fmt: skip
    failed = {k: v for rows in got for k, v in rows.failures.items()}
    paths = [str(p) for p in split.paths]
    keep = np.array([i for i, p in enumerate(paths) if p not in failed], dtype=np.int64)
    xs = []
    for rows in got:  # rows of the photos this part read, narrowed to those every part read
        read = np.array([i for i, p in enumerate(paths) if p not in rows.failures], dtype=np.int64)
        xs.append(rows.x[torch.as_tensor(np.searchsorted(read, keep))] if len(rows.failures) != len(failed) else rows.x)
    y = torch.as_tensor(np.asarray(split.targets, dtype=np.int64)[keep])
    return Activations(xs, y, failed, sum(rows.computed for rows in got))


def average_heads(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Linear heads over the members' features averaged into one over their concatenation: its logits are the
    mean of theirs, so its softmax is that of their averaged log-probabilities."""
    out = {}
    for key in states[0]:
        parts = [s[key] for s in states]
        out[key] = torch.cat(parts, 1) / len(parts) if key.endswith(".weight") else torch.stack(parts).mean(0)
    return out


def ensemble_history(
    member_histories: list[list[dict[str, float]]], logits: list[list[torch.Tensor]], labels: torch.Tensor
) -> list[dict[str, float]]:
    """Epoch e of an ensemble: its members after e epochs each, valid scored on their averaged logits
    (what the averaged head gives); train figures are the members' mean, seconds their sum."""
    history = []
    for e, rows in enumerate(zip(*member_histories, strict=True)):
        mean = torch.stack([m[e] for m in logits]).mean(0)
        valid_loss, valid_acc = score(mean, labels, over_job=False)  # gathered: the main process scores alone
        history.append({
            "epoch": e + 1,
            "train_loss": float(np.mean([r["train_loss"] for r in rows])),
            "train_acc": float(np.mean([r["train_acc"] for r in rows])),
            "valid_loss": valid_loss,
            "valid_acc": valid_acc,
            "lr": rows[-1]["lr"],
            "seconds": float(sum(r["seconds"] for r in rows)),
        })  # fmt: skip
    return history


@dataclass
class _Prepared:
    """This process's share of train and valid through every part's front, and what the whole job knows of them."""

    train: Activations
    valid: Activations
    job_train_labels: torch.Tensor  # every process's train labels, gathered in process order
    job_valid_labels: torch.Tensor
    skipped: dict[str, str]  # the job's unreadable photos
    seconds: float
    computed: int  # over the job


def _activations(run: Run, parts: list[TunedPart]) -> _Prepared:
    """Every part's front activations of this process's share; what is left is checked over the whole job."""
    cfg, w = run.cfg, distributed.world()
    t_feat = time.perf_counter()
    tr = part_activations(share_of(run.data.train), parts, cfg.extraction, run.device, "train")
    va = part_activations(share_of(run.data.valid), parts, cfg.extraction, run.device, "valid")
    feat_seconds = time.perf_counter() - t_feat
    # What is left is checked over the whole job, by every process alike.
    skipped = {k: v for part in distributed.all_gather({**tr.failures, **va.failures}) for k, v in part.items()}
    all_tr, all_va = (torch.cat(distributed.all_gather(y)) for y in (tr.y, va.y))
    check_left(run.data.categories, all_tr, all_va, run.save_dir, skipped, run.log)
    computed = int(distributed.all_sum([tr.computed + va.computed])[0])
    run.log(
        f"activations before the last {cfg.tune_stages} stage(s) ready in {feat_seconds:.1f}s "
        f"({computed} computed, the rest cached): "
        + ", ".join(str(tuple(x.shape[1:])) for x in tr.xs)
        + (f" ({w.size} processes)" if w.distributed else "")
    )
    return _Prepared(tr, va, all_tr, all_va, skipped, feat_seconds, computed)


def train_tuned(run: Run) -> TrainResult | None:
    """tune_stages N: the last N stages train with the head on cached front activations; an ensemble's
    members each in turn, their heads then averaged into one.

    Under torchrun each process runs the fronts over its share of the photos and trains on it.
    """
    cfg = run.cfg
    if cfg.views:
        raise UsageError("--tune-stages and --views do not combine: tuning mirrors activations instead; use --views 0")
    if cfg.resume:
        raise UsageError("--resume continues head training on frozen features; a --tune-stages run starts over")
    spec = get_spec(cfg.arch)
    ensemble = spec.family == "ensemble"
    check_ensemble_recipe(spec, cfg.hidden_units, cfg.keep_best_epoch)
    module, parts = tuned_parts(spec, cfg.weights, cfg.tune_stages)
    prep = _activations(run, parts)
    tr, va = prep.train, prep.valid
    num_classes = len(run.data.categories)
    states, histories, epoch_logits, f_tr, f_va = [], [], [], [], []
    for i, (part, x_tr, x_va) in enumerate(zip(parts, tr.xs, va.xs, strict=True)):
        if ensemble:
            run.log(f"member {i + 1}/{len(parts)}: {part.name}")
        part_cfg = HeadConfig(part.num_features, num_classes, cfg.hidden_units, cfg.dropout)
        epoch_logits.append([])
        state, history, kept_epoch, logits_va, labels_va = fit_tail(
            part,
            part_cfg,
            (x_tr, tr.y),
            (x_va, va.y),
            cfg.fit,
            run.device,
            run.log,
            epoch_logits[-1] if ensemble else None,  # only an ensemble's history needs every epoch's logits
        )
        states.append(state)
        histories.append(history)
        # The head's inputs through the tuned tail, over the whole job in the order of the gathered labels:
        # the unknown-photo detector is fitted on what predict will see.
        f_tr.append(torch.cat(distributed.all_gather(head_inputs(part.tail, x_tr, run.device))))
        f_va.append(torch.cat(distributed.all_gather(head_inputs(part.tail, x_va, run.device))))
    if not distributed.world().is_main:
        return None  # the main process writes the checkpoint
    if ensemble:
        head_state = average_heads(states)
        logits_va = torch.stack([e[-1] for e in epoch_logits]).mean(0)
        history = ensemble_history(histories, epoch_logits, labels_va)
        kept_epoch = len(history)
    else:
        head_state, history = states[0], histories[0]
    metrics = best_metrics(history, kept_epoch)
    if ensemble:
        _report_members(run, metrics, parts, histories)
    metrics["feature_seconds"] = prep.seconds
    metrics["features_computed"] = prep.computed
    all_tr, all_va = prep.job_train_labels, prep.job_valid_labels
    photos = {"train_images": len(all_tr), "train_rows": len(all_tr), "valid_images": len(all_va)}
    feats = (torch.cat(f_tr, 1), all_tr, torch.cat(f_va, 1))
    head_cfg = HeadConfig(spec.num_features, num_classes, cfg.hidden_units, cfg.dropout)
    return finish_trained_backbone(
        run, module, head_cfg, head_state, logits_va, labels_va, metrics, prep.skipped, photos, feats
    )


def tuned_folds(photos: ImageFolder, cfg: TrainConfig, device: str, log: Log = print) -> Folds:
    """Cross-validating the tuned mode: the fronts' activations once, then every part tuned afresh per fold from
    its pretrained weights (an ensemble's members each, their logits averaged as their averaged heads give them)."""
    spec = get_spec(cfg.arch)
    check_ensemble_recipe(spec, cfg.hidden_units, cfg.keep_best_epoch)  # what `train()` refuses is not measured
    _, parts = tuned_parts(spec, cfg.weights, cfg.tune_stages)
    acts = part_activations(photos, parts, cfg.extraction, device, "all")
    y, num_classes = acts.y, len(photos.categories)

    def held_out(folds: np.ndarray, f: int, fit: Fit) -> list[torch.Tensor]:
        tr, te = (torch.from_numpy(np.flatnonzero(m)) for m in (folds != f, folds == f))
        outs = []
        for part, x in zip(tuned_parts(spec, cfg.weights, cfg.tune_stages)[1], acts.xs, strict=True):
            part_cfg = HeadConfig(part.num_features, num_classes, cfg.hidden_units, cfg.dropout)
            outs.append(fit_tail(part, part_cfg, (x[tr], y[tr]), (x[te], y[te]), fit, device, silent)[3])
        return outs

    return Folds(y, acts.failures, held_out)


def _report_members(run: Run, metrics: dict, parts: list[TunedPart], histories: list[list[dict[str, float]]]) -> None:
    """Each member's own valid figures, beside the averaged ones, in the metrics and the log."""
    metrics["members"] = [
        {"backbone": p.name, "valid_acc": h[-1]["valid_acc"], "valid_loss": h[-1]["valid_loss"]}
        for p, h in zip(parts, histories, strict=True)
    ]
    run.log(
        "members alone: "
        + ", ".join(f"{m['backbone']} {m['valid_acc']:.2%}" for m in metrics["members"])
        + f"; averaged: {metrics['valid_acc']:.2%}"
    )
