"""Read a torch checkpoint (zip format) into plain Python and numpy, without importing torch.

`predict` must answer in about a second, and importing torch alone takes two. Like
`torch.load(weights_only=True)` this never runs code from the file: the unpickler
knows exactly one callable (the tensor rebuilder, which makes a numpy array) and
refuses every other global.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from typing import IO, Any

import numpy as np

_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeCheckpoint(pickle.UnpicklingError):
    """The file names a global beyond tensors and plain data."""


class _Storage:
    def __init__(self, dtype: type) -> None:
        self.dtype = dtype


def _rebuild_tensor_v2(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    if not size:
        return storage[offset].copy()
    item = storage.itemsize
    needed = offset + 1 + sum((s - 1) * st for s, st in zip(size, stride, strict=True) if s > 0)
    if any(s == 0 for s in size):
        return np.zeros(size, dtype=storage.dtype)
    if needed > storage.size or offset < 0 or any(st < 0 for st in stride):
        raise pickle.UnpicklingError("tensor view outside its storage")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[st * item for st in stride])
    return np.ascontiguousarray(view)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], archive: zipfile.ZipFile, prefix: str, byteorder: str) -> None:
        super().__init__(file)
        self.archive, self.prefix, self.byteorder = archive, prefix, byteorder

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _DTYPES:
            return _Storage(_DTYPES[name])
        raise UnsafeCheckpoint(f"the file refers to {module}.{name}, which a plain-data checkpoint never needs")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise pickle.UnpicklingError("unknown persistent id")
        _, storage, key, _location, numel = pid
        raw = self.archive.read(f"{self.prefix}data/{key}")
        dtype = np.dtype(storage.dtype).newbyteorder("<" if self.byteorder == "little" else ">")
        arr = np.frombuffer(raw, dtype=dtype)
        if arr.size < numel:
            raise pickle.UnpicklingError("storage shorter than recorded")
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def load(path: str) -> Any:
    """Load a torch zip checkpoint; tensors come back as numpy arrays."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise pickle.UnpicklingError("no data.pkl in the archive")
        prefix = pkl[: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
        with archive.open(pkl) as f:
            return _Unpickler(f, archive, prefix, byteorder).load()
