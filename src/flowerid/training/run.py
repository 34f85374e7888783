"""`train()`: check the settings and the data, then run the training mode the settings name (modes.MODES).

Modes: frozen (features once, then a head; frozen.py), tuned (the last stages train
with the head on cached activations; tuned.py), full (every layer, for a GPU;
full.py) and distilled (a tuned network learning a teacher's probabilities;
distill.py). Each writes the same self-describing checkpoint (common.finish).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .. import distributed
from .._text import Log, shown
from ..backbones import get_spec
from ..backbones.engines import resolve_device
from ..data.arrange import arrange_hint, labelled_by_names
from ..data.folders import (
    DataSet,
    default_category_names,
    exclude_photos,
    load_category_names,
    load_dataset,
    names_for,
    read_exclude_list,
)
from ..data.layout import describe_split
from ..errors import DataError, UsageError
from .common import Run, TrainResult, silent
from .config import TrainConfig, adapt_to_data
from .modes import MODES, mode_for

__all__ = ["MODES", "TrainConfig", "TrainResult", "mode_for", "train"]


def train(
    data_dir: str | os.PathLike, save_dir: str | os.PathLike, cfg: TrainConfig | None = None, log: Log = print
) -> TrainResult | None:
    """Train a model and write checkpoint.pth and metrics.json into save_dir (the mode: `cfg.mode`).

    Under torchrun every process calls it: they share the work (docs/scaling.md), then the
    main process writes and reports; the others return None.
    """
    cfg = cfg or TrainConfig.from_preset()
    cfg.check()
    t_start = time.perf_counter()
    spec = get_spec(cfg.arch)
    device = resolve_device(cfg.device)
    w = distributed.init(device)
    device = w.device_for(device)
    if not w.is_main:
        log = silent
    data = load_dataset(data_dir, cfg.valid_fraction, cfg.split_seed)
    _check_labelled_by_names(data_dir, data)
    _check_save_dir(Path(save_dir), data)
    if len(data.categories) == 1:
        log(
            f"one category ({shown(data.categories[0])}): every photo will be named that, and only the "
            "unknown-photo score tells other things apart; train on two or more category folders for a classifier"
        )
    if cfg.exclude:
        data, left_out, unknown = exclude_photos(data, read_exclude_list(cfg.exclude))
        log(f"left out {left_out} photo{'s' * (left_out != 1)} listed in {cfg.exclude}")
        if unknown:
            log(f"{len(unknown)} listed path(s) match no photo in {data_dir} and were ignored, e.g. {unknown[0]}")
    if data.layout is not None and not data.layout.flat and data.layout.train.name != "train":
        log(f"layout: {data.layout.describe()}")
    if data.split is not None:
        log(describe_split(data.split))
    cfg, changes = adapt_to_data(cfg, list(data.train.counts().values()))
    for change in changes:
        log(f"small or unbalanced set: {change} (docs/presets.md; --no-adapt keeps the preset as it is)")
    mapping = load_category_names(cfg.category_names) if cfg.category_names else default_category_names(data_dir)
    names = names_for(data.categories, mapping)
    if mapping and not any(names):
        where = cfg.category_names or "the data folder's cat_to_name.json"
        log(f"warning: {shown(where)} names none of the {len(names)} categories (its keys are other ones); no names")
    log(
        f"data: {len(data.train.samples)} train, {len(data.valid.samples)} valid"
        + (f", {len(data.test.samples)} test" if data.test else "")
        + f" images in {len(data.categories)} categories; backbone {spec.name} on {device}"
    )
    run = Run(data, data_dir, Path(save_dir), cfg, names, device, log, t_start)
    return mode_for(cfg.mode).train(run)


def _check_save_dir(save_dir: Path, data: DataSet) -> None:
    """The run's files must not land among the photos it reads (a curves.png read as a photo next time, a
    run/ folder read as a category); and a save folder that cannot be made fails now, not after the work."""
    layout = data.layout
    read = (
        []
        if layout is None
        else [layout.root]
        if layout.flat
        else [p for p in (layout.train, layout.valid, layout.test) if p]
    )
    target = Path(os.path.realpath(save_dir))
    for folder in read:
        if target.is_relative_to(os.path.realpath(folder)):
            raise UsageError(
                f"{shown(save_dir)} is inside {shown(folder)}, whose photos train reads: its files would be read "
                "as photos next time; choose a folder outside it",
                setting="save_dir",
            )
    save_dir.mkdir(parents=True, exist_ok=True)


def _check_labelled_by_names(data_dir: str | os.PathLike, data: DataSet) -> None:
    """A data set read as one category per split-like folder (Kaggle's `train/cat.1.jpg`, `test1/`), or as
    one category, whose file names carry the labels: refused, with the command that lays it out."""
    folders: dict[str, list[Path]] = {c: [] for c in data.categories}
    for split in (data.train, data.valid):
        for path, target in split.samples:
            folders[data.categories[target]].append(path)
    found = labelled_by_names(folders)
    if found:
        raise DataError(
            f"{data_dir} is read as categories {', '.join(map(repr, data.categories[:3]))}, but "
            + arrange_hint(data_dir, *found)
            + ", then train on NEW_FOLDER"
        )
