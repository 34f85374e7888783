"""Atomic file writes: a crash leaves either the old file or the new one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import OutputError

# mkstemp makes 0600 files; written files get the usual 0666 & ~umask instead, so a web
# server or an app bundler can read an export. Read once: os.umask can only be read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}  # the place, not the data: say so in one line
_WHERE = "choose a folder you can write to"


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None], *, fsync: bool = True) -> Path:
    """Write through `write(fileobj)` into a temp file beside `path`, then rename over it.

    `fsync=False` skips the flush to disk: still atomic against a crashed process,
    for files (cache entries) that are checked on reading anyway. A place that cannot be written
    (no such folder, no permission, a full or read-only disk) raises OutputError.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {os_error_reason(exc, path)}; {_WHERE}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in _FULL:
            raise OutputError(f"cannot write {path}: {exc.strerror}; free some space or {_WHERE}") from None
        raise
    return path


def os_error_reason(exc: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """What an OSError means for a person: a file in the way of a folder is said as such, else strerror."""
    if isinstance(exc, FileExistsError | NotADirectoryError):
        target = Path(path if path is not None else exc.filename or ".")
        blocker = next((p for p in (target, *target.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a folder"
    return exc.strerror or str(exc)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable: without this a power cut can forget it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    return atomic_write(path, lambda f: f.write(data), fsync=fsync)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Readable UTF-8; a file name that is not UTF-8 (a lone surrogate) falls back to \\u escapes,
    which json.loads turns back into the same name, so the path still opens."""
    try:
        data = (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        data = (json.dumps(obj, indent=2, ensure_ascii=True) + "\n").encode("ascii")
    return atomic_write_bytes(path, data)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
