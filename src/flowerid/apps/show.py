"""`flowerid show`: a random batch of a data folder, drawn as a backbone's (or a checkpoint's) preprocessing
shows it to the model."""

from __future__ import annotations

import os
from pathlib import Path

from ..backbones import DEFAULT_BACKBONE, get_spec
from ..data.folders import default_category_names, load_category_names
from ..data.layout import find_layout
from ..data.preprocess import Preprocessing
from ..errors import DataError
from ..evaluation.figures import save_figure
from ..evaluation.photo_figures import batch_figure, sample_batch
from ..model.checkpoint import load_checkpoint


def show_folder(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    n: int = 16,
    cols: int = 4,
    seed: int | None = 0,
    arch: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    category_names: str | os.PathLike | None = None,
) -> tuple[Path, dict[str, str]]:
    """Draw a random batch of FOLDER as `arch`'s (or a checkpoint's) preprocessing shows it to the model.

    A data folder with splits (train/ and val/, training_set/...) shows its training split. Names come from
    `category_names`, else the checkpoint, else cat_to_name.json in or beside FOLDER.
    Returns the picture's path and the unreadable files skipped.
    """

    folder = Path(folder)
    try:
        layout = find_layout(folder)
        if not layout.flat:
            folder = layout.train  # a data folder with splits shows its training photos
    except DataError:
        pass  # sample_batch says what is wrong with the folder
    names: dict[str, str] | None = None
    if checkpoint is not None:
        ck = load_checkpoint(checkpoint)
        prep = Preprocessing.from_dict(ck["preprocessing"])
        names = {c: nm for c, nm in zip(ck["categories"], ck["names"], strict=True) if nm}
    else:
        prep = get_spec(arch or DEFAULT_BACKBONE, setting="arch").preprocessing
    if category_names is not None:
        names = load_category_names(category_names)
    elif names is None:
        names = default_category_names(folder, folder.parent)
    images, labels, skipped = sample_batch(folder, n, seed, prep, names)
    if not images:
        raise DataError(f"none of the images in {folder} could be read")
    title = f"{folder} · {len(images)} photos · {prep.crop_size}px crop, normalisation undone"
    return save_figure(batch_figure(images, labels, cols, title), out), skipped
