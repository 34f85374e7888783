"""Inference engines for the frozen backbone: ONNX Runtime on CPU, PyTorch otherwise.

An engine maps a float32 NCHW batch to a (N, F) numpy array. ONNX Runtime is
the CPU default: faster than PyTorch here and it loads in 0.1 s instead of 2 s,
so `predict` does not import torch at all once the backbone's ONNX graph is
cached. That graph is exported once from the torch module and kept in the cache
under a key that digests the backbone and its weights (cache.CacheKey). A frozen front,
whose activations the tuned mode trains on, runs and is cached the same way (`load_front`).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .._io import file_sha256
from ..data.preprocess import Preprocessing
from ..distributed import world
from ..errors import DeviceError, UsageError
from ._platform import tune_malloc
from .build import build_backbone
from .cache import CacheKey
from .spec import BackboneSpec, get_spec
from .weights import ensemble_digest, package_weights_path

if TYPE_CHECKING:
    import torch

ENGINES = ("auto", "onnx", "torch")


class Engine(Protocol):
    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...

    def for_streams(self, streams: int) -> Engine:
        """An engine that `streams` threads may call at once, each keeping its share of the cores busy."""
        ...


def _cuda_driver_present() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")


def resolve_device(device: str = "auto") -> str:
    """'auto' is 'cuda' when a CUDA GPU is usable, else 'cpu'; asking for CUDA without one is an error.

    torch is imported only where an NVIDIA driver exists, so CPU-only machines stay fast.
    """
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise DeviceError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    available = False
    if _cuda_driver_present():
        import torch

        available = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise DeviceError(
            "CUDA was asked for (--gpu or --device cuda) but no CUDA GPU is available; leave it out to run on the CPU"
        )
    return device


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def choose_engine(engine: str, device: str) -> str:
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "onnx" if device == "cpu" and onnxruntime_available() else "torch"
    if engine == "onnx":
        if device != "cpu":
            raise UsageError("the onnx engine runs on the CPU; use --engine torch with CUDA")
        if not onnxruntime_available():
            raise UsageError("the onnx engine needs onnxruntime: pip install onnxruntime")
    return engine


class TorchEngine:
    """A torch module in inference mode; channels-last on CPU, which is faster there."""

    name = "torch"

    def __init__(self, module: torch.nn.Module, device: str) -> None:
        import torch

        self.device = torch.device(device)
        self.channels_last = self.device.type == "cpu"
        if self.channels_last:
            tune_malloc()
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.module = module.eval().to(self.device, memory_format=fmt)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.module(x).float().cpu().numpy()

    def for_streams(self, streams: int) -> TorchEngine:
        """The same module: torch's threads are shared by the process, and a GPU serves its callers in turn."""
        return self


