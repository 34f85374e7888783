"""`flowerid add`: new categories, or more photos of old ones, into a trained checkpoint without retraining.

NEWDATA holds one folder of photos per category (`cat_to_name.json` beside them optional). A folder
named like an existing category corrects it (its photos join that category's statistics); any
other adds a category. The photos go through the checkpoint's own (possibly tuned) network, the
stored per-category statistics (model/class_stats.py) take them in, and the head's rows for those
categories are fitted beside the untouched old ones (model/teach.py). The unknown-photo detector
learns the new categories' means. The result is an ordinary checkpoint, written atomically, whose
"additions" record says what was added, from how many photos, when.
"""

from __future__ import annotations

import os
import shutil
import time
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write, file_sha256
from .._text import Log, shown
from .._version import __version__
from ..data.folders import (
    CATEGORY_NAMES_FILE,
    default_category_names,
    find_categories,
    list_images,
    names_for,
    same_name,
)
from ..data.layout import find_layout
from ..errors import CheckpointError, DataError
from .checkpoint import load_checkpoint, save_checkpoint
from .class_stats import ClassStats, last_layer_inputs
from .head import HeadConfig, linear_layers
from .predictor import NumpyHead
from .teach import DEFAULT_METHOD, HELD_OUT_MIN, LIFT_MAX, METHODS, Rows, fit_rows, held_out_folds, known_offsets
from .unknown import UnknownDetector

NO_STATS = (
    "{where} has no per-category statistics (it was trained before flowerid could add categories); "
    "retrain it with `flowerid train` (same data and preset) to get them, then add"
)


@dataclass
class Group:
    """One NEWDATA folder: its category, display name, photos, and whether the model already has it."""

    category: str
    name: str | None
    paths: list[Path]
    existing: bool


@dataclass
class AddResult:
    path: Path
    added: dict[str, int]  # new category: photos used
    corrected: dict[str, int]  # existing category: photos added
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable photo: why
    seconds: float = 0.0


def _norm(text: str | None) -> str:
    """A name as a person reads it: one composition of accents (a Mac writes 'é' as e + accent), full-width
    letters as plain ones, no case, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text or "").split()).casefold()


def _category_folders(root: Path, log: Log) -> dict[str, list[Path]]:
    """Each category's folders in NEWDATA: one folder per category, or a training data folder's train and
    valid splits (any layout `train` recognises; test/ is left alone, for measuring)."""
    layout = find_layout(root)
    if not layout.flat:
        log(f"{root} is laid out for training ({layout.describe()}): teaching its train and valid photos")
    # Not layout.train when flat: a lone category folder with folders inside is that category, not a root.
    splits = [root] if layout.flat else [p for p in (layout.train, layout.valid) if p is not None]
    folders: dict[str, list[Path]] = {}
    for split in splits:
        for cat in find_categories(split):
            folders.setdefault(cat, []).append(split / cat)
    return folders


def read_new_data(
    folder: str | os.PathLike, categories: list[str], names: list[str | None], log: Log = lambda _: None
) -> list[Group]:
    """NEWDATA's category folders, checked: none empty, no new name that is an old category's under another id."""
    root = Path(folder)
    if not root.is_dir() or not find_categories(root):
        what = "is not a folder" if not root.is_dir() else "has no category folders"
        raise DataError(f"{root} {what}; expected {root}/<category>/<photos>")
    found: dict[str, list[Path]] = {}
    for cat, where in _category_folders(root, log).items():
        found.setdefault(same_name(cat), []).extend(where)
    mapping = default_category_names(root, *{p.parent for ps in found.values() for p in ps}) or {}
    index = {c: i for i, c in enumerate(categories)}
    # A folder copied through a Mac spells 'rosé' in another composition than the model's category: the same one.
    same = {same_name(c): c for c in categories}
    owner = {_norm(c): c for c in categories} | {_norm(n): c for c, n in zip(categories, names, strict=True) if n}
    groups = []
    for cat, where in found.items():
        paths = [p for d in where for p in list_images(d)]
        if not paths:
            shown = " and ".join(str(d) for d in where)
            raise DataError(f"{shown} holds no photos; put the category's photos in it or remove it")
        name = names_for([cat], mapping)[0]
        cat = same.get(cat, cat)
        if cat in index:
            old = names[index[cat]]
            if name and old and _norm(name) != _norm(old):
                raise DataError(
                    f"{root / CATEGORY_NAMES_FILE} names category {cat} {name!r}, but the model calls it {old!r}"
                )
            groups.append(Group(cat, old, paths, True))
            continue
        for label in (cat, name):
            if label and _norm(label) in owner:
                other = owner[_norm(label)]
                raise DataError(
                    f"new category {cat!r} ({label!r}) clashes with existing category {other!r}; put its photos "
                    f"in a folder named {other!r} to correct that one, or choose another name"
                )
        groups.append(Group(cat, name or None, paths, False))
    return groups


@dataclass
class _Taught:
    """What teaching some groups to a head gives: the categories, their statistics and the head's last layer."""

    categories: list[str]
    names: list[str | None]
    stats: ClassStats
    unit_means: list[np.ndarray]
    free: list[int]
    rows: Rows


