"""Self-describing checkpoints: plain data that loads with `weights_only=True`.

A checkpoint holds the format version, package version, backbone name and
weights digest, ordered categories and names, head shape and state,
preprocessing, training settings and metrics. The frozen backbone's weights
are not copied in: they are rebuilt from the registry and checked by digest.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _torchfile
from ._io import atomic_write
from .errors import CheckpointError

FORMAT = "flowerid-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "backbone", "preprocessing", "categories", "names", "head")

# Explicit, tested steps from each older version to the next: {from_version: step}.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    import torch

    ckpt = {**ckpt, "format": FORMAT, "format_version": FORMAT_VERSION}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()))


def _read(path: Path) -> Any:
    """torch.load(weights_only=True) when torch is already loaded; else the torch-free reader.

    Both refuse any global beyond tensors and plain data. The torch-free one keeps
    `predict` from paying two seconds to import torch; its tensors are numpy arrays.
    """
    if "torch" in sys.modules:
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    return _torchfile.load(str(path))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a checkpoint without ever unpickling code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    if path.is_dir():
        hint = path / "checkpoint.pth"
        raise CheckpointError(f"{path} is a folder" + (f"; did you mean {hint}?" if hint.exists() else ""))
    try:
        ckpt = _read(path)
    except pickle.UnpicklingError as exc:
        if isinstance(exc, _torchfile.UnsafeCheckpoint) or "weights_only" in str(exc) or "Weights only" in str(exc):
            raise CheckpointError(
                f"{path} needs full pickle to load, which can run arbitrary code; flowerid only "
                "loads plain-data checkpoints. Re-save it with flowerid, or do not trust it"
            ) from None
        raise CheckpointError(f"{path} is damaged or not a checkpoint ({exc})") from None
    except (
        RuntimeError,
        OSError,
        EOFError,
        ValueError,
        zipfile.BadZipFile,
        KeyError,
        AttributeError,
        TypeError,
        IndexError,
        UnicodeDecodeError,
        MemoryError,
        OverflowError,
    ) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is damaged or not a checkpoint ({first})") from None
    return validate(ckpt, str(path))


def validate(ckpt: Any, where: str = "checkpoint") -> dict[str, Any]:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{where} is not a flowerid checkpoint (a raw state dict or another tool's file?); "
            "train one with `flowerid train`"
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{where} has no format version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} is format version {version}, newer than this flowerid reads ({FORMAT_VERSION}); upgrade flowerid"
        )
    while version < FORMAT_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise CheckpointError(f"{where} is format version {version}, which cannot be migrated")
        ckpt = step(ckpt)
        version = ckpt["format_version"]
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{where} lacks {', '.join(missing)}")
    cats, names, head = ckpt["categories"], ckpt["names"], ckpt["head"]
    if not isinstance(cats, list) or not cats or not all(isinstance(c, str) for c in cats):
        raise CheckpointError(f"{where} has no valid category list")
    if not isinstance(names, list) or len(names) != len(cats):
        raise CheckpointError(f"{where}: names do not match categories")
    if not isinstance(head, dict) or not isinstance(head.get("state_dict"), dict):
        raise CheckpointError(f"{where} has no head weights")
    return ckpt
