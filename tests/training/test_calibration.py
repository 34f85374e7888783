"""Temperature scaling: fitted where mistakes identify it, never collapsing where they do not."""

from __future__ import annotations

import numpy as np
import pytest

from flowerid.evaluation.metrics import calibration
from flowerid.training.calibrate import TEMPERATURE_FLOOR, fit_temperature, nll, softmax


def expected_calibration_error(probs: np.ndarray, y: np.ndarray) -> float:
    return calibration(probs.max(1), probs.argmax(1) == y)["ece"]


def _overconfident(n: int = 2000, c: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is too sure: drawn at scale 1 and reported at scale 3, so the right T is 3."""
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, c)) * 2.0
    y = np.array([rng.choice(c, p=p) for p in softmax(true)])
    return true * 3.0, y


def test_recovers_the_temperature_that_was_applied() -> None:
    logits, y = _overconfident()
    t = fit_temperature(logits, y)
    assert t.identified
    assert t.value == pytest.approx(3.0, rel=0.1)
    assert nll(logits, y, t.value) < nll(logits, y, 1.0)
    assert expected_calibration_error(softmax(logits, t.value), y) < expected_calibration_error(softmax(logits), y)


def test_perfectly_separated_predictions_leave_probabilities_unscaled() -> None:
    """No mistakes: the likelihood rises as T falls to 0; the fit must not follow it (it gave 0.047 once)."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, 300)
    logits = rng.normal(size=(300, 10))
    logits[np.arange(300), y] += 10.0  # always ranked first
    assert (logits.argmax(1) == y).all()
    t = fit_temperature(logits, y)
    assert (t.value, t.identified) == (1.0, False)
    assert "no mistakes" in t.reason
    assert nll(logits, y, 0.05) < nll(logits, y, 1.0)  # what an unguarded fit would have chased


def test_one_mistake_never_goes_below_the_floor() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 10, 500)
    logits = rng.normal(size=(500, 10)) * 0.1
    logits[np.arange(500), y] += 5.0
    logits[0, (y[0] + 1) % 10] += 10.0  # one confident mistake
    t = fit_temperature(logits, y)
    assert t.identified and t.value >= TEMPERATURE_FLOOR


def test_nothing_to_fit_on() -> None:
    t = fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))
    assert (t.value, t.identified) == (1.0, False)
