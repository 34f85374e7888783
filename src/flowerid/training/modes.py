"""The mode table: every training mode by name, with how it trains (`train()`) and how it is cross-validated
(`cross_validate`), so both pick a mode in one place and a new mode is one entry here.

A mode's `folds` prepares the pooled photos once (features or activations, from the cache `train()` fills)
and returns a `Folds`: their labels, the unreadable ones, and the fit of one fold. None: the mode is not
cross-validated (full fine-tuning retrains the whole network per fold: a GPU's work).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UsageError
from .common import Folds, Run, TrainResult
from .distill import train_distilled
from .distill_cv import distilled_folds
from .frozen import frozen_folds, train_frozen
from .full import train_full
from .tuned import train_tuned, tuned_folds


@dataclass(frozen=True)
class Mode:
    train: Callable[[Run], TrainResult | None]
    folds: Callable[..., Folds] | None = None  # (photos, cfg, device, log) -> Folds
    folds_take_views: bool = False  # its cross-validation trains on augmented views too (cfg.views)


MODES: dict[str, Mode] = {
    "frozen": Mode(train_frozen, frozen_folds),
    "tuned": Mode(train_tuned, tuned_folds),
    "full": Mode(train_full),
    "distilled": Mode(train_distilled, distilled_folds, folds_take_views=True),
}


def mode_for(name: str) -> Mode:
    """The training mode called `name`; UsageError listing the modes for any other name."""
    try:
        return MODES[name]
    except KeyError:
        raise UsageError(f"unknown training mode {name!r}; choose one of: {', '.join(MODES)}") from None