def _teach(
    base: ClassStats,
    layers: list[tuple[np.ndarray, np.ndarray]],
    categories: list[str],
    names: list[str | None],
    unit_means: list[np.ndarray] | None,
    groups: list[tuple[Group, np.ndarray]],
    method: str,
    seed: int,
) -> _Taught:
    """Each group's photos (head inputs) into the statistics, the free rows fitted beside the fixed ones.

    `unit_means`: the unknown-photo detector's class means, or None for a checkpoint without a detector.
    """
    categories, names = list(categories), list(names)
    means = list(unit_means or [])
    stats, free, photos = base, [], {}
    for group, raw in groups:
        idx = categories.index(group.category) if group.existing else len(categories)
        z = last_layer_inputs(layers, raw)
        current = means[idx] if unit_means is not None and group.existing else None
        stats, unit_mean = stats.with_photos(idx, z, raw, current)
        if not group.existing:
            categories.append(group.category)
            names.append(group.name)
            means.append(unit_mean)
            photos[idx] = z
        elif unit_means is not None:
            means[idx] = unit_mean
        free.append(idx)
    rows = fit_rows(layers[-1][0].T, layers[-1][1], stats, free, method, seed, photos)
    return _Taught(categories, names, stats, means, free, rows)


def _held_out_lift(
    base: ClassStats,
    layers: list[tuple[np.ndarray, np.ndarray]],
    ckpt: dict[str, Any],
    det: UnknownDetector,
    groups: list[tuple[Group, np.ndarray]],
    method: str,
    seed: int,
) -> tuple[float, list[int]]:
    """How much more the new categories' offsets must take back so that their photos it was not taught
    are called known as often as the threshold calls the old categories' valid photos; and their rows.

    The new categories' photos are split into folds (teach.held_out_folds); each fold is taught without
    its photos, which are then scored as `predict` scores them (`det`'s offsets, the fold's class means).
    The lift puts the accept-rate quantile of those scores on the threshold, within [0, LIFT_MAX].
    """
    n_old = len(ckpt["categories"])
    new_groups = [i for i, (g, _) in enumerate(groups) if not g.existing]
    folds = held_out_folds([len(groups[i][1]) for i in new_groups])
    if folds < 2:
        return 0.0, []
    held_groups = [i for i in new_groups if len(groups[i][1]) >= HELD_OUT_MIN]
    scores, unit_means = [], list(det.means)
    for fold in range(folds):
        kept, held = [], []
        for i, (g, raw) in enumerate(groups):
            out = np.arange(len(raw)) % folds == fold if i in held_groups else np.zeros(len(raw), dtype=bool)
            kept.append((g, raw[~out]))
            held.append(raw[out])
        t = _teach(base, layers, ckpt["categories"], ckpt["names"], unit_means, kept, method, seed + 1 + fold)
        x = np.vstack(held)
        if len(x):
            logits = last_layer_inputs(layers, x) @ t.rows.weight.T + t.rows.bias
            scores.append(replace(det, means=np.asarray(t.unit_means, dtype=np.float32)).score(x, logits))
    lift = np.quantile(np.concatenate(scores), det.accept_rate) - det.threshold
    return float(np.clip(lift, 0.0, LIFT_MAX)), [n_old + new_groups.index(i) for i in held_groups]


def extend_checkpoint(
    ckpt: dict[str, Any],
    groups: list[tuple[Group, np.ndarray]],
    method: str = DEFAULT_METHOD,
    seed: int = 0,
    where: str = "checkpoint",
) -> dict[str, Any]:
    """The checkpoint with each group's photos (their head-input features) taught to it; `ckpt` is not changed."""
    head_cfg = HeadConfig.from_dict(ckpt["head"]["config"])
    state = ckpt["head"]["state_dict"]
    layers = NumpyHead(head_cfg, state).layers
    last = linear_layers(state)[-1]
    if ckpt.get("class_stats") is None:
        raise CheckpointError(NO_STATS.format(where=where))
    base = ClassStats.from_state(ckpt["class_stats"], len(ckpt["categories"]), layers[-1][0].shape[0], where)
    det = UnknownDetector.of_checkpoint(ckpt)
    means = None if det is None else list(det.means)
    t = _teach(base, layers, ckpt["categories"], ckpt["names"], means, groups, method, seed)
    new_state = dict(state)
    new_state[f"{last}.weight"] = t.rows.weight.astype(np.float32)
    new_state[f"{last}.bias"] = t.rows.bias.astype(np.float32)
    out = dict(ckpt)
    out["head"] = {"config": replace(head_cfg, num_classes=len(t.categories)).to_dict(), "state_dict": new_state}
    out.update(categories=t.categories, names=t.names, class_to_idx={c: i for i, c in enumerate(t.categories)})
    out["class_stats"] = t.stats.to_state()
    if det is not None:
        new_rows = [i for i in t.free if i >= len(ckpt["categories"])]
        old = np.zeros(len(ckpt["categories"])) if det.offsets is None else det.offsets
        offsets = known_offsets(t.rows, t.stats, det.near_z, old, new_rows, seed)
        det = replace(det, means=np.asarray(t.unit_means, dtype=np.float32), offsets=offsets)
        lift, lifted = _held_out_lift(base, layers, ckpt, det, groups, method, seed)
        offsets[lifted] += lift
        out["unknown"] = replace(det, offsets=offsets).to_state()
    return out


