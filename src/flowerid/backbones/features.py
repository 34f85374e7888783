"""Extraction: the one route by which photos become cached outputs (a backbone's features, a front's activations).

An engine maps a float32 NCHW batch to a (N, F) array. Photos are decoded and
preprocessed in a worker process while the engine runs; outputs are cached on
disk (under the source's `CacheKey`) so an unchanged re-run computes nothing.
`split_rows` gives a labelled split's rows as tensors; `extract_features` any list of photos.
"""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.augment import Augment, view_seed
from ..data.preprocess import Preprocessing
from ..distributed import world
from ..errors import ImageError
from .cache import FeatureCache
from .engines import Backbone, Front

if TYPE_CHECKING:
    from ..data.folders import ImageFolder


class _PhotoDataset(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], prep: Preprocessing, augment: Augment | None, view: int) -> None:
        self.paths = paths
        self.prep = prep
        self.augment = augment
        self.view = view

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        path = self.paths[i]
        try:
            if self.augment is None:
                return i, self.prep.load(path), ""
            return i, self.augment.view(self.prep, path, view_seed(path, self.view)), ""
        except ImageError as exc:
            return i, None, exc.reason


def _collate(items: list[tuple[int, np.ndarray | None, str]]):
    ok = [(i, a) for i, a, _ in items if a is not None]
    failed = [(i, r) for i, a, r in items if a is None]
    batch = np.stack([a for _, a in ok]) if ok else None
    return [i for i, _ in ok], batch, failed


