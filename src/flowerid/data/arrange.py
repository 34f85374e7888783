"""Photos whose labels live in their file names (`cat.12.jpg`, `american_bulldog_104.jpg`, as Kaggle's
Dogs vs. Cats and Oxford's Pets ship them) or in a CSV (`file,label`), laid out as one folder per
category, the layout every flowerid command reads.

The new tree holds symbolic links to the photos (or copies, `copy=True`), so nothing large is written. A
`train/`, `valid/`, `test/` split in the source is kept. It is built in a temporary folder beside the
destination and renamed into place, so an interrupted run leaves nothing half-made.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import stat
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .._text import Log, shown
from ..errors import DataError
from .folders import list_images
from .layout import split_role
from .walk import is_ignored

# The number at the end of a stem, with what separates it: "cat.12" -> "cat", "american_bulldog_104" ->
# "american_bulldog", "IMG 0042" -> "IMG".
_NUMBER_AT_END = re.compile(r"[\s._-]*\d+$")
_FILE_COLUMNS = ("file", "filename", "file_name", "image", "image_id", "img", "path", "id", "name")
_LABEL_COLUMNS = ("label", "class", "category", "species", "breed", "target", "y")


@dataclass
class Arranged:
    """What `arrange` made: photos per category and split, and what it left out and why."""

    dest: Path
    counts: dict[str, Counter[str]] = field(default_factory=dict)  # split ("" without splits) -> label -> photos
    unlabelled: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # CSV rows naming no photo under the source

    @property
    def labels(self) -> list[str]:
        return sorted({label for c in self.counts.values() for label in c})


def label_from_name(path: str | os.PathLike) -> str | None:
    """The label a file name carries ("cat.12.jpg" -> "cat"), or None where it carries none ("0042.jpg")."""
    stem = Path(path).stem
    label = _NUMBER_AT_END.sub("", stem).strip(" ._-")
    return label if label and label != stem else None


def folder_name(label: str) -> str:
    """A label as a folder name: no path separators, no control characters, not '.' or '..'."""
    text = unicodedata.normalize("NFC", label).replace("/", "_").replace("\\", "_")
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf")).strip()
    if text in ("", ".", ".."):
        raise DataError(f"the label {shown(label)!r} cannot be a folder name; give it letters")
    return text[:200]


def labels_in_names(photos: list[Path]) -> Counter[str]:
    """How many photos carry each label in their file names; empty unless at least two labels do."""
    counts = Counter(label for label in map(label_from_name, photos) if label)
    return counts if len(counts) >= 2 else Counter()


def _splits(src: Path) -> list[tuple[str, Path]]:
    """The source's split folders (train/, test/...) by role, or the source itself as one unsplit folder."""
    found = []
    for e in sorted(os.scandir(src), key=lambda e: e.name):
        if e.is_dir() and not is_ignored(e.name) and split_role(e.name):
            found.append((split_role(e.name) or e.name, Path(e.path)))
    return found or [("", src)]


def _read_csv(path: Path) -> list[tuple[str, str]]:
    """(file, label) rows: columns found by their header's names, else the first two columns."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise DataError(f"{path} is not a regular file; give the CSV of file names and labels")
        with open(path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(64 * 1024)
            f.seek(0)
            try:
                dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
            except csv.Error:
                dialect = csv.excel
            rows = [r for r in csv.reader(f, dialect) if any(cell.strip() for cell in r)]
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise DataError(f"{path} is not a CSV file ({exc})") from None
    if not rows:
        raise DataError(f"{path} is empty; expected rows of file name and label")
    head = [cell.strip().lower() for cell in rows[0]]
    file_col = next((head.index(c) for c in _FILE_COLUMNS if c in head), None)
    label_col = next((head.index(c) for c in _LABEL_COLUMNS if c in head), None)
    if file_col is not None and label_col is not None:
        rows = rows[1:]
    else:
        file_col, label_col = 0, 1
    if any(len(r) <= max(file_col, label_col) for r in rows):
        raise DataError(f"{path}: every row needs a file name and a label (columns {file_col + 1} and {label_col + 1})")
    return [(r[file_col].strip(), r[label_col].strip()) for r in rows]


def _by_name(photos: list[Path], src: Path) -> dict[str, Path]:
    """Each photo under its path inside the source, its file name and its stem (a CSV may use any of them)."""
    index: dict[str, Path] = {}
    for p in photos:
        for key in (p.relative_to(src).as_posix(), p.name, p.stem):
            index.setdefault(key, p)
    return index


Places = dict[Path, tuple[str, str]]  # photo -> (split, label)


def plan(
    src: str | os.PathLike, labels_csv: str | os.PathLike | None = None
) -> tuple[dict[Path, tuple[str, str]], Arranged]:
    """Where each photo goes: photo -> (split, label); and the counts, unlabelled and missing lists."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src} is not a folder; give the folder that holds the photos")
    places: Places = {}
    result = Arranged(Path())
    if labels_csv is not None:
        photos = list_images(src)
        index = _by_name(photos, src)
        for name, label in _read_csv(Path(labels_csv)):
            photo = index.get(name.replace("\\", "/").removeprefix("./")) or index.get(Path(name).name)
            if photo is None:
                result.missing.append(name)
            elif label:
                places[photo] = ("", folder_name(label))
        result.unlabelled = [str(p) for p in photos if p not in places]
    else:
        for split, folder in _splits(src):
            photos = list_images(folder)
            if not labels_in_names(photos):
                continue
            for p in photos:
                label = label_from_name(p)
                if label is None:
                    result.unlabelled.append(str(p))
                else:
                    places[p] = (split, folder_name(label))
    for split, label in places.values():
        result.counts.setdefault(split, Counter())[label] += 1
    if len(result.labels) < 2:
        how = (
            f"{labels_csv} gives fewer than two labels to photos under {src}"
            if labels_csv is not None
            else f"the file names under {src} do not carry labels (as in cat.1.jpg, dog.1.jpg)"
        )
        raise DataError(f"{how}; nothing to arrange")
    return places, result


def arrange(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    *,
    copy: bool = False,
    log: Log = lambda _: None,
) -> Arranged:
    """Lay the photos under `src` out as `dest/[split/]label/photo`, links (or copies) of the originals."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(os.scandir(dest))):
        raise DataError(f"{dest} already exists and is not an empty folder; choose a new folder")
    places, result = plan(src, labels_csv)
    result.dest = dest
    tmp = dest.parent / f".{dest.name}.arranging"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        used: set[Path] = set()
        for photo, (split, label) in sorted(places.items()):
            folder = tmp / split / label if split else tmp / label
            target = folder / photo.name
            n = 1
            while target in used:  # the same file name in two source folders
                n += 1
                target = folder / f"{photo.stem}-{n}{photo.suffix}"
            used.add(target)
            folder.mkdir(parents=True, exist_ok=True)
            if copy:
                shutil.copy2(photo, target)
            else:
                os.symlink(photo.resolve(), target)
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for p in result.unlabelled[:5]:
        log(f"no label: {shown(p)}")
    for name in result.missing[:5]:
        log(f"no photo for the CSV's {shown(name)!r}")
    return result
