"""Cross-validation of a distilled recipe: the teacher trained inside each fold, never on its held-out photos.

For each fold the teacher's recipe (the preset `cfg.teacher` names) trains on the fold's training
photos exactly as cross-validation trains it alone; its raw logits for every photo and every view
are kept on disk (teachers/ in the cache, with its tuned tails), so trying another temperature,
mixing or number of epochs for the student costs only the student's training. The student then
learns from them on the fold's training photos and is scored on the held-out ones.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch

from .._io import atomic_write_bytes
from .._text import Log
from ..backbones import get_spec
from ..backbones.surgery import tuned_parts
from ..data.folders import ImageFolder
from ..errors import DataError
from ..model.head import HeadConfig, build_head
from .common import Folds, silent
from .config import Fit, TrainConfig
from .distill import student_part, student_views, teacher_logits_dir, teacher_preset
from .tail import fit_tail, head_inputs
from .tuned import check_ensemble_recipe, part_activations


def _load(path: os.PathLike, what: str) -> object | None:
    """A kept array or state, or None when it is missing or damaged (then made again)."""
    try:
        return np.load(path) if what == "npy" else torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, EOFError):
        return None


def _save_array(path: os.PathLike, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def fold_teacher_logits(
    photos: ImageFolder, tcfg: TrainConfig, folds: np.ndarray, fold: int, views: int, device: str, log: Log
) -> list[np.ndarray]:
    """The teacher's raw logits (N, C) for views 0..views of every photo, from its recipe trained on the
    photos outside `fold` (its tails and heads kept on disk too, so a new view costs no training)."""
    store = teacher_logits_dir(tcfg, photos, folds)
    store.mkdir(parents=True, exist_ok=True)
    files = [store / f"fold{fold}-view{v}.npy" for v in range(views + 1)]
    kept = [_load(p, "npy") for p in files]
    if all(k is not None for k in kept):
        return kept  # type: ignore[return-value]
    spec = get_spec(tcfg.arch)
    check_ensemble_recipe(spec, tcfg.hidden_units, tcfg.keep_best_epoch)
    _, parts = tuned_parts(spec, tcfg.weights, tcfg.tune_stages)
    num_classes = len(photos.categories)
    member_files = [store / f"fold{fold}-{part.name}.pt" for part in parts]
    states = [_load(path, "pt") for path in member_files]
    todo = [i for i, st in enumerate(states) if not (isinstance(st, dict) and {"tail", "head"} <= set(st))]
    if todo:  # each member kept as it finishes: an interrupted fold resumes at the next member
        acts = part_activations(photos, [parts[i] for i in todo], tcfg.extraction, device, "teacher")
        xs, y, failed = acts.xs, acts.y, acts.failures
        if failed:
            raise DataError(f"{len(failed)} unreadable photos; run `flowerid check` and remove them first")
        tr, te = (torch.from_numpy(np.flatnonzero(m)) for m in (folds != fold, folds == fold))
        for i, x in zip(todo, xs, strict=True):
            part = parts[i]
            log(f"fold {fold + 1}: teacher {tcfg.preset}, {part.name} ({i + 1}/{len(parts)})")
            part_cfg = HeadConfig(part.num_features, num_classes, tcfg.hidden_units, tcfg.dropout)
            say = lambda s, name=part.name: log(f"  {name}: {s}")  # noqa: E731
            head = fit_tail(part, part_cfg, (x[tr], y[tr]), (x[te], y[te]), tcfg.fit, device, say)[0]
            states[i] = {"tail": part.tail.state_dict(), "head": head}
            buf = io.BytesIO()
            torch.save(states[i], buf)
            atomic_write_bytes(member_files[i], buf.getvalue())
        del xs
    heads = []
    for part, state in zip(parts, states, strict=True):
        part.tail.load_state_dict(state["tail"])
        head = build_head(HeadConfig(part.num_features, num_classes, tcfg.hidden_units, tcfg.dropout))
        head.load_state_dict(state["head"])
        heads.append(head.eval())
    for v, path in enumerate(files):
        if kept[v] is not None:
            continue
        acts = part_activations(photos, parts, tcfg.extraction, device, "teacher", v)
        xs, failed = acts.xs, acts.failures
        if failed:
            raise DataError(f"{len(failed)} photos unreadable in view {v}")
        with torch.no_grad():  # the averaged heads' logits are the members' mean
            logits = torch.stack(
                [h(head_inputs(p.tail, x, device)) for p, h, x in zip(parts, heads, xs, strict=True)]
            ).mean(0)
        kept[v] = logits.numpy().astype(np.float32)
        _save_array(path, kept[v])
        del xs
    return kept  # type: ignore[return-value]


def teacher_recipe(cfg: TrainConfig) -> TrainConfig:
    """The recipe of the teacher trained inside each fold: the preset `cfg.teacher` names, on the student's
    device and engine. DataError for a checkpoint, which has seen the held-out photos."""
    name = teacher_preset(cfg)
    if name is None:
        raise DataError(
            "cross-validation trains the teacher inside each fold: name its preset (teacher='best'), not a "
            "checkpoint, which has seen the held-out photos"
        )
    return TrainConfig.from_preset(name, device=cfg.device, engine=cfg.engine, num_workers=cfg.num_workers)


def distilled_folds(photos: ImageFolder, cfg: TrainConfig, device: str, log: Log) -> Folds:
    """Cross-validating the distilled mode (modes.MODES): the student's views once, then per fold the
    teacher's recipe trained on the fold's training photos (`fold_teacher_logits`) and the student taught
    by its logits on the same views."""
    tcfg = teacher_recipe(cfg)
    _, part = student_part(cfg)
    xs, y, failed, _ = student_views(photos, part, cfg, device, "all", cfg.views)
    head_cfg = HeadConfig(part.num_features, len(photos.categories), cfg.hidden_units, cfg.dropout)

    def held_out(folds: np.ndarray, f: int, fit: Fit) -> list[torch.Tensor]:
        teacher = fold_teacher_logits(photos, tcfg, folds, f, cfg.views, device, log)
        tr, te = (np.flatnonzero(m) for m in (folds != f, folds == f))
        _, part = student_part(cfg)  # every fold starts from the pretrained network
        train = (torch.cat([x[tr] for x in xs]), y[tr].repeat(len(xs)))
        t_tr = torch.from_numpy(np.concatenate([t[tr] for t in teacher]))
        out = fit_tail(part, head_cfg, train, (xs[0][te], y[te]), fit, device, silent, teacher=t_tr)[3]
        right = (teacher[0][te].argmax(1) == y[te].numpy()).mean()
        log(f"fold {f + 1}: its teacher's top-1 {right:.2%} on the photos it did not train on")
        return [out]

    return Folds(y, failed, held_out)
