"""Read a torch checkpoint (zip format) into plain Python and numpy, without importing torch.

`predict` must answer in about a second, and importing torch alone takes two. Like
`torch.load(weights_only=True)` this never runs code from the file: the unpickler
knows exactly one callable (the tensor rebuilder, which makes a numpy array) and
refuses every other global.
"""

from __future__ import annotations

import collections
import math
import os
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


class _Unpickler(pickle.Unpickler):
    """Tensors as numpy arrays, made from the archive's storages within `budget` bytes: a small file that
    asks for gigabytes (an expanded view, shared storage read again and again) is refused, not obeyed."""

    def __init__(self, file: IO[bytes], archive: zipfile.ZipFile, prefix: str, byteorder: str, budget: int) -> None:
        super().__init__(file)
        self.archive, self.prefix, self.byteorder, self.left = archive, prefix, byteorder, budget
        self.storages: dict[Any, np.ndarray] = {}

    def _charge(self, nbytes: int) -> None:
        if nbytes > self.left:
            raise pickle.UnpicklingError(
                "the file asks for far more memory than its size holds; it is damaged or hostile"
            )
        self.left -= nbytes

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor_v2
        if module == "torch" and name in _DTYPES:
            return _Storage(_DTYPES[name])
        if module == "torch" and name.endswith("Storage"):  # bfloat16, complex...: data, but not a head's
            kind = name.removesuffix("Storage")
            raise pickle.UnpicklingError(f"it holds {kind} tensors; flowerid reads float32 and float16 ones")
        raise UnsafeCheckpoint(f"the file refers to {module}.{name}, which a plain-data checkpoint never needs")

    def _rebuild_tensor_v2(self, storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
        if not size:
            return storage[offset].copy()
        item = storage.itemsize
        needed = offset + 1 + sum((s - 1) * st for s, st in zip(size, stride, strict=True) if s > 0)
        if any(s == 0 for s in size):
            return np.zeros(size, dtype=storage.dtype)
        if needed > storage.size or offset < 0 or any(st < 0 for st in stride):
            raise pickle.UnpicklingError("tensor view outside its storage")
        if math.prod(size) > storage.size - offset:
            # An expanded view (stride 0) of a few numbers would become gigabytes here: a 1 MB file asking
            # for 20000 x 20000 floats. Checkpoints hold tensors, not views that repeat their storage.
            raise pickle.UnpicklingError("a tensor repeats its storage (an expanded view); re-save it with flowerid")
        self._charge(math.prod(size) * item)
        view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[st * item for st in stride])
        return np.ascontiguousarray(view)

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise pickle.UnpicklingError("unknown persistent id")
        _, storage, key, _location, numel = pid
        if key in self.storages:  # views of one storage share it: read once
            return self.storages[key]
        info = self.archive.getinfo(f"{self.prefix}data/{key}")
        self._charge(info.file_size)
        raw = self.archive.read(info)
        dtype = np.dtype(storage.dtype).newbyteorder("<" if self.byteorder == "little" else ">")
        arr = np.frombuffer(raw, dtype=dtype)
        if arr.size < numel:
            raise pickle.UnpicklingError("storage shorter than recorded")
        self.storages[key] = arr.astype(arr.dtype.newbyteorder("="), copy=False)
        return self.storages[key]


def _refuse_bomb(archive: zipfile.ZipFile, size: int) -> None:
    """Refuse a zip whose contents unpack to far more than the file (a compression bomb): torch writes its
    files stored, not compressed, so a real checkpoint unpacks to about its own size."""
    unpacked = sum(i.file_size for i in archive.infolist())
    if unpacked > 2 * size + (1 << 20):
        raise pickle.UnpicklingError(
            f"it unpacks to {unpacked:,} bytes, far more than its size; it is not as torch writes"
        )


def check_archive(path: str) -> None:
    """`_refuse_bomb` for a file torch itself is about to read."""
    try:
        with zipfile.ZipFile(path) as archive:
            _refuse_bomb(archive, os.path.getsize(path))
    except zipfile.BadZipFile:
        return  # a legacy pickle, or damage the reader reports


def load(path: str) -> Any:
    """Load a torch zip checkpoint; tensors come back as numpy arrays, at most twice the file's size of them."""
    size = os.path.getsize(path)
    with zipfile.ZipFile(path) as archive:
        _refuse_bomb(archive, size)
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise pickle.UnpicklingError("no data.pkl in the archive")
        prefix = pkl[: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
        with archive.open(pkl) as f:
            return _Unpickler(f, archive, prefix, byteorder, budget=2 * size + (64 << 20)).load()
