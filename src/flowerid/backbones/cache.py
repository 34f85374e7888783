"""On-disk cache of per-image feature vectors (float32) and frozen-front activations (float16).

Entries live under a namespace that digests everything the features depend on
(backbone, weights, preprocessing, loader version), keyed by the file's path,
size and modification time. Each entry carries a CRC so a damaged one is
detected and recomputed rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes

# One magic per stored element type: float32 feature vectors, float16 activation maps
# (a frozen front's output is 10-20x larger than a feature vector; half precision is
# what the tuned stages read anyway).
_MAGICS = {np.dtype("<f4"): b"FLFEAT1\0", np.dtype("<f2"): b"FLACT16\0"}
_SUFFIX = {np.dtype("<f4"): ".f32", np.dtype("<f2"): ".f16"}
_HEADER = struct.Struct("<8sII")  # magic, crc32 of payload, element count


def cache_root() -> Path:
    """`FLOWERID_CACHE`, else `$XDG_CACHE_HOME/flowerid`, else `~/.cache/flowerid`."""
    env = os.environ.get("FLOWERID_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "flowerid"


def namespace_for(parts: dict[str, Any]) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class FeatureCache:
    """Vectors for one namespace; `get` returns None for missing or damaged entries.

    `dtype` float32 (features) or float16 (a frozen front's activations, kept
    under activations/ so that clearing one kind leaves the other).
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
        atomic_write_bytes(self._entry(key), encode_entry(vector, self.dtype), fsync=False)


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
