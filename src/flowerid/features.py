"""Feature extraction: the one seam through which photos become feature vectors.

An engine maps a float32 NCHW batch to a (N, F) array. Photos are decoded and
preprocessed in a worker process while the engine runs; vectors are cached on
disk so an unchanged re-run computes nothing.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ._platform import tune_malloc
from .cache import FeatureCache, namespace_for
from .errors import DeviceError, ImageError
from .images import LOADER_VERSION
from .preprocess import Preprocessing
from .registry import BackboneSpec, build_backbone


class Engine(Protocol):
    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' is CUDA when present, else CPU; asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            "CUDA was asked for (--gpu or --device cuda) but no CUDA GPU is available; leave it out to run on the CPU"
        )
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise DeviceError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


class TorchEngine:
    """Runs a torch module in inference mode; channels-last on CPU, which is faster there."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.channels_last = device.type == "cpu"
        if device.type == "cpu":
            tune_malloc()
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.module = module.eval().to(device, memory_format=fmt)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.module(x).float().cpu().numpy()


@dataclass
class Backbone:
    """A built backbone ready to extract: its spec, weights digest, engine and preprocessing."""

    spec: BackboneSpec
    digest: str
    engine: Engine
    module: torch.nn.Module
    weights_path: str | None = None

    @property
    def preprocessing(self) -> Preprocessing:
        return self.spec.preprocessing

    def cache_namespace(self) -> str:
        return namespace_for(
            {
                "backbone": self.spec.name,
                "weights": self.digest,
                "preprocessing": self.preprocessing.to_dict(),
                "loader": LOADER_VERSION,
            }
        )


def load_backbone(spec: BackboneSpec, device: torch.device, weights_path: str | None = None) -> Backbone:
    module, digest = build_backbone(spec, weights_path)
    return Backbone(spec, digest, TorchEngine(module, device), module, weights_path)


class _PhotoDataset(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], prep: Preprocessing) -> None:
        self.paths = paths
        self.prep = prep

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        try:
            return i, self.prep.load(self.paths[i]), ""
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
    """Decode workers: one per core beyond the first, at least one, at most four."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


@dataclass
class Extracted:
    features: np.ndarray  # (N, F) float32; rows of failed images are zero
    ok: np.ndarray  # (N,) bool
    failures: dict[int, str] = field(default_factory=dict)
    computed: int = 0


def extract_features(
    paths: Sequence[Path],
    backbone: Backbone,
    *,
    batch_size: int = 16,
    num_workers: int | None = None,
    use_cache: bool = True,
    desc: str = "features",
    on_batch: Callable[[], None] | None = None,
) -> Extracted:
    """Features for every path, from the cache where present; failures are reported, not raised."""
    n = len(paths)
    dim = backbone.spec.num_features
    feats = np.zeros((n, dim), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    cache = FeatureCache(backbone.cache_namespace()) if use_cache else None
    todo: list[int] = []
    for i, p in enumerate(paths):
        vec = cache.get(p) if cache else None
        if vec is not None and vec.shape == (dim,):
            feats[i], ok[i] = vec, True
        else:
            todo.append(i)
    result = Extracted(feats, ok)
    if not todo:
        return result
    workers = default_workers() if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        _PhotoDataset([paths[i] for i in todo], backbone.preprocessing),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=4 if workers else None,
        worker_init_fn=_worker_init if workers else None,
    )
    with tqdm(total=len(todo), desc=desc, unit="img", disable=None, leave=False) as bar:
        for idx, batch, failed in loader:
            for j, reason in failed:
                result.failures[todo[j]] = reason
            if batch is not None:
                out = backbone.engine(batch)
                for j, vec in zip(idx, out, strict=True):
                    k = todo[j]
                    feats[k], ok[k] = vec, True
                    if cache:
                        cache.put(paths[k], vec)
                result.computed += len(idx)
            bar.update(len(idx) + len(failed))
            if on_batch:
                on_batch()
    return result
