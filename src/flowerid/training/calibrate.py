"""Temperature scaling: one number fitted on held-out logits so that probabilities mean what they say."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._text import Log


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The T that minimises the negative log-likelihood of softmax(logits / T) (Guo et al., 2017).

    One number fitted on held-out data: it changes how sure the model says it
    is, never which category comes first. A coarse grid, then a fine one, is
    exact enough and cannot diverge.
    """
    logits, y = logits.double().cpu(), y.cpu()

    def nll(t: float) -> float:
        return F.cross_entropy(logits / t, y).item()

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    t0 = min(grid, key=nll)
    fine = t0 * np.exp(np.linspace(-0.06, 0.06, 61))
    return float(min(fine, key=nll))


def scale_logits(state: dict[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    """A head state whose logits are `factor` times the original: the last Linear, scaled.

    Folding the temperature into the weights keeps every consumer (predict,
    ONNX, exports) unchanged.
    """
    last = max((k.rsplit(".", 1)[0] for k in state if k.endswith(".weight")), key=int)
    out = dict(state)
    out[f"{last}.weight"] = state[f"{last}.weight"] * factor
    out[f"{last}.bias"] = state[f"{last}.bias"] * factor
    return out


def calibrate(
    head_state: dict[str, torch.Tensor], logits_va: torch.Tensor, y_va: torch.Tensor, metrics: dict[str, Any], log: Log
) -> dict[str, torch.Tensor]:
    """Fit a temperature on the valid logits, record it in `metrics` and fold it into the head."""
    temperature = fit_temperature(logits_va, y_va)
    metrics["temperature"] = temperature
    metrics["valid_loss_uncalibrated"] = metrics["valid_loss"]
    metrics["valid_loss"] = F.cross_entropy(logits_va.cpu() / temperature, y_va.cpu()).item()
    log(
        f"calibrated: temperature {temperature:.3f}, fitted on valid "
        f"(its cross-entropy {metrics['valid_loss_uncalibrated']:.4f} -> {metrics['valid_loss']:.4f})"
    )
    return scale_logits(head_state, 1.0 / temperature)
