"""Resuming head training: everything an interrupted frozen-backbone run needs, saved after every epoch.

The state is tied by a fingerprint to the features, labels and settings it was trained
on, so resuming never silently continues a different run.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_bytes
from .._text import first_line
from ..errors import CheckpointError, UsageError

STATE_FILE = "train_state.pt"
_STATE_FORMAT = "flowerid-train-state"


def fingerprint(*tensors: torch.Tensor, **settings: Any) -> str:
    """A digest of the features, labels and settings a head training run depends on."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for t in tensors:
        h.update(np.ascontiguousarray(t.detach().cpu().numpy()).tobytes())
    return h.hexdigest()


def load_train_state(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The saved state of an interrupted head training run, or None if there is none.

    A state file from other data or settings, or a damaged one, is an error that
    says what to do: resuming it would silently train something else.
    """
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is damaged ({first_line(exc)}); delete it, or run without --resume to start head training over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise CheckpointError(f"{path} is not a flowerid training state; delete it or run without --resume")
    if state.get("fingerprint") != fingerprint:
        raise UsageError(
            f"{path} was saved by a run with other data or settings (epochs, learning rate, batch size, seed, "
            "head, backbone or readable images differ); use the same command line, or run without --resume"
        )
    return state


def save_train_state(path: Path, fingerprint: str, **state: Any) -> None:
    """Write the state atomically: an interrupt mid-write leaves the previous epoch's."""
    buf = io.BytesIO()
    torch.save({"format": _STATE_FORMAT, "fingerprint": fingerprint, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())
