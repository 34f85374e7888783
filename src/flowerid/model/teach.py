"""Setting a trained head's rows for new or corrected categories from a few photos, old rows untouched.

Three ways, compared in benchmarks/bench_add.py on species left out of training:

* imprint (Qi et al., 2018): the new row is the unit mean of the photos' unit-length features,
  scaled to the old rows' mean length; its bias the old biases' mean. Needs the head only.
* class-mean: linear discriminant rows w = S^-1 m, b = -m S^-1 m / 2 from the stored shared
  covariance S, with one scale and one offset for all of them fitted as `refit` fits its rows.
* refit (the default): the free rows (new and corrected categories) are fitted by logistic
  regression beside the fixed old rows, on draws: an old (or corrected) category's from its
  Gaussian (stored mean, the shared covariance S times 1 + 1/n for n photos, the spread of a new
  photo around a mean estimated from n), a new category's around each of its own photos, blurred
  by 2 S (its real shape, widened where few photos say little; measured on the benchmark's first
  draw against draws from its mean alone, which lost 6 points of top-1 at 5 photos and 6 at all).

Old rows never change, so an old category can only lose photos that a new category now wins.
Everything is numpy and takes seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .._numeric import unit_rows
from ..errors import UsageError
from .class_stats import ClassStats

METHODS = ("refit", "class-mean", "imprint")
DEFAULT_METHOD = "refit"
OLD_DRAWS = 24  # draws per fixed category: enough to pin where the free rows must stop
FREE_DRAWS = 256  # draws per free category
L2 = 1e-4
OFFSET_DRAWS = 64  # draws per category for known_offsets' medians
PHOTO_BLUR = 1.0  # ridge on the free rows, per feature, relative to the mean loss
WIDEN_FROM, WIDEN_TO, WIDEN_MAX = 5, 40, 3.0  # old draws widened between these photo counts (old_widen)
HELD_OUT_FOLDS, HELD_OUT_MIN = 5, 3  # folds for add's held-out lift; a category needs this many photos to take part
LIFT_MAX = 2.0  # the most the held-out lift takes back, in the score's units (standard deviations of valid photos')


def old_widen(photos: float) -> float:
    """How much wider than their Gaussians the old categories are drawn when the new ones bring `photos` each.

    A wider old draw keeps more old photos (a new row must stop further from them) and teaches the new
    rows less. A new category known from a few photos only reaches the near tails of the old ones, and
    needs every photo's worth of pull; one known from dozens reaches far into them. So the width grows
    with the photos: x1 up to WIDEN_FROM, WIDEN_MAX from WIDEN_TO, log-linear between (docs/teach.md).
    """
    t = np.log(max(photos, 1.0) / WIDEN_FROM) / np.log(WIDEN_TO / WIDEN_FROM)
    return float(1.0 + (WIDEN_MAX - 1.0) * np.clip(t, 0.0, 1.0))


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


def _draws(
    stats: ClassStats,
    q: np.ndarray,
    free: set[int],
    rng: np.random.Generator,
    photos: dict[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Samples of every category's Gaussian in the coordinates of `q` (orthonormal rows spanning the
    covariance's kept directions and the means: outside it there is only isotropic noise).

    Returns (x in q coordinates, label, weight, spread); each category weighs the same in all.
    """
    per = np.where(np.isin(np.arange(len(stats.counts)), sorted(free)), FREE_DRAWS, OLD_DRAWS)
    y = np.repeat(np.arange(len(per)), per)
    centre = (stats.means @ q.T)[y]
    widen = old_widen(float(np.median([len(z) for z in photos.values()]))) if photos else 1.0
    spread = widen * np.sqrt(1.0 + 1.0 / np.maximum(stats.counts[y], 1))
    for c, z in (photos or {}).items():  # around the category's own photos: its real shape, blurred
        rows = np.flatnonzero(y == c)
        centre[rows] = (z @ q.T)[np.arange(len(rows)) % len(z)]
        spread[rows] = np.sqrt(PHOTO_BLUR)
    x = centre + spread[:, None] * stats.noise(len(y), rng, q)
    w = 1.0 / per[y]
    return x, y, w / w.sum(), spread


