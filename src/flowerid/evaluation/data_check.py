"""`check --deep` on a folder: features and thumbnails of its photos, the findings, issues.csv and review.html.

The algorithms live in `data/deep_check.py` and take arrays; this module reaches into the backbones
for the features (through the cache) and writes the files, so `data/` stays below `backbones/`.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .._io import atomic_write_bytes
from ..data.deep_check import (
    CSV_COLUMNS,
    ISSUES_FILE,
    REVIEW_FILE,
    THUMB,
    Findings,
    Issue,
    Photos,
    find_issues,
)
from ..data.images import load_image
from ..errors import DataError, ImageError


def thumbnail(path: str | os.PathLike) -> np.ndarray:
    """(2, THUMB, THUMB) uint8: the photo in grey, squashed to a square, whole and with 5% off each side."""
    img = load_image(path, min_size=2 * THUMB).convert("L")
    w, h = img.size
    dx, dy = 0.05 * w, 0.05 * h
    whole = img.resize((THUMB, THUMB), 2)  # bilinear
    inner = img.resize((THUMB, THUMB), 2, box=(dx, dy, w - dx, h - dy))
    return np.stack([np.asarray(whole), np.asarray(inner)])


def thumbnails(paths: Sequence[Path], workers: int | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Thumbnails of every photo (zeros for unreadable ones) and the unreadable ones' reasons."""
    out = np.zeros((len(paths), 2, THUMB, THUMB), dtype=np.uint8)
    failed: dict[int, str] = {}

    def one(i: int) -> None:
        try:
            out[i] = thumbnail(paths[i])
        except ImageError as exc:
            failed[i] = exc.reason

    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) + 1)) as pool:
        list(pool.map(one, range(len(paths))))  # JPEG decoding releases the GIL
    return out, failed


def write_issues_csv(path: str | os.PathLike, issues: Sequence[Issue]) -> Path:
    """issues.csv: one row per finding, columns CSV_COLUMNS, written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)  # Python 3.11 leaves a bare \r unquoted
    w.writerow(CSV_COLUMNS)
    for i in issues:
        row = [i.path, i.kind, i.given, i.suggested, f"{i.score:.4f}", i.other]
        (quoted if any("\r" in f for f in row) else w).writerow(row)
    return atomic_write_bytes(path, buf.getvalue().encode("utf-8", "surrogateescape"))


def gather(
    data_dir: str | os.PathLike, arch: str, *, device: str = "auto", engine: str = "auto", use_cache: bool = True
) -> Photos:
    """Features (from the cache where present) and thumbnails of the train and valid photos.

    Unreadable photos are left out here; the plain check lists them.
    """
    from ..backbones import get_spec
    from ..backbones.engines import load_backbone, resolve_device
    from ..backbones.features import extract_features
    from ..data.folders import load_dataset

    data = load_dataset(data_dir)
    splits = [("train", data.train), ("valid", data.valid)]
    paths = [p for _, s in splits for p in s.paths]
    names = [name for name, s in splits for _ in s.paths]
    labels = np.array([t for _, s in splits for t in s.targets], dtype=np.int64)
    backbone = load_backbone(get_spec(arch), resolve_device(device), None, engine)
    ex = extract_features(paths, backbone, use_cache=use_cache, desc="features")
    thumbs, failed = thumbnails(paths)
    keep = np.flatnonzero(ex.ok & ~np.isin(np.arange(len(paths)), list(failed)))
    if len(keep) < 3:
        raise DataError(f"{data.root}: fewer than 3 readable photos in train/ and valid/; nothing to compare")
    rel = [str(p.relative_to(data.root)) if p.is_relative_to(data.root) else str(p) for p in paths]
    return Photos(
        [rel[i] for i in keep],
        [names[i] for i in keep],
        labels[keep],
        ex.features[keep],
        thumbs[keep],
        list(data.categories),
    )


def run_deep_check(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    arch: str,
    *,
    device: str = "auto",
    engine: str = "auto",
    use_cache: bool = True,
    folds: int = 5,
    seed: int = 0,
    names: dict[str, str] | None = None,
) -> tuple[Findings, Path, Path]:
    """Gather, find, and write OUT_DIR/issues.csv and OUT_DIR/review.html; returns them with the findings."""
    from tqdm.auto import tqdm

    from .review import render_review

    stages = ["features and thumbnails", "near-duplicates", "outliers", "wrong labels", "review page"]
    seconds: dict[str, float] = {}
    clock = [stages[0], time.perf_counter()]
    with tqdm(total=len(stages), desc="deep check", unit="step", disable=None, leave=False) as bar:

        def step(name: str) -> None:
            now = time.perf_counter()
            seconds[str(clock[0])] = now - float(clock[1])
            clock[:] = [name, now]
            bar.set_postfix_str(name)
            bar.update(1)

        bar.set_postfix_str(stages[0])
        photos = gather(data_dir, arch, device=device, engine=engine, use_cache=use_cache)
        findings = find_issues(photos, folds=folds, seed=seed, step=step)
        step(stages[-1])
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        csv_path = write_issues_csv(out / ISSUES_FILE, findings.issues)
        html = render_review(Path(data_dir), photos, findings, names or {})
        html_path = atomic_write_bytes(out / REVIEW_FILE, html.encode("utf-8", "replace"))  # names are only shown
        seconds[stages[-1]] = time.perf_counter() - float(clock[1])
        bar.update(bar.total - bar.n)
    findings.seconds = seconds
    return findings, csv_path, html_path
