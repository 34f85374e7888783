"""`flowerid check --deep`: wrong labels, near-duplicates and photos that belong nowhere.

Three findings, each from what the feature cache already holds:

- wrong labels: out-of-fold probabilities from k cross-validated linear heads
  (each photo is scored by a head that never saw it), then cleanlab's confident
  learning counts the likely errors and ranks them; the suggestion is the
  category the heads would give;
- near-duplicates: photos whose features are among each other's nearest
  neighbours, confirmed on pixels (a small grey thumbnail, also mirrored and
  with 5% trimmed off each side), so re-encoded, resized, mirrored or slightly
  cropped copies match while two shots of one plant do not;
- outliers: photos far from every other photo in feature space.

The algorithms below take arrays and return arrays, so tests run them on tiny
synthetic features; `evaluation.data_check.run_deep_check` gathers features and thumbnails for a data
folder and writes issues.csv and review.html. Importing this module imports no torch; the linear heads
and the principal components import it when they are called.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .._numeric import unit_rows
from .folds import fold_indices

LABEL, DUPLICATE, OUTLIER = "label", "duplicate", "outlier"
KINDS = (LABEL, DUPLICATE, OUTLIER)
CSV_COLUMNS = ("path", "kind", "given", "suggested", "score", "other")
ISSUES_FILE, REVIEW_FILE = "issues.csv", "review.html"

# Out-of-fold heads: features reduced to this many principal components (whitened) first.
# On the 7370 shared photos 256 components lost no label-error recall against all 2560
# features and made the five fits about five times faster.
PCA_COMPONENTS = 256
WEIGHT_DECAY = 1e-2
# Near-duplicates: a pair is a candidate when either is among the other's nearest
# feature neighbours, and a copy when its thumbnails correlate at least this much.
# Planted copies (80% size, JPEG 70, mirrored and/or 10% cropped) scored 0.997-1.000;
# distinct photos of one plant rarely pass 0.95 (benchmarks/bench_check.py).
DUPLICATE_NEIGHBOURS = 10
DUPLICATE_THRESHOLD = 0.98
THUMB = 32  # thumbnail side for the pixel comparison
# Outliers: a robust z-score (median, 1.4826 MAD) of each photo's mean cosine distance
# to its nearest neighbours (bench_check.py: planted non-flower photos against flowers).
OUTLIER_NEIGHBOURS = 5
OUTLIER_Z = 4.5

Step = Callable[[str], None]


@dataclass(frozen=True)
class Issue:
    """One finding: a row of issues.csv."""

    path: str
    kind: str
    given: str
    suggested: str = ""
    score: float = 0.0
    other: str = ""


# ------------------------------------------------------------------ wrong labels


def principal_components(x: np.ndarray, q: int, seed: int = 0, sample: int = 3000) -> np.ndarray:
    """x projected on its first q principal components, whitened; labels play no part.

    The components come from a seeded sample of at most `sample` rows: enough to
    find the main directions at a fraction of the cost.
    """
    import torch

    q = min(q, x.shape[1], len(x))
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    mean = xt.mean(0)
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(xt), generator=gen)[:sample]
    torch.manual_seed(seed)  # pca_lowrank draws a random start
    _, s, v = torch.pca_lowrank(xt[rows], q=q, center=True, niter=2)
    z = (xt - mean) @ v
    return (z / z.std(0).clamp_min(1e-6)).numpy()


def fit_linear(x: np.ndarray, y: np.ndarray, n_classes: int, *, weight_decay: float = WEIGHT_DECAY, max_iter: int = 30):
    """Multinomial logistic regression on standardised features, by full-batch L-BFGS.

    Returns a function from feature rows to class probabilities. L-BFGS has no
    learning rate or epoch count to choose and settles in a few dozen steps here.
    """
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    mean, std = xt.mean(0), xt.std(0).clamp_min(1e-6) if len(xt) > 1 else torch.ones(xt.shape[1])
    xs = (xt - mean) / std
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w + b, yt) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_, b_ = w.detach(), b.detach()

    def predict(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            r = (torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)) - mean) / std
            return torch.softmax(r @ w_ + b_, 1).numpy()

    return predict


def out_of_fold_probabilities(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    folds: int = 5,
    seed: int = 0,
    weight_decay: float = WEIGHT_DECAY,
    on_fold: Callable[[], None] | None = None,
) -> np.ndarray:
    """(N, C) probabilities, each row from a head trained on the other folds.

    Confident learning needs held-out predictions: a head that had seen a
    photo's wrong label would have learnt it.
    """
    y = np.asarray(y, dtype=np.int64)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
    import torch

    probs = np.zeros((len(y), n_classes), dtype=np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: on 2 busy cores one thread was 3.6x faster than two
    try:
        for held in fold_indices(y, max(2, min(folds, len(y))), seed):
            train = np.ones(len(y), dtype=bool)
            train[held] = False
            if len(held) and train.any():
                probs[held] = fit_linear(x[train], y[train], n_classes, weight_decay=weight_decay)(x[held])
            if on_fold:
                on_fold()
    finally:
        torch.set_num_threads(threads)
    return probs


def label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of likely wrong labels, most suspect first, and every photo's suspicion score.

    cleanlab does both halves: confident learning estimates how many labels are
    wrong (`num_label_issues`, calibrated confident joint) and that many photos of
    lowest self-confidence (out-of-fold probability of the given label) are
    flagged, less those the heads agree with. The score is 1 - self-confidence.
    On planted noise `find_label_issues`' own filters came out 25-30% short of
    the planted count; this cut found 95-100% of it (benchmarks/bench_check.py).
    """
    from cleanlab.count import num_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    with warnings.catch_warnings():  # cleanlab warns about classes too small to estimate noise for
        warnings.simplefilter("ignore")
        quality = get_label_quality_scores(labels, probs, method="self_confidence")
        count = int(num_label_issues(labels, probs, estimation_method="off_diagonal_calibrated"))
    order = np.argsort(quality, kind="stable")[:count]
    order = order[probs[order].argmax(1) != labels[order]]
    return order, 1.0 - quality


