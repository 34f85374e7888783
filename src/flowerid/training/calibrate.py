"""Temperature scaling that cannot collapse: one number fitted on held-out logits so that
probabilities mean what they say.

A temperature T divides the logits: it changes how sure the model says it is, never
which category comes first (Guo et al., 2017). It must be fitted on predictions the
model was not selected on (valid, now that runs train a fixed number of epochs; the
other folds' held-out predictions in cross-validation), and it can only be learnt
from mistakes: on a held-out set the model classifies perfectly, the likelihood keeps
rising as T falls towards 0 (a 10-category model once got T = 0.047, and every photo,
a cat included, became "100.00%"). So a fit needs at least one mistake, else the
probabilities stay unscaled (T = 1), and it never goes below TEMPERATURE_FLOOR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._numeric import softmax as _softmax
from .._text import Log
from ..model.head import linear_layers

# A label-smoothed head (smoothing 0.1) puts its top category about 7 nats ahead; below
# T = 0.25 that margin passes 28 nats, a certainty of 1 - 1e-12 that no held-out set of
# hundreds of photos can support. Fitted values on the flowers are 0.4-0.6.
TEMPERATURE_FLOOR = 0.25
TEMPERATURE_CEILING = 20.0


@dataclass(frozen=True)
class Temperature:
    """A fitted temperature; `identified` False (and why in `reason`) when it is the fallback 1.0."""

    value: float
    identified: bool
    reason: str = ""


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, t: float = 1.0) -> np.ndarray:
    """Probabilities at temperature t."""
    return _softmax(np.asarray(logits, dtype=np.float64) / t)


def nll(logits: np.ndarray, y: np.ndarray, t: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / t) at the true categories."""
    z = np.asarray(logits, dtype=np.float64) / t
    return float(-_log_softmax(z)[np.arange(len(y)), np.asarray(y)].mean())


def fit_temperature(
    logits: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    floor: float = TEMPERATURE_FLOOR,
    ceiling: float = TEMPERATURE_CEILING,
) -> Temperature:
    """The T in [floor, ceiling] that minimises the NLL of softmax(logits / T) on held-out predictions.

    No mistakes to learn from (or no predictions): not identified, T = 1. A coarse
    grid then a fine one: exact enough, and it cannot diverge.
    """
    logits = logits.detach().cpu().double().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    y = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if len(y) == 0:
        return Temperature(1.0, False, "no held-out predictions to fit a temperature on")
    if not (logits.argmax(1) != y).any():
        return Temperature(1.0, False, f"no mistakes among {len(y)} held-out photos to learn a temperature from")
    grid = np.exp(np.linspace(np.log(floor), np.log(ceiling), 97))
    t0 = min(grid, key=lambda t: nll(logits, y, t))
    fine = np.clip(t0 * np.exp(np.linspace(-0.05, 0.05, 41)), floor, ceiling)
    return Temperature(float(min(fine, key=lambda t: nll(logits, y, t))), True)


def scale_logits(state: dict[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    """A head state whose logits are `factor` times the original: the last Linear, scaled.

    Folding the temperature into the weights keeps every consumer (predict,
    ONNX, exports) unchanged.
    """
    last = linear_layers(state)[-1]
    out = dict(state)
    out[f"{last}.weight"] = state[f"{last}.weight"] * factor
    out[f"{last}.bias"] = state[f"{last}.bias"] * factor
    return out


def calibrate(
    head_state: dict[str, torch.Tensor], logits_va: torch.Tensor, y_va: torch.Tensor, metrics: dict[str, Any], log: Log
) -> dict[str, torch.Tensor]:
    """Fit a temperature on the valid logits, record it in `metrics` and fold it into the head.

    valid must not have chosen anything about the model (runs train a fixed number of epochs).
    """
    t = fit_temperature(logits_va, y_va)
    metrics["temperature"] = t.value
    metrics["temperature_identified"] = t.identified
    metrics["valid_loss_uncalibrated"] = metrics["valid_loss"]
    metrics["valid_loss"] = nll(logits_va.detach().cpu().double().numpy(), y_va.cpu().numpy(), t.value)
    if not t.identified:
        log(f"probabilities left unscaled (temperature 1): {t.reason}")
        return head_state
    log(
        f"calibrated: temperature {t.value:.3f}, fitted on valid "
        f"(its cross-entropy {metrics['valid_loss_uncalibrated']:.4f} -> {metrics['valid_loss']:.4f})"
    )
    return scale_logits(head_state, 1.0 / t.value)
