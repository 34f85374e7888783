"""`flowerid check DATA_DIR`: a data report that finds what would make training wrong.

It reads every photo once (decoded through the one image loader, at reduced
scale where the format allows) and reports counts per split and category,
unreadable files, exact duplicates within and across splits (leakage), tiny
images and class imbalance. Errors make training wrong or impossible; warnings
are worth a look.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._text import shown
from ..errors import DataError, FlowerIdError, ImageError
from .arrange import arrange_hint, labelled_by_names
from .folders import (
    CATEGORY_NAMES_FILE,
    SPLITS,
    category_names_path,
    find_categories,
    list_images,
    load_category_names,
    same_name,
)
from .images import load_image
from .layout import VALID_FRACTION, find_layout, hold_out, not_a_folder

ERROR, WARNING, NOTE = "error", "warning", "note"
NEAR_BITS = 4  # both difference hashes this close (of 64 bits each): the same picture, resized or re-encoded
FEW_PHOTOS = 10  # a category with fewer photos than this is warned about
_SHOWN = 5  # examples listed per finding in the text report


@dataclass
class Finding:
    level: str  # ERROR or WARNING
    message: str
    paths: list[str] = field(default_factory=list)


@dataclass
class FileInfo:
    split: str
    category: str
    path: Path
    digest: str = ""
    size: tuple[int, int] | None = None
    error: str = ""
    dhash: tuple[int, int] | None = None  # 64-bit difference hashes across and down (near copies: a few bits apart)


@dataclass
class DataReport:
    root: Path
    categories: list[str]
    counts: dict[str, dict[str, int]]  # split -> category -> readable images
    unreadable: dict[str, str]  # path -> reason
    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == WARNING]

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.root),
            "categories": self.categories,
            "counts": self.counts,
            "unreadable": self.unreadable,
            "findings": [{"level": f.level, "message": f.message, "paths": f.paths} for f in self.findings],
            "ok": not self.errors,
        }

    def format(self) -> str:
        splits = list(self.counts)
        lines = [f"data: {shown(self.root)}", ""]
        width = max([8, *(len(shown(c)) for c in self.categories)])
        lines.append(f"  {'category':<{width}}" + "".join(f" {s:>7}" for s in splits))
        for c in self.categories:
            lines.append(f"  {shown(c):<{width}}" + "".join(f" {self.counts[s].get(c, 0):>7}" for s in splits))
        lines.append(f"  {'total':<{width}}" + "".join(f" {sum(self.counts[s].values()):>7}" for s in splits))
        lines.append("")
        for f in self.findings:
            lines.append(f"{f.level}: {shown(f.message)}")
            lines += [f"    {shown(p)}" for p in f.paths[:_SHOWN]]
            if len(f.paths) > _SHOWN:
                lines.append(f"    … and {len(f.paths) - _SHOWN} more")
        n_err, n_warn = len(self.errors), len(self.warnings)
        verdict = "fix the errors before training" if n_err else "ready to train"
        lines.append(f"check: {n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)}; {verdict}")
        return "\n".join(lines)


def dhash(img: Image.Image) -> tuple[int, int]:
    """Difference hashes across and down: whether each cell of a 9x8 (and an 8x9) greyscale thumbnail is
    brighter than its right (lower) neighbour. A resized, re-encoded or slightly edited copy stays within a few
    bits of both; two different photos rarely come close in both at once."""
    grey = img.convert("L")
    across = np.asarray(grey.resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    down = np.asarray(grey.resize((8, 9), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = ((across[:, 1:] > across[:, :-1]).ravel(), (down[1:, :] > down[:-1, :]).ravel())
    return int(np.packbits(bits[0]).view(">u8")[0]), int(np.packbits(bits[1]).view(">u8")[0])


def _inspect(info: FileInfo) -> FileInfo:
    """Hash the file's bytes and decode it through the one loader (JPEGs at reduced scale)."""
    try:
        blob = info.path.read_bytes()
    except OSError as exc:
        info.error = f"cannot be read ({exc.strerror or exc})"
        return info
    info.digest = hashlib.sha256(blob).hexdigest()
    try:
        info.dhash = dhash(load_image(blob, min_size=32))
        with Image.open(io.BytesIO(blob)) as img:  # the stored size, before any draft scaling
            info.size = img.size
    except ImageError as exc:
        info.error = exc.reason
    except Exception as exc:  # the header re-read cannot fail after a good decode, but never crash a report
        info.error = f"cannot be read ({exc})"
    return info