# ------------------------------------------------------------------ near-duplicates


def _views(thumbs: np.ndarray) -> np.ndarray:
    """(N, 4, THUMB²) zero-mean unit-length rows: whole, inner, and both mirrored."""
    t = np.asarray(thumbs, dtype=np.float32)
    v = np.concatenate([t, t[..., ::-1]], axis=1).reshape(len(t), 4, -1)
    v -= v.mean(-1, keepdims=True)
    v /= np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)
    return v


def candidate_pairs(feats: np.ndarray, k: int = DUPLICATE_NEIGHBOURS, block: int = 1024) -> np.ndarray:
    """(M, 2) pairs i < j where j is among i's k nearest feature neighbours or i among j's."""
    z = unit_rows(feats, np.float32)
    n = len(z)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((0, 2), dtype=np.int64)
    found = []
    for start in range(0, n, block):
        sim = z[start : start + block] @ z.T
        rows = np.arange(len(sim))
        sim[rows, start + rows] = -np.inf
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        i = np.repeat(start + rows, k)
        found.append(np.stack([np.minimum(i, nn.ravel()), np.maximum(i, nn.ravel())], 1))
    return np.unique(np.concatenate(found), axis=0)


def pixel_similarity(thumbs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """For each pair, the best correlation of its thumbnails over whole/trimmed/mirrored views.

    One photo's four views against the other's two (whole, trimmed) covers a
    copy that was mirrored, cropped by up to about 10%, or both.
    """
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.float32)
    v = _views(thumbs)
    out = np.empty(len(pairs), dtype=np.float32)
    for s in range(0, len(pairs), 8192):
        a, b = pairs[s : s + 8192, 0], pairs[s : s + 8192, 1]
        out[s : s + 8192] = np.einsum("nid,njd->nij", v[a], v[b][:, :2]).reshape(len(a), -1).max(1)
    return out


def near_duplicates(
    feats: np.ndarray, thumbs: np.ndarray, threshold: float = DUPLICATE_THRESHOLD, k: int = DUPLICATE_NEIGHBOURS
) -> list[tuple[int, int, float]]:
    """Pairs (i, j, similarity) of copies of one photo, most similar first."""
    pairs = candidate_pairs(feats, k)
    sim = pixel_similarity(thumbs, pairs)
    keep = np.flatnonzero(sim >= threshold)
    keep = keep[np.argsort(-sim[keep], kind="stable")]
    return [(int(pairs[m, 0]), int(pairs[m, 1]), float(sim[m])) for m in keep]


def duplicate_score(similarity: float, across_splits: bool, labels_differ: bool) -> float:
    """How suspect a pair is: its similarity, + 1 across splits, + 1 under different labels.

    A copy in both train and valid inflates the validation figures and a copy
    under two labels teaches both, so these come before plain repeats; within
    each group the closer copies come first.
    """
    return similarity + float(across_splits) + float(labels_differ)


