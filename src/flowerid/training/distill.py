"""Distillation (`flowerid train DATA --teacher CHECKPOINT`, the `distilled` preset): one network learns
a bigger model's probabilities, so it predicts at its own cost with some of the teacher's accuracy.

The student is tuned as in the tuned mode (its last stages on cached front activations) and learns,
for every training photo and each of its augmented views (`views`), the teacher's probabilities for
that same view (Beyer et al. 2022: a patient, consistent teacher), mixed with the labels
(`distill_alpha`, at `distill_temperature`; training/loop.distill_loss). A view of a photo is always
the same crop (data/augment.py: seeded by the file name and the view's number), so both sides'
outputs are cached on disk: the student's front activations under activations/, the teacher's
features under the teacher's own namespace (its weights' digest, preprocessing and the view), to
which its head is applied here. A teacher's head carries the temperature it was calibrated with;
its logits are divided back to the raw ones it was trained to give, the same ones cross-validation
uses. Calibration and the unknown-photo detector are fitted on the student as in any run.

Cross-validation (`distill_cv.distilled_folds`, the mode table's folds) trains the teacher's recipe
(`teacher` names a preset) inside each fold on the fold's training photos only, keeps its logits for
every photo and view on disk (teachers/ in the cache), and teaches the student with them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed
from .._io import file_sha256
from ..backbones import get_spec
from ..backbones.features import extract_features
from ..backbones.surgery import TunedPart, tuned_parts
from ..data.augment import Augment
from ..data.folders import ImageFolder
from ..errors import DataError, UsageError
from ..model.head import HeadConfig
from .common import Run, TrainResult, best_metrics, check_left, finish_trained_backbone
from .config import PRESETS, TrainConfig
from .tail import fit_tail, head_inputs
from .tuned import front_rows, part_activations


def teacher_preset(cfg: TrainConfig) -> str | None:
    """The preset `cfg.teacher` names (a recipe to train inside each fold), or None for a checkpoint."""
    name = cfg.teacher
    return name if name in PRESETS and not Path(str(name)).is_file() else None


def student_part(cfg: TrainConfig) -> tuple[torch.nn.Module, TunedPart]:
    """The student network and the part of it that trains: one EfficientNet, its last stages tuned."""
    spec = get_spec(cfg.arch)
    if spec.family == "ensemble" or cfg.tune_stages < 1:
        raise UsageError(
            f"distillation teaches one network tuned on cached activations: give a single EfficientNet "
            f"(--arch efficientnet_lite0) and --tune-stages 1 or more, not {spec.name} with {cfg.tune_stages}",
            setting="tune_stages",
        )
    module, parts = tuned_parts(spec, cfg.weights, cfg.tune_stages)
    return module, parts[0]


def teacher_record(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """What the student's checkpoint says of its teacher: name, digest, and its recipe's CV figure."""
    training = ckpt["training"]
    preset = training.get("preset")
    recipe = ("arch", "views", "epochs", "tune_stages", "learning_rate")
    if preset in PRESETS and any(training.get(k) != getattr(PRESETS[preset], k) for k in recipe):
        preset = None  # the preset's settings changed by hand: its measured figure is not this teacher's
    return {
        "checkpoint": path.name,
        "digest": file_sha256(path),
        "backbone": ckpt["backbone"]["name"],
        "preset": preset,
        "valid_acc": ckpt["metrics"].get("valid_acc"),
        "cv_top1": PRESETS[preset].cv_top1 if preset in PRESETS else None,
    }


class Teacher:
    """A trained model's raw logits (its calibration undone) for any view of any photo.

    A tuned teacher (the `best` preset's run) gives them from its frozen fronts' cached
    activations through its tuned tails, the same cache entries its own training and
    cross-validation use, so a view costs only the tails once the fronts have run. Any
    other teacher runs as a whole network, its features cached per view under its own
    namespace (its weights' digest and the view).
    """

    def __init__(self, ckpt: dict[str, Any], device: str, engine: str) -> None:
        from ..model.predictor import NumpyHead

        self.ckpt, self.device, self.engine = ckpt, device, engine
        self.head = NumpyHead(HeadConfig.from_dict(ckpt["head"]["config"]), ckpt["head"]["state_dict"])
        m = ckpt["metrics"]
        self.temperature = float(m.get("temperature", 1.0)) if m.get("temperature_identified", True) else 1.0
        self.parts = self._tuned_parts()
        self._whole: Any = None

    def _tuned_parts(self) -> list[TunedPart] | None:
        """The tuned teacher's parts with its tails' weights, or None when its fronts are not the pretrained ones."""
        training, info = self.ckpt["training"], self.ckpt["backbone"]
        stages = int(training.get("tune_stages") or 0)
        path = info.get("weights_path")
        if not stages or training.get("full_finetune") or not path or not os.path.isfile(path):
            return None
        try:
            spec = get_spec(info["name"])
            module, parts = tuned_parts(spec, training.get("weights") if spec.family != "ensemble" else None, stages)
        except (UsageError, OSError, ValueError):
            return None
        fronts = [{k: v.clone() for k, v in p.front.state_dict().items()} for p in parts]
        try:
            module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError, ValueError):
            return None
        for part, before in zip(parts, fronts, strict=True):
            if any(not torch.equal(v, before[k]) for k, v in part.front.state_dict().items()):
                return None  # a front trained too: only the whole network gives its outputs
        return parts

    def logits(self, split: ImageFolder, view: int, cfg: TrainConfig, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits (N, C) of every photo's view `view` (rows of unreadable photos are zero) and which it read."""
        n = len(split.samples)
        if self.parts is not None:
            acts = part_activations(split, self.parts, cfg.extraction, self.device, f"teacher, {name}", view)
            failed = _by_index(split, acts.failures)
            pairs = zip(self.parts, acts.xs, strict=True)
            feats = torch.cat([head_inputs(p.tail, x, self.device) for p, x in pairs], 1)
            ok = np.ones(n, dtype=bool)
            ok[list(failed)] = False
            out = np.zeros((n, self.head.layers[-1][0].shape[1]), dtype=np.float32)
            out[ok] = self.head(feats.numpy())
        else:
            if self._whole is None:
                from ..backbones.engines import load_backbone

                info = self.ckpt["backbone"]
                self._whole = load_backbone(get_spec(info["name"]), self.device, info.get("weights_path"), self.engine)
            ex = extract_features(
                split.paths,
                self._whole,
                use_cache=cfg.use_cache,
                num_workers=cfg.num_workers,
                desc=f"teacher, {name}" + (f", view {view}" if view else ""),
                augment=Augment() if view else None,
                view=view,
            )
            out, ok = self.head(ex.features), ex.ok
        return out * np.float32(self.temperature), ok


def load_teacher(cfg: TrainConfig, categories: list[str], device: str) -> tuple[Teacher, dict[str, Any]]:
    """The teacher `cfg.teacher` names, and its record; UsageError/DataError saying how to fix a wrong one."""
    from ..model.checkpoint import load_checkpoint

    path = Path(str(cfg.teacher))
    if not path.is_file():
        hint = f"train one with `flowerid train DATA --preset {cfg.teacher} --save-dir runs/{cfg.teacher}`, then "
        raise UsageError(
            f"--teacher {cfg.teacher!r} is not a checkpoint file: distillation learns from a trained model; "
            + (hint if cfg.teacher in PRESETS else "")
            + "pass --teacher runs/NAME/checkpoint.pth",
            setting="teacher",
        )
    ckpt = load_checkpoint(path)
    if list(ckpt["categories"]) != list(categories):
        raise DataError(f"the teacher {path} was trained on other categories than this data set's")
    return Teacher(ckpt, device, cfg.engine), teacher_record(path, ckpt)


def _by_index(split: ImageFolder, failures: dict[str, str]) -> dict[int, str]:
    """Failures by path as failures by the photo's index in the split."""
    return {i: failures[str(p)] for i, p in enumerate(split.paths) if str(p) in failures}


def _rows(n: int, failed: dict[int, str]) -> np.ndarray:
    """Indices 0..n-1 less the failed ones: the rows of a front's activations."""
    return np.setdiff1d(np.arange(n), np.fromiter(failed, dtype=np.int64, count=len(failed)))


def student_views(
    split: ImageFolder, part: TunedPart, cfg: TrainConfig, device: str, name: str, views: int
) -> tuple[list[torch.Tensor], torch.Tensor, dict[int, str], int]:
    """The student's front activations of views 0..views for the photos every view could read, their labels,
    the failures by index and how many activations were computed."""
    got = [front_rows(split, part, cfg.extraction, device, f"{name} activations", v) for v in range(views + 1)]
    fails = [_by_index(split, rows.failures) for rows in got]
    failed = {i: reason for f in fails for i, reason in f.items()}
    n = len(split.samples)
    keep = _rows(n, failed)
    xs = [rows.x[torch.as_tensor(np.searchsorted(_rows(n, f), keep))] for rows, f in zip(got, fails, strict=True)]
    y = torch.as_tensor(np.asarray(split.targets, dtype=np.int64)[keep])
    return xs, y, failed, sum(rows.computed for rows in got)


def train_distilled(run: Run) -> TrainResult | None:
    """The student's last stages and head learn the teacher's probabilities on every view of the train photos."""
    cfg, data = run.cfg, run.data
    if cfg.resume:
        raise UsageError("--resume continues head training on frozen features; a distillation run starts over")
    if distributed.world().distributed:
        raise UsageError("distillation runs in one process: start it without torchrun")
    module, part = student_part(cfg)
    teacher, record = load_teacher(cfg, list(data.categories), run.device)
    name = record["preset"] or record["backbone"]
    run.log(f"teacher: {name} ({record['checkpoint']}, valid top-1 {record['valid_acc']:.2%})")
    t_feat = time.perf_counter()
    xs, y_tr, failed, computed = student_views(data.train, part, cfg, run.device, "train", cfg.views)
    keep = _rows(len(data.train.samples), failed)
    t_logits = []
    for v in range(cfg.views + 1):
        logits, ok = teacher.logits(data.train, v, cfg, "train")
        failed.update({int(i): "the teacher could not read it" for i in np.flatnonzero(~ok) if i not in failed})
        t_logits.append(torch.from_numpy(logits[keep]))
    both = torch.as_tensor(np.isin(keep, _rows(len(data.train.samples), failed)))
    xs, t_logits, y_tr = [x[both] for x in xs], [t[both] for t in t_logits], y_tr[both]
    (x_va,), y_va, failed_va, computed_va = student_views(data.valid, part, cfg, run.device, "valid", 0)
    skipped = {str(data.train.paths[i]): r for i, r in failed.items()}
    skipped.update({str(data.valid.paths[i]): r for i, r in failed_va.items()})
    feat_seconds = time.perf_counter() - t_feat
    check_left(data.categories, y_tr, y_va, run.save_dir, skipped, run.log)
    run.log(
        f"student activations of {cfg.views + 1} view(s) and the teacher's logits ready in {feat_seconds:.1f}s "
        f"({computed + computed_va} activations computed, the rest cached)"
    )
    head_cfg = HeadConfig(part.num_features, len(data.categories), cfg.hidden_units, cfg.dropout)
    views = len(xs)
    head_state, history, kept_epoch, logits_va, labels_va = fit_tail(
        part,
        head_cfg,
        (torch.cat(xs), y_tr.repeat(views)),
        (x_va, y_va),
        cfg.fit,
        run.device,
        run.log,
        teacher=torch.cat(t_logits),
    )
    metrics = best_metrics(history, kept_epoch)
    metrics.update(teacher=record, feature_seconds=feat_seconds, features_computed=computed + computed_va)
    photos = {"train_images": len(y_tr), "train_rows": len(y_tr) * views, "valid_images": len(y_va)}
    feats = (head_inputs(part.tail, xs[0], run.device), y_tr, head_inputs(part.tail, x_va, run.device))
    return finish_trained_backbone(
        run, module, head_cfg, head_state, logits_va, labels_va, metrics, skipped, photos, feats
    )


def teacher_logits_dir(cfg: TrainConfig, photos: ImageFolder, folds: np.ndarray) -> Path:
    """Where cross-validation keeps each fold's teacher logits: keyed by the teacher's recipe, the photos
    (names and labels) and the folds."""
    from ..backbones.cache import cache_root, namespace_for
    from ..data.images import LOADER_VERSION

    names = [(os.path.basename(str(p)), int(t)) for p, t in zip(photos.paths, photos.targets, strict=True)]
    local = ("device", "engine", "num_workers", "use_cache", "category_names", "resume")  # not the recipe
    recipe = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in local}
    key = {"teacher": recipe, "photos": names, "folds": folds.tolist(), "loader": LOADER_VERSION}
    return cache_root() / "teachers" / namespace_for(key)
