"""How people lay out labelled photos, and the valid split flowerid makes when they brought none.

Recognised (any case, with or without a `_set`, `-data`, ` images` ending):

- `train/` + `valid/` (or `val/`, `validation/`, `dev/`), maybe `test/` (`testing/`): used as they are;
- `train/` (or `training/`, `training_set/`) alone or with `test/`: valid is held out of train;
- one folder per category and no split at all: valid is held out of all of them.

A held-out valid is stratified (the same share of every category) and chosen by a digest of
each file's path inside its split and a seed, not by a random generator: the same photos every
run, on every machine, and adding photos later does not reshuffle the ones already there.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .images import looks_like_image
from .walk import is_ignored

SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "valid": ("valid", "val", "validation", "dev"),
    "test": ("test", "testing"),
}
VALID_FRACTION = 0.2  # the usual 80/20 split; at least 1 photo a category goes to valid
SPLIT_SEED = 0
MIN_TO_SPLIT = 3  # two photos to train on and one to check against, per category
_ENDING = re.compile(r"[\s_\-.]*(set|data|images|split)$")


def split_role(name: str) -> str | None:
    """ "train", "valid" or "test" for a folder name people use for that split; None for any other name."""
    base = _ENDING.sub("", name.strip().lower()) or name.lower()
    for role, names in SPLIT_NAMES.items():
        if base in names:
            return role
    return None


def _known_names() -> str:
    return "; ".join(", ".join(names) for names in SPLIT_NAMES.values())


def _subdirs(root: Path) -> list[Path]:
    return sorted(Path(e.path) for e in os.scandir(root) if e.is_dir() and not is_ignored(e.name))


def _has_photos_directly(folder: Path) -> bool:
    try:
        return any(e.is_file() and not e.name.startswith(".") and looks_like_image(e.path) for e in os.scandir(folder))
    except OSError:
        return False


@dataclass
class Layout:
    """Where each split's category folders are; `valid` None: held out of `train` (or of `root` when flat)."""

    root: Path
    train: Path
    valid: Path | None
    test: Path | None
    flat: bool = False
    ignored: list[str] = field(default_factory=list)  # folders next to the splits that are none of them

    def describe(self) -> str:
        def rel(p: Path | None) -> str:
            return "-" if p is None else ("." if p == self.root else f"{p.relative_to(self.root)}/")

        if self.flat:
            return "one folder per category, no split"
        return f"train {rel(self.train)}, valid {rel(self.valid) if self.valid else '(held out of train)'}" + (
            f", test {rel(self.test)}" if self.test else ""
        )


_ARCHIVES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar")


def not_a_folder(root: Path, what: str = "data folder") -> DataError:
    """The error for a folder argument that is not one: missing, an archive to unpack, or another file."""
    if not root.exists():
        return DataError(f"{what} {root} does not exist")
    if root.suffix.lower() in _ARCHIVES:
        return DataError(f"{what} {root} is an archive; unpack it and give the folder it holds")
    return DataError(f"{what} {root} is a file, not a folder")


def find_layout(data_dir: str | os.PathLike) -> Layout:
    """Recognise the layout of a data folder; DataError naming what was found when none fits."""
    root = Path(data_dir)
    if not root.is_dir():
        raise not_a_folder(root)
    subdirs = _subdirs(root)
    splits: dict[str, list[Path]] = {}
    for d in subdirs:
        role = split_role(d.name)
        # A category called "train" holds photos itself and no folders: only then is it not a split.
        if role is not None and (_subdirs(d) or not _has_photos_directly(d)):
            splits.setdefault(role, []).append(d)
    twice = [f"{' and '.join(p.name + '/' for p in ps)} (both {role})" for role, ps in splits.items() if len(ps) > 1]
    if twice:
        raise DataError(f"{root}: more than one folder for a split: {'; '.join(twice)}; keep one of each")
    if splits:
        return _split_layout(root, subdirs, {r: ps[0] for r, ps in splits.items()})
    if not subdirs:
        where = "photos directly in it" if _has_photos_directly(root) else "nothing to train on"
        raise DataError(
            f"{root} has {where}; expected one folder of photos per category ({root}/<category>/<photos>), "
            f"or split folders such as train/ and val/ each holding those" + _names_hint(root, [root])
        )
    if len(subdirs) == 1 and not _has_photos_directly(root) and _subdirs(subdirs[0]):
        return find_layout(subdirs[0])  # an archive unpacked into a folder of its own name
    named = [d.name for d in subdirs if split_role(d.name)]
    if len(named) >= 2:
        raise DataError(
            f"{root}: {', '.join(n + '/' for n in named)} hold photos directly; split folders hold one folder "
            f"per category ({root}/{named[0]}/<category>/<photos>)" + _names_hint(root, [root / n for n in named])
        )
    return Layout(root, root, None, None, flat=True)