def _gather(root: Path, findings: list[Finding], valid_fraction: float) -> tuple[list[FileInfo], dict[str, list[str]]]:
    """Every photo with the split it is in (or that train would hold it out into), and each split's categories."""
    try:
        layout = find_layout(root)
    except DataError as exc:
        findings.append(Finding(ERROR, str(exc)))
        return [], {}
    folders = {"train": layout.train, "valid": layout.valid, "test": layout.test}
    files: list[FileInfo] = []
    split_categories: dict[str, list[str]] = {}
    for s, folder in folders.items():
        if folder is None:
            continue
        label = "." if folder == layout.root else folder.name
        cats = find_categories(folder)
        split_categories[s] = cats
        if not cats:
            findings.append(Finding(ERROR, f"{label}/ has no category folders"))
        empty = []
        for c in cats:
            found = list_images(folder / c)
            if not found:
                empty.append(f"{label}/{c}")
            files += [FileInfo(s, c, p) for p in found]
        if empty:
            findings.append(Finding(ERROR, f"{len(empty)} empty category folder(s) in {label}/ (no images)", empty))
    if layout.valid is None and split_categories.get("train"):
        where = "the category folders" if layout.flat else f"{layout.train.name}/"
        _hold_out(layout.train, where, files, split_categories, findings, valid_fraction)
    return files, split_categories


def _hold_out(
    source: Path,
    where: str,
    files: list[FileInfo],
    split_categories: dict[str, list[str]],
    findings: list[Finding],
    fraction: float,
) -> None:
    """Mark the photos train would hold out as valid; categories too small to split are errors."""
    cats = split_categories["train"]
    train = [f for f in files if f.split == "train"]
    index = {c: i for i, c in enumerate(cats)}
    by_path = {f.path: f for f in train}
    try:
        _, held, record = hold_out([(f.path, index[f.category]) for f in train], cats, source, fraction)
    except DataError as exc:
        findings.append(Finding(ERROR, str(exc)))
        return
    for path, _ in held:
        by_path[path].split = "valid"
    split_categories["valid"] = cats
    findings.append(
        Finding(
            NOTE,
            f"no valid folder: train holds out {fraction:.0%} of each category of {where} as valid "
            f"({record['valid']} photos, the same ones every run; --valid-fraction changes the share)",
        )
    )