def _record(groups: list[tuple[Group, np.ndarray]], method: str, source: Path, skipped: int) -> dict[str, Any]:
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "flowerid_version": __version__,
        "method": method,
        "from": str(source.resolve()),
        "added": {g.category: len(x) for g, x in groups if not g.existing},
        "corrected": {g.category: len(x) for g, x in groups if g.existing},
        "skipped": skipped,
    }


def _keep_backbone_beside(ckpt: dict[str, Any], out: Path) -> None:
    """A tuned backbone lives beside its checkpoint: copy it beside the new one (under a name that is its digest)."""
    weights = ckpt["backbone"].get("weights_path")
    if not weights:
        return
    src = Path(weights)
    if src.resolve().parent == out.resolve().parent:
        ckpt["backbone"]["weights_path"] = src.name
        return
    dest = out.parent / f"backbone-{str(ckpt['backbone']['weights_digest'])[:16]}.pth"
    if not (dest.exists() and file_sha256(dest) == ckpt["backbone"]["weights_digest"]):
        with open(src, "rb") as f:
            atomic_write(dest, lambda g: shutil.copyfileobj(f, g))
    ckpt["backbone"]["weights_path"] = dest.name


def add(
    checkpoint: str | os.PathLike,
    new_data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    method: str = DEFAULT_METHOD,
    device: str = "auto",
    engine: str = "auto",
    num_workers: int | None = None,
    log: Log = print,
) -> AddResult:
    """Teach `checkpoint` the categories in `new_data`; write the result to `out` (a file, or a folder for
    out/checkpoint.pth). Unreadable photos are skipped and reported; a folder with none readable is an error."""
    from ..backbones.features import extract_features
    from .predictor import Classifier

    t0 = time.perf_counter()
    if method not in METHODS:
        raise DataError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if method == "imprint":
        log(
            "warning: imprint sets the new rows from the head alone and takes most old photos to the new "
            "categories (docs/teach.md: old species fall to 0-1%); refit, the default, keeps them"
        )
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("class_stats") is None:
        raise CheckpointError(NO_STATS.format(where=checkpoint))
    groups = read_new_data(new_data, ckpt["categories"], ckpt["names"], log)
    out = Path(out)
    if out.is_dir():
        out = out / "checkpoint.pth"
    clf = Classifier(ckpt, device, engine=engine)
    paths = [p for g in groups for p in g.paths]
    ex = extract_features(paths, clf.backbone, num_workers=num_workers, use_cache=False, desc="new photos")
    skipped = {str(paths[i]): reason for i, reason in ex.failures.items()}
    taught, start = [], 0
    for g in groups:
        ok = ex.ok[start : start + len(g.paths)]
        if not ok.any():
            raise DataError(f"none of the {len(g.paths)} photos in {Path(new_data) / g.category} could be read")
        taught.append((g, ex.features[start : start + len(g.paths)][ok]))
        start += len(g.paths)
    new = extend_checkpoint(ckpt, taught, method, where=str(checkpoint))
    new["additions"] = [*(ckpt.get("additions") or []), _record(taught, method, Path(new_data), len(skipped))]
    new["backbone"] = dict(new["backbone"])
    _keep_backbone_beside(new, out)
    path = save_checkpoint(new, out)
    result = AddResult(path, new["additions"][-1]["added"], new["additions"][-1]["corrected"], skipped)
    result.seconds = time.perf_counter() - t0
    for p, why in list(skipped.items())[:5]:
        log(f"skipped {shown(p)}: {shown(why)}")
    log(
        f"added {len(result.added)} categor{'y' if len(result.added) == 1 else 'ies'}, corrected "
        f"{len(result.corrected)}, from {sum(len(x) for _, x in taught)} photos"
        + (f" ({len(skipped)} unreadable, skipped)" if skipped else "")
        + f"; saved {path} ({result.seconds:.1f}s)"
    )
    return result