def _names_hint(root: Path, folders: list[Path]) -> str:
    """'; the file names ... carry labels: flowerid arrange ...' where they do, else nothing."""
    from .arrange import arrange_hint, labelled_by_names  # arrange reads layouts: imported when needed
    from .folders import list_images

    photos = {d.name: [p for p in list_images(d) if p.parent == d] for d in folders}
    found = labelled_by_names(photos)
    return "; " + arrange_hint(root, *found) if found else ""


def _split_layout(root: Path, subdirs: list[Path], found: dict[str, Path]) -> Layout:
    if "train" not in found:
        seen = ", ".join(f"{p.name}/ ({role})" for role, p in found.items())
        raise DataError(
            f"{root} has {seen} but no training folder; name it one of: {', '.join(SPLIT_NAMES['train'])} "
            f"(any case; a _set ending is fine)"
        )
    others = [d for d in subdirs if d not in found.values()]
    if "valid" not in found:
        # Another folder of category folders might be the valid split under a name flowerid does not know:
        # holding valid out of train instead would silently ignore it.
        puzzling = [d.name for d in others if _subdirs(d)]
        if puzzling:
            raise DataError(
                f"{root} has {found['train'].name}/ and {', '.join(n + '/' for n in puzzling)}, which is not a "
                f"split name flowerid knows ({_known_names()}; any case). Rename it if it is the validation "
                f"split, or move it out to have valid held out of {found['train'].name}/"
            )
    return Layout(root, found["train"], found.get("valid"), found.get("test"), ignored=[d.name for d in others])


def _rank(seed: int, rel: str) -> str:
    return hashlib.sha256(f"{seed}\0{rel}".encode("utf-8", "surrogateescape")).hexdigest()


def hold_out(
    samples: list[tuple[Path, int]],
    categories: list[str],
    source: Path,
    fraction: float = VALID_FRACTION,
    seed: int = SPLIT_SEED,
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], dict[str, Any]]:
    """Split `samples` into (train, valid): round(fraction x n) of each category's photos, at least one,
    leaving at least two to train on. Returns both and the record of what was done.

    Raises DataError naming every category with fewer than MIN_TO_SPLIT photos.
    """
    by_cat: dict[int, list[tuple[Path, int]]] = {i: [] for i in range(len(categories))}
    for s in samples:
        by_cat[s[1]].append(s)
    few = [f"{categories[i]} ({len(v)})" for i, v in by_cat.items() if len(v) < MIN_TO_SPLIT]
    if few:
        raise DataError(
            f"too few photos to hold out a valid split in: {', '.join(few[:20])}"
            + (" …" if len(few) > 20 else "")
            + f"; each category needs at least {MIN_TO_SPLIT} (2 to train on, 1 to check against): "
            "add photos, remove the category, or bring a valid/ folder"
        )
    chosen: set[Path] = set()
    per_category: dict[str, list[int]] = {}

    def rel(path: Path) -> str:
        return path.relative_to(source).as_posix() if path.is_relative_to(source) else path.as_posix()

    for i, items in by_cat.items():
        n = len(items)
        k = min(max(1, round(fraction * n)), n - 2)
        ranked = sorted(items, key=lambda s: _rank(seed, rel(s[0])))
        chosen.update(s[0] for s in ranked[:k])
        per_category[categories[i]] = [n - k, k]
    train = [s for s in samples if s[0] not in chosen]  # each keeps the order it came in
    valid = [s for s in samples if s[0] in chosen]
    listing = "\n".join(sorted(rel(p) for p, _ in valid))
    record = {
        "held_out_of": str(source),
        "valid_fraction": fraction,
        "seed": seed,
        "train": len(train),
        "valid": len(valid),
        "per_category": per_category,
        "valid_digest": hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest(),
    }
    return train, valid, record


def describe_split(record: dict[str, Any]) -> str:
    """One line for the log: what was held out, how, and the digest that says it is the same as last time."""
    where = "the photos" if record["held_out_of"] == "." else f"{record['held_out_of']}/"
    return (
        f"no valid folder: held out {record['valid_fraction']:.0%} of each category of {where} "
        f"(seed {record['seed']}): {record['train']} train, {record['valid']} valid photos; "
        f"valid list digest {record['valid_digest'][:12]}"
    )
