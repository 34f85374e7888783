"""Photos named on a command line, folders walked, in a stable order and without holding the list.

Folders are walked depth first, each folder's entries in name order, following
symbolic links; a folder reached twice (a link loop, or two links to one folder)
is walked once. Memory grows with the depth and width of the tree, never with
the number of photos, so a folder of millions streams.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

from .images import looks_like_image

Warn = Callable[[str, str], None]


#: Folders that systems and archivers leave among photos: never categories, never photos.
DEBRIS = frozenset({"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information"})


def is_ignored(name: str) -> bool:
    """Hidden files and folders, and the debris above: left out of every walk, quietly."""
    return name.startswith(".") or name in DEBRIS


def _dir_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def walk_photos(folder: str, warn: Warn | None = None, seen: set[tuple[int, int]] | None = None) -> Iterator[str]:
    """Image files under `folder` (links followed), depth first in name order.

    Files that are obviously not images (`notes.txt`, `Thumbs.db`) are left out; a
    folder that cannot be listed is passed to `warn(path, reason)` and skipped.
    """
    seen = set() if seen is None else seen
    root_id = _dir_id(folder)
    if root_id is None or root_id in seen:
        return
    seen.add(root_id)
    stack: list[Iterator[os.DirEntry[str]]] = []

    def listing(path: str) -> Iterator[os.DirEntry[str]] | None:
        try:
            with os.scandir(path) as it:
                entries = sorted((e for e in it if not is_ignored(e.name)), key=lambda e: e.name)
        except OSError as exc:
            if warn:
                warn(path, exc.strerror or type(exc).__name__)
            return None
        return iter(entries)

    first = listing(folder)
    if first is not None:
        stack.append(first)
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        try:
            is_dir = entry.is_dir()  # follows links
            is_file = not is_dir and entry.is_file()
        except OSError:
            continue
        if is_dir:
            ident = _dir_id(entry.path)
            if ident is None or ident in seen:
                continue
            seen.add(ident)
            sub = listing(entry.path)
            if sub is not None:
                stack.append(sub)
        elif is_file and looks_like_image(entry.path):
            yield entry.path


def iter_photos(inputs: Iterable[str], warn: Warn | None = None) -> Iterator[str]:
    """Each input in the order given: a folder's photos (walked), anything else as it is.

    A named file that is not readable stays in the stream, so its row can say why.
    """
    seen: set[tuple[int, int]] = set()
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            yield from walk_photos(item, warn, seen)
        else:
            yield item
