"""Two numpy helpers several layers need (calibration, the unknown-photo score, check --deep): one copy each."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, shifted by each row's maximum so large logits cannot overflow."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def unit_rows(x: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Each row scaled to length 1 (an all-zero row stays zero): cosine similarity becomes a dot product."""
    x = np.asarray(x, dtype=dtype)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
