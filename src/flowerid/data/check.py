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

from PIL import Image

from ..errors import DataError, FlowerIdError, ImageError
from .folders import CATEGORY_NAMES_FILE, SPLITS, category_names_path, find_categories, list_images, load_category_names
from .images import load_image

ERROR, WARNING = "error", "warning"
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
        lines = [f"data: {self.root}", ""]
        width = max([8, *(len(c) for c in self.categories)])
        lines.append(f"  {'category':<{width}}" + "".join(f" {s:>7}" for s in splits))
        for c in self.categories:
            lines.append(f"  {c:<{width}}" + "".join(f" {self.counts[s].get(c, 0):>7}" for s in splits))
        lines.append(f"  {'total':<{width}}" + "".join(f" {sum(self.counts[s].values()):>7}" for s in splits))
        lines.append("")
        for f in self.findings:
            lines.append(f"{f.level}: {f.message}")
            lines += [f"    {p}" for p in f.paths[:_SHOWN]]
            if len(f.paths) > _SHOWN:
                lines.append(f"    … and {len(f.paths) - _SHOWN} more")
        n_err, n_warn = len(self.errors), len(self.warnings)
        verdict = "fix the errors before training" if n_err else "ready to train"
        lines.append(f"check: {n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)}; {verdict}")
        return "\n".join(lines)


def _inspect(info: FileInfo) -> FileInfo:
    """Hash the file's bytes and decode it through the one loader (JPEGs at reduced scale)."""
    try:
        blob = info.path.read_bytes()
    except OSError as exc:
        info.error = f"cannot be read ({exc.strerror or exc})"
        return info
    info.digest = hashlib.sha256(blob).hexdigest()
    try:
        load_image(blob, min_size=32)
        with Image.open(io.BytesIO(blob)) as img:  # the stored size, before any draft scaling
            info.size = img.size
    except ImageError as exc:
        info.error = exc.reason
    except Exception as exc:  # the header re-read cannot fail after a good decode, but never crash a report
        info.error = f"cannot be read ({exc})"
    return info


def check_data(
    data_dir: str | os.PathLike,
    *,
    min_size: int = 64,
    max_imbalance: float = 10.0,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DataReport:
    """Inspect a data folder; structural problems become findings, not exceptions.

    Raises DataError only when `data_dir` is not a folder at all.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    findings: list[Finding] = []
    splits = [s for s in SPLITS if (root / s).is_dir()]
    for s in ("train", "valid"):
        if s not in splits:
            findings.append(Finding(ERROR, f"no {s}/ folder; expected {root}/{s}/<category>/<image files>"))
    files: list[FileInfo] = []
    split_categories: dict[str, list[str]] = {}
    for s in splits:
        cats = find_categories(root / s)
        split_categories[s] = cats
        if not cats:
            findings.append(Finding(ERROR, f"{s}/ has no category folders"))
        empty = []
        for c in cats:
            found = list_images(root / s / c)
            if not found:
                empty.append(f"{s}/{c}")
            files += [FileInfo(s, c, p) for p in found]
        if empty:
            findings.append(Finding(ERROR, f"{len(empty)} empty category folder(s) in {s}/ (no images)", empty))
    train_cats = split_categories.get("train", [])
    for s in splits:
        if s != "train" and train_cats:
            unknown = [f"{s}/{c}" for c in split_categories[s] if c not in train_cats]
            if unknown:
                message = f"categories in {s}/ that train/ lacks: no model can learn them"
                findings.append(Finding(ERROR, message, unknown))

    done = 0
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) + 1)) as pool:
        for _ in pool.map(_inspect, files):  # decoders and hashing release the GIL
            done += 1
            if progress:
                progress(done, len(files))

    categories = train_cats or sorted({f.category for f in files})
    counts = {s: dict.fromkeys(split_categories[s], 0) for s in splits}
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
    tiny = sorted(
        f"{f.path.relative_to(root)} ({f.size[0]}x{f.size[1]})" for f in files if f.size and min(f.size) < min_size
    )
    if tiny:
        findings.append(Finding(WARNING, f"{len(tiny)} tiny image(s), shorter side under {min_size} px", tiny))
    train_counts = {c: n for c, n in counts.get("train", {}).items() if n > 0}
    if len(train_counts) > 1:
        most, least = max(train_counts.values()), min(train_counts.values())
        if most > max_imbalance * least:
            small = sorted(train_counts, key=lambda c: train_counts[c])
            findings.append(
                Finding(
                    WARNING,
                    f"class imbalance: train/ categories range from {least} to {most} images "
                    f"({most / least:.1f}x, over {max_imbalance:g}x); the smallest:",
                    [f"train/{c}: {train_counts[c]}" for c in small],
                )
            )
    names_path = category_names_path(root)
    if names_path is not None:
        try:
            names = load_category_names(names_path)
            missing = [c for c in categories if c not in names]
            if missing:
                findings.append(Finding(WARNING, f"{CATEGORY_NAMES_FILE} has no name for some categories", missing))
        except FlowerIdError as exc:
            findings.append(Finding(WARNING, str(exc)))
    return DataReport(root, categories, counts, unreadable, findings)


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
