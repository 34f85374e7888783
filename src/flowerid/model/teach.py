"""Setting a trained head's rows for new or corrected categories from a few photos, old rows untouched.

Three ways, compared in benchmarks/bench_add.py on species left out of training:

* imprint (Qi et al., 2018): the new row is the unit mean of the photos' unit-length features,
  scaled to the old rows' mean length; its bias the old biases' mean. Needs the head only.
* class-mean: linear discriminant rows w = S^-1 m, b = -m S^-1 m / 2 from the stored shared
  covariance S, with one scale and one offset for all of them fitted as `refit` fits its rows.
* refit (the default): the free rows (new and corrected categories) are fitted by logistic
  regression beside the fixed old rows, on draws from each category's Gaussian (its stored mean,
  the shared covariance). A category known from n photos is drawn with covariance S (1 + 1/n),
  the spread of a new photo around a mean estimated from n (the posterior predictive): five
  photos give a wider, humbler class than five hundred, so answers stay honest.

Old rows never change, so an old category can only lose photos that a new category now wins.
Everything is numpy and takes seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._numeric import unit_rows
from ..errors import UsageError
from .class_stats import ClassStats

METHODS = ("refit", "class-mean", "imprint")
DEFAULT_METHOD = "refit"
OLD_DRAWS = 24  # draws per fixed category: enough to pin where the free rows must stop
FREE_DRAWS = 256  # draws per free category
L2 = 1e-4  # ridge on the free rows, per feature, relative to the mean loss


@dataclass
class Rows:
    """The last linear layer after teaching: (C', D) weights and (C',) biases."""

    weight: np.ndarray
    bias: np.ndarray


def imprint(weight: np.ndarray, bias: np.ndarray, free: dict[int, np.ndarray]) -> Rows:
    """Imprinted rows for `free` {row index: last-layer inputs of its photos}; indices past the end are new rows."""
    n_rows = max([len(weight) - 1, *free]) + 1
    w = np.zeros((n_rows, weight.shape[1]))
    b = np.zeros(n_rows)
    w[: len(weight)], b[: len(bias)] = weight, bias
    scale = float(np.linalg.norm(weight, axis=1).mean())
    for i, z in free.items():
        w[i] = scale * unit_rows(unit_rows(z).mean(axis=0, keepdims=True))[0]
        b[i] = float(np.mean(bias))
    return Rows(w, b)


def _draws(stats: ClassStats, rows: np.ndarray, free: set[int], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Samples of every category's Gaussian: (x, label, weight); each category weighs the same in all."""
    xs, ys, ws = [], [], []
    for c in rows:
        n = FREE_DRAWS if c in free else OLD_DRAWS
        spread = np.sqrt(1.0 + 1.0 / max(1, int(stats.counts[c])))
        xs.append(stats.means[c] + spread * stats.sample_noise(n, rng))
        ys.append(np.full(n, c))
        ws.append(np.full(n, 1.0 / n))
    w = np.concatenate(ws)
    return np.vstack(xs), np.concatenate(ys), w / w.sum()


def _fit_free(
    x: np.ndarray,
    y: np.ndarray,
    sw: np.ndarray,
    fixed_logits: np.ndarray,
    free_idx: np.ndarray,
    init: np.ndarray,
    design: np.ndarray | None = None,
) -> np.ndarray:
    """L-BFGS on the weighted cross-entropy over all categories, only the free rows' parameters moving.

    `init`: (F, D + 1) weights and bias; with `design` (F, 2, D + 1) the free rows are
    theta[0] * design[:, 0] + theta[1] * design[:, 1] (class-mean's scale and offset) instead.
    """
    from scipy.optimize import minimize

    xb = np.hstack([x, np.ones((len(x), 1))])
    onehot_free = (y[:, None] == free_idx[None, :]).astype(np.float64)
    true_fixed = np.zeros(len(y))
    is_fixed = ~onehot_free.any(axis=1)
    fixed_cols = np.setdiff1d(np.arange(fixed_logits.shape[1] + len(free_idx)), free_idx)
    col_of = {c: j for j, c in enumerate(fixed_cols)}
    true_fixed[is_fixed] = fixed_logits[np.flatnonzero(is_fixed), [col_of[c] for c in y[is_fixed]]]
    d = x.shape[1]

    def rows_of(theta: np.ndarray) -> np.ndarray:
        if design is None:
            return theta.reshape(len(free_idx), d + 1)
        return theta[0] * design[:, 0] + theta[1] * design[:, 1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        rows = rows_of(theta)
        free_logits = xb @ rows.T
        z = np.hstack([fixed_logits, free_logits])
        top = z.max(axis=1, keepdims=True)
        e = np.exp(z - top)
        total = e.sum(axis=1)
        log_norm = np.log(total) + top[:, 0]
        true = np.where(is_fixed, true_fixed, (free_logits * onehot_free).sum(axis=1))
        value = float(sw @ (log_norm - true)) + 0.5 * L2 * float((rows[:, :d] ** 2).sum())
        p_free = e[:, fixed_logits.shape[1] :] / total[:, None]
        g_rows = (sw[:, None] * (p_free - onehot_free)).T @ xb
        g_rows[:, :d] += L2 * rows[:, :d]
        if design is None:
            return value, g_rows.ravel()
        return value, np.array([(g_rows * design[:, 0]).sum(), (g_rows * design[:, 1]).sum()])

    theta0 = init.ravel() if design is None else np.array([1.0, 0.0])
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 300})
    return rows_of(res.x)


def fit_rows(
    weight: np.ndarray, bias: np.ndarray, stats: ClassStats, free: list[int], method: str, seed: int = 0
) -> Rows:
    """The head's last layer with rows `free` (new ones past the end of `weight`) set by `method`.

    `stats` already holds every category's mean and count, the free ones' photos included.
    """
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}", setting="method")
    n_rows = len(stats.counts)
    start = imprint(weight, bias, {i: stats.means[i][None] for i in free})
    if method == "imprint" or not free:
        return start
    rng = np.random.default_rng(seed)
    free_idx = np.asarray(sorted(free))
    fixed = np.setdiff1d(np.arange(n_rows), free_idx)
    x, y, sw = _draws(stats, np.arange(n_rows), set(free), rng)
    fixed_logits = x @ start.weight[fixed].T + start.bias[fixed]
    init = np.hstack([start.weight[free_idx], start.bias[free_idx, None]])
    design = None
    if method == "class-mean":
        m = stats.means[free_idx]
        sm = precision_times(stats, m)
        design = np.zeros((len(free_idx), 2, m.shape[1] + 1))
        design[:, 0, :-1] = sm
        design[:, 0, -1] = -0.5 * (m * sm).sum(axis=1)
        design[:, 1, -1] = 1.0
    rows = _fit_free(x, y, sw, fixed_logits, free_idx, init, design)
    start.weight[free_idx], start.bias[free_idx] = rows[:, :-1], rows[:, -1]
    return start


def precision_times(stats: ClassStats, m: np.ndarray) -> np.ndarray:
    """m S^-1 for rows m, with S the stored low-rank-plus-isotropic covariance."""
    proj = m @ stats.basis.T
    floor = max(stats.residual, 1e-6 * float(stats.eigvals.max(initial=1.0)))
    return (proj / np.maximum(stats.eigvals, floor)) @ stats.basis + (m - proj @ stats.basis) / floor