def _span(stats: ClassStats) -> np.ndarray:
    """Orthonormal rows spanning the kept covariance directions and every category's mean."""
    q, _ = np.linalg.qr(np.vstack([stats.basis, stats.means]).T)
    return q.T


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
    The fixed rows' logits come first, the free rows' after, as `y` counts them.
    """
    import torch

    d = x.shape[1]
    n_fixed = fixed_logits.shape[1]
    order = np.concatenate([np.setdiff1d(np.arange(n_fixed + len(free_idx)), free_idx), free_idx])
    target = torch.as_tensor(np.argsort(order)[y])  # each sample's column in [fixed | free]
    f32 = torch.float32
    xb = torch.as_tensor(np.hstack([x, np.ones((len(x), 1))]), dtype=f32)
    fixed = torch.as_tensor(fixed_logits, dtype=f32)
    w = torch.as_tensor(sw, dtype=f32)
    theta = torch.tensor(init if design is None else [1.0, 0.0], dtype=f32, requires_grad=True)
    basis = None if design is None else torch.as_tensor(design, dtype=f32)

    def rows_of(t: torch.Tensor) -> torch.Tensor:
        return t if basis is None else t[0] * basis[:, 0] + t[1] * basis[:, 1]

    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=200, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        rows = rows_of(theta)
        logits = torch.cat([fixed, xb @ rows.T], dim=1)
        nll = torch.nn.functional.cross_entropy(logits, target, reduction="none")
        loss = (w * nll).sum() + 0.5 * L2 * (rows[:, :d] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return rows_of(theta.detach()).double().numpy()


def fit_rows(
    weight: np.ndarray,
    bias: np.ndarray,
    stats: ClassStats,
    free: list[int],
    method: str,
    seed: int = 0,
    photos: dict[int, np.ndarray] | None = None,
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
    q = _span(stats)
    x, y, sw, spread = _draws(stats, q, set(free), rng, photos)
    w_fixed = start.weight[fixed]
    w_perp = w_fixed - (w_fixed @ q.T) @ q  # the fixed rows also see the noise outside q's span
    cov = stats.residual * (w_perp @ w_perp.T) + 1e-9 * np.eye(len(fixed))
    perp = (rng.standard_normal((len(x), len(fixed))) @ np.linalg.cholesky(cov).T) * spread[:, None]
    fixed_logits = x @ (w_fixed @ q.T).T + start.bias[fixed] + perp
    init = np.hstack([start.weight[free_idx] @ q.T, start.bias[free_idx, None]])
    design = None
    if method == "class-mean":
        m = stats.means[free_idx]
        sm = precision_times(stats, m)
        design = np.zeros((len(free_idx), 2, len(q) + 1))
        design[:, 0, :-1] = sm @ q.T
        design[:, 0, -1] = -0.5 * (m * sm).sum(axis=1)
        design[:, 1, -1] = 1.0
    rows = _fit_free(x, y, sw, fixed_logits, free_idx, init, design)
    start.weight[free_idx], start.bias[free_idx] = rows[:, :-1] @ q, rows[:, -1]
    return start


def known_offsets(
    rows: Rows,
    stats: ClassStats,
    near: Callable[[np.ndarray], np.ndarray],
    offsets: np.ndarray,
    new: list[int],
    seed: int = 0,
) -> np.ndarray:
    """`offsets` (one per row) with those of the `new` categories set so that draws of each new category's
    Gaussian get, in the median, the unknown-photo score draws of the others get.

    A category learned from a few photos is drawn wider (ClassStats.sample), so the head gives its photos
    humbler probabilities and the detector's `near` (the standardised entropy of the head's logits) calls
    more of them unknown; the offset takes that back for photos whose top category it is, and for no other.
    Draws of the Gaussian are kinder than real photos the category was not taught (its mean and width
    came from the photos themselves), so add.py then lifts these offsets by what held-out photos show
    (add._held_out_lift), capped at LIFT_MAX. Measured in benchmarks/bench_add.py.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros(len(stats.counts))
    out[: len(offsets)] = offsets
    labels = np.repeat(np.arange(len(stats.counts)), OFFSET_DRAWS)
    logits = stats.sample_logits(labels, rows.weight, rows.bias, rng)
    medians = np.median(near(logits).reshape(-1, OFFSET_DRAWS), axis=1)
    is_new = np.isin(np.arange(len(stats.counts)), new)
    medians -= np.where(is_new, 0.0, out)
    out[is_new] = np.maximum(medians[is_new] - np.median(medians[~is_new]), 0.0)  # takes humility back, never adds any
    return out


def held_out_folds(photos: list[int]) -> int:
    """Folds for scoring new categories on photos they were not taught: up to HELD_OUT_FOLDS, one photo
    out at a time where there are fewer; 0 when no new category has HELD_OUT_MIN photos (with fewer, a
    category taught without one of them says little about one taught with all)."""
    eligible = [n for n in photos if n >= HELD_OUT_MIN]
    return min(HELD_OUT_FOLDS, max(eligible)) if eligible else 0


def precision_times(stats: ClassStats, m: np.ndarray) -> np.ndarray:
    """m S^-1 for rows m, with S the stored low-rank-plus-isotropic covariance."""
    proj = m @ stats.basis.T
    floor = max(stats.residual, 1e-6 * float(stats.eigvals.max(initial=1.0)))
    return (proj / np.maximum(stats.eigvals, floor)) @ stats.basis + (m - proj @ stats.basis) / floor