def _worker_init(_: int) -> None:
    """Decode workers leave Ctrl-C to the main process.

    A terminal sends SIGINT to the whole process group. A worker that dies of it
    blocks on exit flushing decoded batches nobody reads, and the main process
    then waits 5 s for it; ignoring it here lets the main process stop the
    workers itself, at once.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers() -> int:
    """Decode workers: one per core beyond the first, at least one, at most four.

    Under torchrun the cores are this machine's processes' to share.
    """
    cores = (os.cpu_count() or 2) // max(1, world().local_size)
    return max(1, min(4, cores - 1))


def photo_loader(
    paths: Sequence[Path],
    prep: Preprocessing,
    batch_size: int,
    workers: int,
    augment: Augment | None = None,
    view: int = 0,
    generator: torch.Generator | None = None,
) -> torch.utils.data.DataLoader:
    """Batches of (indices, preprocessed photos or None, failures), decoded by `workers` processes.

    With a `generator` the photos come shuffled by it; unreadable ones are reported, not raised.
    """
    return torch.utils.data.DataLoader(
        _PhotoDataset(paths, prep, augment, view),
        batch_size=batch_size,
        shuffle=generator is not None,
        generator=generator,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=4 if workers else None,
        worker_init_fn=_worker_init if workers else None,
    )


@dataclass
class Extracted:
    features: np.ndarray  # (N, F) float32; rows of failed images are zero
    ok: np.ndarray  # (N,) bool
    failures: dict[int, str] = field(default_factory=dict)
    computed: int = 0


def extract_features(
    paths: Sequence[Path],
    source: Backbone | Front,
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    use_cache: bool = True,
    desc: str = "features",
    on_batch: Callable[[], None] | None = None,
    augment: Augment | None = None,
    view: int = 0,
    known_failures: dict[str, str] | None = None,
) -> Extracted:
    """The source's outputs (one flat row a photo) for every path, from the cache where present; failures
    are reported, not raised.

    `batch_size` defaults to 8 on ONNX Runtime: small batches keep the decode worker
    and the engine taking turns on few cores (on 2 cores, 16 and 32 were 10-20%
    slower end to end); 32 on PyTorch, whose GPU wants larger batches.
    With `augment`, each photo's augmented view number `view` (view 0 is the plain
    photo): the same view of the same photo is always the same, so it is cached too.
    `known_failures` (path: reason) are reported without being read again: another
    process of a torchrun job already tried them. The bar shows in the main process only.
    """
    if (augment is None) != (view == 0):
        raise ValueError("view 0 is the plain photo; views 1, 2, ... need an augmentation")
    n = len(paths)
    dim = int(np.prod(source.shape))
    key = source.key
    feats = np.zeros((n, dim), dtype=key.dtype)
    ok = np.zeros(n, dtype=bool)
    cache = FeatureCache(key.namespace(augment, view), dtype=key.dtype) if use_cache else None
    todo: list[int] = []
    result = Extracted(feats, ok)
    for i, p in enumerate(paths):
        if known_failures and str(p) in known_failures:
            result.failures[i] = known_failures[str(p)]
            continue
        vec = cache.get(p) if cache else None
        if vec is not None and vec.shape == (dim,):
            feats[i], ok[i] = vec, True
        else:
            todo.append(i)
    if todo:
        _compute(paths, todo, source, result, cache, batch_size, num_workers, desc, on_batch, augment, view)
    return result


def _compute(
    paths: Sequence[Path],
    todo: list[int],
    source: Backbone | Front,
    result: Extracted,
    cache: FeatureCache | None,
    batch_size: int | None,
    num_workers: int | None,
    desc: str,
    on_batch: Callable[[], None] | None,
    augment: Augment | None,
    view: int,
) -> None:
    """Decode, run and cache the photos `todo` (indices into `paths`), filling `result`."""
    workers = default_workers() if num_workers is None else num_workers
    if batch_size is None:
        batch_size = 8 if getattr(source.engine, "name", "") == "onnx" else 32
    if workers:
        # Collect garbage before the decode workers fork: an ONNX Runtime object collected in a forked
        # child waits forever on its thread pool's locks (seen with the tuned mode's front engine).
        gc.collect()
    loader = photo_loader([paths[i] for i in todo], source.preprocessing, batch_size, workers, augment, view)
    quiet = None if world().is_main else True
    feats, ok = result.features, result.ok
    with tqdm(total=len(todo), desc=desc, unit="img", disable=quiet, leave=False) as bar:
        for idx, batch, failed in loader:
            for j, reason in failed:
                result.failures[todo[j]] = reason
            if batch is not None:
                out = source.engine(batch)
                for j, vec in zip(idx, out, strict=True):
                    k = todo[j]
                    feats[k], ok[k] = vec, True
                    if cache:
                        cache.put(paths[k], vec)
                result.computed += len(idx)
            bar.update(len(idx) + len(failed))
            if on_batch:
                on_batch()


@dataclass
class Rows:
    """A labelled split's outputs: rows of the photos that could be read, their labels, and the others."""

    x: torch.Tensor  # (n, *source.shape), float32 features or float16 activations
    y: torch.Tensor  # (n,) int64
    failures: dict[str, str]  # path: why it could not be read
    computed: int  # how many were computed rather than found in the cache


def split_rows(
    split: ImageFolder,
    source: Backbone | Front,
    desc: str,
    *,
    use_cache: bool = True,
    num_workers: int | None = None,
    augment: Augment | None = None,
    view: int = 0,
    known_failures: dict[str, str] | None = None,
) -> Rows:
    """The (cached) outputs of a split's photos as tensors, with their labels: every mode's route into the cache.

    `known_failures`: photos other torchrun processes found unreadable, not read again.
    """
    ex = extract_features(
        split.paths,
        source,
        num_workers=num_workers,
        use_cache=use_cache,
        desc=desc,
        augment=augment,
        view=view,
        known_failures=known_failures,
    )
    keep = np.flatnonzero(ex.ok)
    x = torch.from_numpy(ex.features[keep]).reshape(-1, *source.shape)
    y = torch.as_tensor(np.asarray(split.targets, dtype=np.int64)[keep])
    return Rows(x, y, {str(split.paths[i]): reason for i, reason in ex.failures.items()}, ex.computed)