def check_data(
    data_dir: str | os.PathLike,
    *,
    min_size: int = 64,
    max_imbalance: float = 10.0,
    valid_fraction: float = VALID_FRACTION,
    train_rule: tuple[int, int] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DataReport:
    """Inspect a data folder in any layout train reads; structural problems become findings, not exceptions.

    With no valid folder, the photos train would hold out (`valid_fraction` of each category) count as valid,
    so a copy of a photo on both sides of that split is reported as the leak it would be. `train_rule`:
    (least optimiser steps of a frozen head, training photos from which it tunes) of train's adapting, to say
    what train does about few photos and imbalance (the CLI passes training.config's; data/ does not import
    training/).
    Raises DataError only when `data_dir` is not a folder at all.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise not_a_folder(root)
    findings: list[Finding] = []
    files, split_categories = _gather(root, findings, valid_fraction)
    train_cats = split_categories.get("train", [])
    train_names = {same_name(c) for c in train_cats}
    for s, cats in split_categories.items():
        unknown = [f"{s}/{c}" for c in cats if same_name(c) not in train_names]
        twice = [f"{s}/{c}" for c in cats if sum(same_name(o) == same_name(c) for o in cats) > 1]
        if twice:
            findings.append(
                Finding(
                    WARNING, f"folders in {s or '.'}/ that spell one name two ways (Unicode); train joins them", twice
                )
            )
        if s != "train" and train_cats and unknown:
            findings.append(Finding(ERROR, f"categories in {s}/ that train/ lacks: no model can learn them", unknown))
    done = 0
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) + 1)) as pool:
        for _ in pool.map(_inspect, files):  # decoders and hashing release the GIL
            done += 1
            if progress:
                progress(done, len(files))

    categories = train_cats or sorted({f.category for f in files})
    by_category: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        if f.split in ("train", "valid", ""):
            by_category[f.category].append(f.path)
    found = labelled_by_names(dict(by_category))
    if found:
        findings.append(Finding(ERROR, f"{root} is read as categories, but " + arrange_hint(root, *found), [found[0]]))
    counts = {s: dict.fromkeys(split_categories[s], 0) for s in SPLITS if s in split_categories}
    unreadable = {str(f.path): f.error for f in files if f.error}
    for f in files:
        if not f.error:
            counts[f.split][f.category] += 1
    if unreadable:
        findings.append(
            Finding(
                WARNING,
                f"{len(unreadable)} unreadable file(s); training skips them",
                [f"{p}: {r}" for p, r in sorted(unreadable.items())],
            )
        )
    lost = [f"train/{c}" for c, n in counts.get("train", {}).items() if n == 0 and f"train/{c}" not in _flat(findings)]
    if lost:
        findings.append(Finding(ERROR, "train/ categories with no readable image", lost))
    findings += _duplicates(files, root)
    findings += _near_duplicates(files, root)
    tiny = sorted(
        f"{f.path.relative_to(root)} ({f.size[0]}x{f.size[1]})" for f in files if f.size and min(f.size) < min_size
    )
    if tiny:
        findings.append(Finding(WARNING, f"{len(tiny)} tiny image(s), shorter side under {min_size} px", tiny))
    findings += _small_and_unbalanced(counts, max_imbalance, train_rule)
    names_path = category_names_path(root)
    if names_path is not None:
        try:
            names = load_category_names(names_path)
            spelt = {same_name(k) for k in names}
            missing = [c for c in categories if c not in names and same_name(c) not in spelt]
            if missing:
                findings.append(Finding(WARNING, f"{CATEGORY_NAMES_FILE} has no name for some categories", missing))
            findings += _shared_names(categories, names)
        except FlowerIdError as exc:
            findings.append(Finding(WARNING, str(exc)))
    return DataReport(root, categories, counts, unreadable, findings)


def _shared_names(categories: list[str], names: dict[str, str]) -> list[Finding]:
    """Categories whose display names are the same (ignoring case and spaces around): predict would show that
    name for each, and the user could not tell which category a photo was put in."""
    by_name: dict[str, list[str]] = {}
    for c in categories:
        if names.get(c, "").strip():
            by_name.setdefault(names[c].strip().casefold(), []).append(c)
    shared = [f"{names[ids[0]].strip()}: {', '.join(ids)}" for ids in by_name.values() if len(ids) > 1]
    if not shared:
        return []
    return [
        Finding(
            WARNING,
            f"{CATEGORY_NAMES_FILE} gives {len(shared)} name(s) to more than one category: predictions would not "
            "say which one; give each its own name",
            sorted(shared),
        )
    ]


def _small_and_unbalanced(
    counts: dict[str, dict[str, int]], max_imbalance: float, rule: tuple[int, int] | None
) -> list[Finding]:
    """Categories with few photos and a large imbalance: what will hurt, and (with train's `rule`: the least
    optimiser steps of a frozen backbone's head, and the training photos from which it tunes) what train does."""
    out = []
    train = {c: n for c, n in counts.get("train", {}).items() if n > 0}
    total = {c: n + counts.get("valid", {}).get(c, 0) for c, n in train.items()}
    few = sorted((c for c, n in total.items() if n < FEW_PHOTOS), key=lambda c: (total[c], c))
    if few:
        does = ""
        if rule:
            does = (
                f"; with fewer than {rule[1]} training photos in all, train keeps the backbone frozen and takes at "
                f"least {rule[0]} optimiser steps (smaller batches, more epochs)"
            )
        out.append(
            Finding(
                WARNING,
                f"{len(few)} categor{'y has' if len(few) == 1 else 'ies have'} under {FEW_PHOTOS} photos (train and "
                f"valid together): expect a rough model and a noisy valid figure for them{does}",
                [f"{c}: {total[c]}" for c in few],
            )
        )
    if len(train) > 1:
        most, least = max(train.values()), min(train.values())
        if most > max_imbalance * least:
            does = (
                "; train keeps the plain loss, which scores best on top-1; --balance-classes weighs every category "
                "alike, for better accuracy on the small ones at some cost in top-1 (docs/presets.md)"
                if rule
                else ""
            )
            out.append(
                Finding(
                    WARNING,
                    f"class imbalance: train categories range from {least} to {most} images ({most / least:.1f}x, "
                    f"over {max_imbalance:g}x){does}; the smallest:",
                    [f"train/{c}: {train[c]}" for c in sorted(train, key=lambda c: (train[c], c))],
                )
            )
    return out


def _flat(findings: list[Finding]) -> set[str]:
    return {p for f in findings for p in f.paths}


def _duplicates(files: list[FileInfo], root: Path) -> list[Finding]:
    """Exact byte-for-byte copies: across splits (leakage), across labels, and plain repeats."""
    groups: dict[str, list[FileInfo]] = defaultdict(list)
    for f in files:
        if f.digest and not f.error:  # two copies of one broken download are not leakage
            groups[f.digest].append(f)
    leak, conflict, repeat = [], [], []
    for group in groups.values():
        if len(group) < 2:
            continue
        where = " = ".join(str(f.path.relative_to(root)) for f in group)
        if len({f.split for f in group}) > 1:
            leak.append(where)
        elif len({f.category for f in group}) > 1:
            conflict.append(where)
        else:
            repeat.append(where)
    out = []
    if leak:
        out.append(
            Finding(ERROR, f"{len(leak)} image(s) in more than one split: validation scores would be inflated", leak)
        )
    if conflict:
        out.append(Finding(ERROR, f"{len(conflict)} image(s) filed under two categories of one split", conflict))
    if repeat:
        out.append(Finding(WARNING, f"{len(repeat)} image(s) repeated within one category", repeat))
    return out


def _near_duplicates(files: list[FileInfo], root: Path) -> list[Finding]:
    """Photos in two splits whose difference hashes are within NEAR_BITS but whose bytes differ (a resized or
    re-encoded copy): the leak that comparing file digests misses."""
    by_split: dict[str, list[FileInfo]] = defaultdict(list)
    for f in files:
        if f.dhash is not None and not f.error:
            by_split[f.split].append(f)
    pairs = []
    splits = sorted(by_split)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            ha = np.array([f.dhash for f in by_split[a]], dtype=np.uint64).reshape(-1, 2)
            hb = np.array([f.dhash for f in by_split[b]], dtype=np.uint64).reshape(-1, 2)
            for start in range(0, len(ha), 512):
                bits = np.bitwise_count(ha[start : start + 512, None, :] ^ hb[None, :, :])
                close = (bits <= NEAR_BITS).all(axis=2)
                for r, c in zip(*np.nonzero(close), strict=True):
                    fa, fb = by_split[a][start + int(r)], by_split[b][int(c)]
                    if fa.digest != fb.digest:  # exact copies are reported by _duplicates
                        labels = " (two categories)" if fa.category != fb.category else ""
                        pairs.append(f"{fa.path.relative_to(root)} ~ {fb.path.relative_to(root)}{labels}")
    if not pairs:
        return []
    return [
        Finding(
            WARNING,
            f"{len(pairs)} near-duplicate pair(s) across splits (the same picture resized or re-encoded): "
            "valid scores would be inflated; remove one of each (check --deep compares features too)",
            sorted(pairs),
        )
    ]
