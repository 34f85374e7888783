"""On-disk cache of what a network computes from photos: two kinds of cached output, a backbone's pooled
features (float32, under features/) and a frozen front's activations (float16, under activations/), plus the
ONNX graphs that compute them (under onnx/).

`CacheKey` is the one recipe of every key: entries live under a namespace that digests everything the
output depends on (backbone, weights, preprocessing, loader version; the cut for activations; the
augmentation and view for augmented features), keyed by the file's path, size and modification time.
Each entry carries a CRC so a damaged one is detected and recomputed rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import atomic_write_bytes
from ..data.images import LOADER_VERSION
from ..data.preprocess import Preprocessing
from ..errors import OutputError

if TYPE_CHECKING:
    from ..data.augment import Augment
    from .spec import BackboneSpec

ONNX_EXPORT_VERSION = 1  # bump when a backbone's ONNX export changes: it is part of its graph's key
FRONT_EXPORT_VERSION = 1  # bump when the cut or its export changes: it is part of the activations' keys
SPATIAL_EXPORT_VERSION = 1  # bump when the spatial graph (feature maps beside pooled features) changes

# One magic per stored element type: float32 feature vectors, float16 activation maps
# (a frozen front's output is 10-20x larger than a feature vector; half precision is
# what the tuned stages read anyway).
_MAGICS = {np.dtype("<f4"): b"FLFEAT1\0", np.dtype("<f2"): b"FLACT16\0"}
_SUFFIX = {np.dtype("<f4"): ".f32", np.dtype("<f2"): ".f16"}
_HEADER = struct.Struct("<8sII")  # magic, crc32 of payload, element count


def cache_root() -> Path:
    """`FLOWERID_CACHE`, else `$XDG_CACHE_HOME/flowerid`, else `~/.cache/flowerid`."""
    env = os.environ.get("FLOWERID_CACHE")
    xdg = os.environ.get("XDG_CACHE_HOME")
    try:
        if env:
            return Path(env).expanduser()
        base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    except RuntimeError:  # ~someone who does not exist, or no home at all
        where = f"FLOWERID_CACHE={env}" if env else "the home folder"
        raise OutputError(
            f"the feature cache's place cannot be found ({where}); set FLOWERID_CACHE to a folder"
        ) from None
    return base / "flowerid"


def namespace_for(parts: dict[str, Any]) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class CacheKey:
    """What a network's cached output depends on, and so where it and its ONNX graph are kept.

    `stages` 0: the backbone's pooled features (kind "features", float32); N > 0: the activations of its
    front before its last N stages (kind "activations", float16), what the tuned mode trains on. The
    engine is not part of any key (its outputs agree to 1e-4). These recipes are those warm caches were
    written under: changing one makes every cache cold.
    """

    name: str  # the backbone's (an ensemble member's front fed the ensemble's view: "ensemble.member")
    digest: str  # its pretrained weights
    preprocessing: Preprocessing
    input_size: int
    stages: int = 0

    @classmethod
    def of(cls, spec: BackboneSpec, digest: str, stages: int = 0) -> CacheKey:
        return cls(spec.name, digest, spec.preprocessing, spec.input_size, stages)

    @property
    def kind(self) -> str:
        return "activations" if self.stages else "features"

    @property
    def dtype(self) -> str:
        return "float16" if self.stages else "float32"

    def namespace(self, augment: Augment | None = None, view: int = 0) -> str:
        """The entries' namespace; an augmented view of the photos (features only) has its own."""
        parts: dict[str, Any] = {
            "backbone": self.name,
            "weights": self.digest,
            "preprocessing": self.preprocessing.to_dict(),
            "loader": LOADER_VERSION,
        }
        if self.stages:
            parts.update(front_of_last_stages=self.stages, version=FRONT_EXPORT_VERSION)
        if augment is not None:
            parts.update(augment=augment.to_dict(), view=view)
        return namespace_for(parts)

    def graph_path(self) -> Path:
        """Where the ONNX graph computing this output is cached."""
        if self.stages:
            return cache_root() / "onnx" / f"{self.name}-front-{self.namespace()}.onnx"
        parts = {"backbone": self.name, "weights": self.digest, "size": self.input_size, "export": ONNX_EXPORT_VERSION}
        return cache_root() / "onnx" / f"{self.name}-{namespace_for(parts)}.onnx"

    def spatial_graph_path(self) -> Path:
        """Where the graph giving the network's feature maps beside its pooled features is cached (explanations)."""
        parts = {"backbone": self.name, "weights": self.digest, "size": self.input_size, "graph": "spatial",
                 "export": SPATIAL_EXPORT_VERSION}  # fmt: skip
        return cache_root() / "onnx" / f"{self.name}-spatial-{namespace_for(parts)}.onnx"


class FeatureCache:
    """Vectors for one namespace; `get` returns None for missing or damaged entries.

    `dtype` float32 (features) or float16 (a frozen front's activations, kept
    under activations/ so that clearing one kind leaves the other): `CacheKey.dtype`.
    """

    def __init__(self, namespace: str, root: Path | None = None, dtype: str = "float32") -> None:
        self.dtype = np.dtype(dtype).newbyteorder("<")
        if self.dtype not in _MAGICS:
            raise ValueError(f"cache entries are float32 or float16, not {dtype}")
        kind = "features" if self.dtype == np.dtype("<f4") else "activations"
        self.dir = (root or cache_root()) / kind / namespace

    @staticmethod
    def file_key(path: str | os.PathLike) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        ident = f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
        return hashlib.sha1(ident.encode("utf-8", "surrogateescape")).hexdigest()

    def _entry(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}{_SUFFIX[self.dtype]}"

    def get(self, path: str | os.PathLike) -> np.ndarray | None:
        key = self.file_key(path)
        if key is None:
            return None
        try:
            blob = self._entry(key).read_bytes()
        except OSError:
            return None
        return decode_entry(blob, self.dtype)

    def put(self, path: str | os.PathLike, vector: np.ndarray) -> None:
        key = self.file_key(path)
        if key is None:
            return
        try:
            atomic_write_bytes(self._entry(key), encode_entry(vector, self.dtype), fsync=False)
        except OutputError as exc:
            raise OutputError(f"{exc} (the feature cache: set FLOWERID_CACHE to put it elsewhere)") from None


def encode_entry(vector: np.ndarray, dtype: np.dtype | str = "<f4") -> bytes:
    dtype = np.dtype(dtype).newbyteorder("<")
    payload = np.ascontiguousarray(vector, dtype=dtype).tobytes()
    return _HEADER.pack(_MAGICS[dtype], zlib.crc32(payload), vector.size) + payload


def decode_entry(blob: bytes, dtype: np.dtype | str = "<f4") -> np.ndarray | None:
    """The stored vector in its native type, or None if the entry is damaged or of another type."""
    dtype = np.dtype(dtype).newbyteorder("<")
    if len(blob) < _HEADER.size:
        return None
    magic, crc, count = _HEADER.unpack_from(blob)
    payload = blob[_HEADER.size :]
    if magic != _MAGICS[dtype] or len(payload) != dtype.itemsize * count or zlib.crc32(payload) != crc:
        return None
    return np.frombuffer(payload, dtype=dtype).astype(dtype.newbyteorder("="))