# ------------------------------------------------------------------ outliers


def outlier_scores(
    feats: np.ndarray,
    k: int = OUTLIER_NEIGHBOURS,
    copies: Sequence[tuple[int, int]] = (),
    block: int = 1024,
) -> np.ndarray:
    """A robust z-score of each photo's mean cosine distance to its k nearest photos.

    (distance - median) / (1.4826 MAD) is about one standard deviation for the
    usual spread, so one threshold suits data sets of any tightness. `copies`
    (pairs from near_duplicates) are no neighbours of each other: two copies of
    one stray photo must not vouch for each other.
    A small function on purpose: an open-set "unknown" score can replace it.
    """
    z = unit_rows(feats, np.float32)
    n = len(z)
    if n < 3:
        return np.zeros(n, dtype=np.float32)
    k = max(1, min(k, n - 2))
    pairs = np.asarray(list(copies), dtype=np.int64).reshape(-1, 2)
    pairs = np.concatenate([pairs, pairs[:, ::-1]])
    dist = np.zeros(n, dtype=np.float32)
    for start in range(0, n, block):
        sim = z[start : start + block] @ z.T
        rows = np.arange(len(sim))
        sim[rows, start + rows] = -np.inf
        mine = pairs[(pairs[:, 0] >= start) & (pairs[:, 0] < start + len(sim))]
        sim[mine[:, 0] - start, mine[:, 1]] = -np.inf
        top = -np.partition(-sim, k - 1, axis=1)[:, :k]
        dist[start : start + block] = 1.0 - np.where(np.isfinite(top), top, -1.0).mean(1)
    med = float(np.median(dist))
    mad = 1.4826 * float(np.median(np.abs(dist - med)))
    return (dist - med) / max(mad, 1e-6)


# ------------------------------------------------------------------ all findings


@dataclass
class Photos:
    """The photos examined: paths relative to the data folder, split, label, features and thumbnails."""

    paths: list[str]
    splits: list[str]
    labels: np.ndarray  # (N,) category indices
    features: np.ndarray  # (N, F)
    thumbs: np.ndarray  # (N, 2, THUMB, THUMB) uint8
    categories: list[str]


@dataclass
class Findings:
    issues: list[Issue]
    probs: np.ndarray  # out-of-fold probabilities (N, C)
    outlier_scores: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage

    def of_kind(self, kind: str) -> list[Issue]:
        return [i for i in self.issues if i.kind == kind]


def find_issues(photos: Photos, *, folds: int = 5, seed: int = 0, step: Step | None = None) -> Findings:
    """Every finding for the photos, by kind (label, duplicate, outlier), most suspect first.

    A photo listed as an outlier is not also a wrong label: a photo that
    belongs to no category has no right one to suggest.
    """
    say = step or (lambda _: None)
    y = np.asarray(photos.labels, dtype=np.int64)
    cats = photos.categories
    say("near-duplicates")
    copies = near_duplicates(photos.features, photos.thumbs)
    say("outliers")
    out_scores = outlier_scores(photos.features, copies=[(i, j) for i, j, _ in copies])
    outliers = np.flatnonzero(out_scores >= OUTLIER_Z)
    say("wrong labels")
    z = principal_components(photos.features, PCA_COMPONENTS, seed)
    probs = out_of_fold_probabilities(z, y, len(cats), folds=folds, seed=seed)
    found, label_scores = label_issues(y, probs)
    stray = set(outliers.tolist())
    suggested = probs.argmax(1)
    issues = [
        Issue(photos.paths[i], LABEL, cats[y[i]], cats[suggested[i]], float(label_scores[i]))
        for i in found
        if i not in stray
    ]
    for i, j, s in copies:
        if photos.splits[i] != "train" and photos.splits[j] == "train":
            i, j = j, i  # list the train copy first: dropping it leaves the valid figures honest
        across = photos.splits[i] != photos.splits[j]
        issues.append(
            Issue(photos.paths[i], DUPLICATE, cats[y[i]], "", duplicate_score(s, across, y[i] != y[j]), photos.paths[j])
        )
    issues += [Issue(photos.paths[i], OUTLIER, cats[y[i]], "", float(out_scores[i])) for i in outliers]
    issues.sort(key=lambda d: (KINDS.index(d.kind), -d.score))
    return Findings(issues, probs, out_scores)
