"""On-disk cache of per-image feature vectors.

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

_MAGIC = b"FLFEAT1\0"
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
    """Feature vectors for one namespace; `get` returns None for missing or damaged entries."""

    def __init__(self, namespace: str, root: Path | None = None) -> None:
        self.dir = (root or cache_root()) / "features" / namespace

    @staticmethod
    def file_key(path: str | os.PathLike) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        ident = f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
        return hashlib.sha1(ident.encode("utf-8", "surrogateescape")).hexdigest()

    def _entry(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.f32"

    def get(self, path: str | os.PathLike) -> np.ndarray | None:
        key = self.file_key(path)
        if key is None:
            return None
        try:
            blob = self._entry(key).read_bytes()
        except OSError:
            return None
        return decode_entry(blob)

    def put(self, path: str | os.PathLike, vector: np.ndarray) -> None:
        key = self.file_key(path)
        if key is None:
            return
        atomic_write_bytes(self._entry(key), encode_entry(vector), fsync=False)


def encode_entry(vector: np.ndarray) -> bytes:
    payload = np.ascontiguousarray(vector, dtype="<f4").tobytes()
    return _HEADER.pack(_MAGIC, zlib.crc32(payload), vector.size) + payload


def decode_entry(blob: bytes) -> np.ndarray | None:
    if len(blob) < _HEADER.size:
        return None
    magic, crc, count = _HEADER.unpack_from(blob)
    payload = blob[_HEADER.size :]
    if magic != _MAGIC or len(payload) != 4 * count or zlib.crc32(payload) != crc:
        return None
    return np.frombuffer(payload, dtype="<f4").astype(np.float32)