def default_threads() -> int:
    """Every core this process may use: all of them, or under torchrun its share of its machine's cores.

    The one rule for engine threads, batch-prediction streams, decode workers and the server's threads.
    """
    return max(1, (os.cpu_count() or 1) // max(1, world().local_size))


class OnnxEngine:
    """An ONNX graph run by ONNX Runtime's CPU provider with all graph optimisations."""

    name = "onnx"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.threads = threads or default_threads()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = self.threads
        # Idle ONNX Runtime threads sleep instead of spinning: the decode workers need those
        # cores. On 2 cores this made end-to-end extraction about 15% faster.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]

    def for_streams(self, streams: int) -> OnnxEngine:
        """A session whose runs each keep to one stream's share of the threads.

        Several streams that each decode a batch and then run it on one thread keep every
        core busy with no thread waiting on another: on 2 cores, two one-thread runs named
        200 photos/s against 150 for one two-thread run (Lite0, batch 8).
        """
        share = max(1, self.threads // max(1, streams))
        return self if share == self.threads else OnnxEngine(self.path, share)


@dataclass
class Backbone:
    """A backbone ready to run: its spec, weights digest and engine. Its output is pooled features."""

    spec: BackboneSpec
    digest: str
    engine: Engine
    weights_path: str | None = None

    @property
    def preprocessing(self) -> Preprocessing:
        return self.spec.preprocessing

    @property
    def key(self) -> CacheKey:
        """What its cached features are keyed by."""
        return CacheKey.of(self.spec, self.digest)

    @property
    def shape(self) -> tuple[int, ...]:
        """One photo's output: (num_features,)."""
        return (self.spec.num_features,)


@dataclass
class Front:
    """A network's frozen front ready to run (the tuned mode's): its output, a photo's activation map, is the
    cached kind "activations" (`key.stages` > 0); its engine gives each map as one flat row."""

    key: CacheKey
    engine: Engine
    shape: tuple[int, ...]  # one photo's activations: (C, H, W)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.key.preprocessing


def _known_digest(spec: BackboneSpec, weights_path: str | None) -> str | None:
    """The weights digest where it is a file's sha256, found without building the network."""
    if weights_path is not None:
        return file_sha256(weights_path) if os.path.isfile(weights_path) else None
    if spec.weights.kind == "package":
        digest = file_sha256(package_weights_path(spec))
        return digest if digest == spec.weights.sha256 else None  # a damaged file: build_backbone says why
    if spec.family == "ensemble":
        digests = [_known_digest(get_spec(m), None) for m in spec.members]
        return None if None in digests else ensemble_digest(digests)  # type: ignore[arg-type]
    return None


def cached_graph(key: CacheKey) -> OnnxEngine | None:
    """The ONNX graph of `key`'s output from the cache; None when absent (a damaged one is removed, not trusted)."""
    path = key.graph_path()
    if path.is_file():
        try:
            return OnnxEngine(path)
        except Exception:
            path.unlink(missing_ok=True)
    return None


def exported_graph(module: torch.nn.Module, key: CacheKey) -> OnnxEngine:
    """`module` exported once as the ONNX graph of `key`'s output, into the cache (imports torch)."""
    from .onnx import export_onnx

    return OnnxEngine(export_onnx(module, key.graph_path(), key.input_size))


def load_backbone(
    spec: BackboneSpec, device: str = "cpu", weights_path: str | None = None, engine: str = "auto"
) -> Backbone:
    """Build or fetch a backbone's engine. ONNX graphs come from the cache when present."""
    kind = choose_engine(engine, device)
    if kind == "onnx":
        digest = _known_digest(spec, weights_path)
        graph = cached_graph(CacheKey.of(spec, digest)) if digest is not None else None
        if graph is not None:
            return Backbone(spec, digest, graph, weights_path)  # type: ignore[arg-type]
    module, digest = build_backbone(spec, weights_path)
    if kind == "onnx":
        return Backbone(spec, digest, exported_graph(module, CacheKey.of(spec, digest)), weights_path)
    return Backbone(spec, digest, TorchEngine(module, device), weights_path)


class _FlatEngine:
    """An engine whose (N, C, H, W) output comes back as (N, C*H*W) rows, as the cache stores them."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.inner(batch).reshape(len(batch), -1)

    def for_streams(self, streams: int) -> _FlatEngine:
        return _FlatEngine(self.inner.for_streams(streams))


def load_front(module: torch.nn.Module, key: CacheKey, device: str = "cpu", engine: str = "auto") -> Front:
    """A frozen front (`key.stages` > 0) as a Front: on a CPU its ONNX graph, exported once, then cached."""
    import torch

    with torch.inference_mode():  # probed where the module is: a second split's call finds it on the GPU
        size = key.input_size
        at = next(module.parameters(), torch.zeros(0)).device
        shape = tuple(module.eval()(torch.zeros(1, 3, size, size, device=at)).shape[1:])
    if choose_engine(engine, device) != "onnx":
        return Front(key, _FlatEngine(TorchEngine(module, device)), shape)
    return Front(key, _FlatEngine(cached_graph(key) or exported_graph(module, key)), shape)
