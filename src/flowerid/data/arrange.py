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
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .._text import Log, shown
from ..errors import DataError
from .folders import list_images
from .layout import split_role
from .walk import is_ignored

# What a copy adds to a name ("cat.1 (1).jpg", "dog.2 - Copy.jpg"), then the number at the end with what
# separates it ("cat.12" -> "cat", "american_bulldog_104" -> "american_bulldog").
_COPY_SUFFIX = re.compile(r"(\s*\(\d+\)|\s*-\s*copy(\s*\(\d+\))?|\s+copy)$", re.IGNORECASE)
_NUMBER_AT_END = re.compile(r"[\s._-]*\d+$")
# Cameras and phones start their file names with these: IMG_0042.jpg says nothing of what is in it.
_CAMERA_PREFIXES = frozenset(("img", "image", "images", "imag", "pic", "pict", "picture", "photo", "photos",
    "dsc", "dscn", "dscf", "dcim", "pxl", "mvimg", "vid", "scan", "screenshot", "frame", "gopr", "dji", "sam",
    "wp", "cimg", "p"))  # fmt: skip
_FILE_COLUMNS = ("file", "filename", "file_name", "filepath", "file_path", "fname", "image", "image_name",
                 "image_id", "image_path", "img", "img_name", "path", "id", "name")  # fmt: skip
_LABEL_COLUMNS = ("label", "labels", "class", "class_name", "classname", "category", "category_name",
                  "species", "breed", "target", "y")  # fmt: skip
_NAME_BYTES = 200  # a folder name's bytes: file systems take 255

Places = dict[Path, tuple[str, str]]  # photo -> (split, folder)


@dataclass
class Arranged:
    """What `arrange` made: photos per category and split, and what it left out and why."""

    dest: Path
    counts: dict[str, Counter[str]] = field(default_factory=dict)  # split ("" without splits) -> folder -> photos
    left_out: dict[str, str] = field(default_factory=dict)  # photo or CSV entry -> why
    renamed: dict[str, str] = field(default_factory=dict)  # label -> the folder it got, where not its own name

    @property
    def labels(self) -> list[str]:
        return sorted({label for c in self.counts.values() for label in c})


def label_from_name(path: str | os.PathLike) -> str | None:
    """The label a file name carries ("cat.12.jpg" -> "cat"), or None where it carries none ("0042.jpg",
    "IMG_0042.jpg", "sunflower.jpg": no number says the rest is a label)."""
    stem = _COPY_SUFFIX.sub("", Path(path).stem)
    label = _NUMBER_AT_END.sub("", stem).strip(" ._-")
    if not label or label == stem or not any(ch.isalpha() for ch in label):
        return None
    if re.split(r"[\s._-]", label, maxsplit=1)[0].casefold() in _CAMERA_PREFIXES:
        return None
    return label


def labels_in_names(photos: list[Path]) -> Counter[str]:
    """How many photos carry each label in their file names (labels differing only in case are one); empty
    unless at least two labels have two photos each and most photos carry one."""
    counts = _one_spelling(Counter(label for label in map(label_from_name, photos) if label))
    if sum(n >= 2 for n in counts.values()) < 2 or sum(counts.values()) < 0.8 * len(photos):
        return Counter()
    return counts


def _folded(label: str) -> str:
    return unicodedata.normalize("NFC", label).casefold()


def _one_spelling(counts: Counter[str]) -> Counter[str]:
    """Labels that differ only in case ("cat", "Cat", "CAT") counted as one, under their commonest spelling."""
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    for label, n in counts.items():
        groups[_folded(label)][label] = n
    return Counter({c.most_common(1)[0][0]: sum(c.values()) for c in groups.values()})


def labelled_by_names(folders: dict[str, list[Path]]) -> tuple[str, Counter[str]] | None:
    """(folder, labels) for a data set that reads as one category per split-like folder (`train/`,
    `test1/`) or as one category, though its file names carry the labels; None for an ordinary one."""
    splitlike = all(split_role(re.sub(r"\d+$", "", name)) for name in folders)
    if len(folders) > 1 and not splitlike:
        return None
    for name, photos in folders.items():
        labels = labels_in_names(photos)
        if labels:
            return name, labels
    return None


def arrange_hint(data_dir: str | os.PathLike, folder: str, labels: Counter[str]) -> str:
    seen = ", ".join(f"{shown(label)}: {n}" for label, n in labels.most_common(3))
    return (
        f"the file names in {shown(folder)} carry labels ({seen}{', ...' if len(labels) > 3 else ''}); lay "
        f"them out as one folder per category with `flowerid arrange {shown(data_dir)} NEW_FOLDER`"
    )


def folder_name(label: str) -> str:
    """A label as a folder name every command reads as that category: no path separators or control
    characters, not hidden, not a split's name (train, test...), at most 200 bytes."""
    text = unicodedata.normalize("NFC", label).replace("/", "_").replace("\\", "_")
    text = " ".join("".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf")).split())
    if text in ("", ".", ".."):
        raise DataError(f"the label {shown(label)!r} cannot be a folder name; give it letters")
    if text.startswith("."):
        text = "_" + text
    if split_role(text) or is_ignored(text):
        text += "_"
    return text.encode("utf-8")[:_NAME_BYTES].decode("utf-8", "ignore")


def _splits(src: Path) -> tuple[list[tuple[str, Path]], list[Path]]:
    """The source's split folders (train/, test/...) by role, or the source itself as one unsplit folder;
    and, beside split folders, the other photos (loose or in folders that are no split), left out."""
    found, others = [], []
    for e in sorted(os.scandir(src), key=lambda e: e.name):
        if is_ignored(e.name):
            continue
        if e.is_dir() and split_role(e.name):
            found.append((split_role(e.name) or e.name, Path(e.path)))
        else:
            others.append(Path(e.path))
    if not found:
        return [("", src)], []
    outside = [p for o in others for p in (list_images(o) if o.is_dir() else [o] if o.is_file() else [])]
    return found, outside


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


def _index(photos: list[Path], src: Path) -> dict[str, list[Path]]:
    """Each photo under its path inside the source, its file name and its stem (a CSV may use any of them)."""
    index: dict[str, list[Path]] = defaultdict(list)
    for p in photos:
        for key in {p.relative_to(src).as_posix(), p.name, p.stem}:
            index[key].append(p)
    return index


def _split_of(photo: Path, src: Path) -> str:
    parts = photo.relative_to(src).parts
    return (split_role(parts[0]) or "") if len(parts) > 1 else ""


def _from_csv(src: Path, labels_csv: Path, result: Arranged) -> dict[Path, tuple[str, str]]:
    photos = list_images(src)
    index = _index(photos, src)
    labelled: dict[Path, tuple[str, str]] = {}
    for name, label in _read_csv(labels_csv):
        key = name.replace("\\", "/").removeprefix("./")
        found = index.get(key) or index.get(Path(key).name) or []
        if not found:
            result.left_out[name] = "the CSV names it, but no photo under the source has that name"
        elif len(found) > 1:
            result.left_out[name] = f"the CSV's name fits {len(found)} photos; give its path inside the source"
        elif not label:
            result.left_out[name] = "its label in the CSV is empty"
        elif found[0] in labelled and labelled[found[0]][1] != label:
            result.left_out[str(found[0])] = f"the CSV gives it two labels ({labelled[found[0]][1]!r}, {label!r})"
        else:
            labelled[found[0]] = (_split_of(found[0], src), label)
    for p in [p for p in labelled if str(p) in result.left_out]:
        del labelled[p]
    for p in photos:
        if p not in labelled and str(p) not in result.left_out:
            result.left_out[str(p)] = "the CSV gives it no label"
    return labelled


def _from_names(src: Path, result: Arranged) -> dict[Path, tuple[str, str]]:
    splits, outside = _splits(src)
    for p in outside:
        result.left_out[str(p)] = "not in a split folder (train/, valid/, test/)"
    labelled: dict[Path, tuple[str, str]] = {}
    for split, folder in splits:
        for p in list_images(folder):
            label = label_from_name(p)
            if label is None:
                result.left_out[str(p)] = "its file name carries no label"
            else:
                labelled[p] = (split, label)
    return labelled


def plan(src: str | os.PathLike, labels_csv: str | os.PathLike | None = None) -> tuple[Places, Arranged]:
    """Where each photo goes, and what is left out and why; DataError for fewer than two categories, or
    two labels that would share one folder."""
    src = Path(os.path.abspath(src))
    if not src.is_dir():
        raise DataError(f"{src} is not a folder; give the folder that holds the photos")
    result = Arranged(Path())
    labelled = _from_names(src, result) if labels_csv is None else _from_csv(src, Path(labels_csv), result)
    spelling = {_folded(lb): lb for lb in _one_spelling(Counter(lb for _, lb in labelled.values()))}
    folders: dict[str, set[str]] = defaultdict(set)
    places: Places = {}
    for photo, (split, label) in labelled.items():
        folder = folder_name(spelling[_folded(label)])
        folders[folder].add(spelling[_folded(label)])
        if folder != label:
            result.renamed[label] = folder
        places[photo] = (split, folder)
    shared = {f: sorted(ls) for f, ls in folders.items() if len(ls) > 1}
    if shared:
        f, ls = next(iter(shared.items()))
        raise DataError(
            f"the labels {', '.join(repr(shown(x)) for x in ls)} would share the folder {shown(f)!r}; "
            "make them differ in more than slashes and length"
        )
    for split, folder in places.values():
        result.counts.setdefault(split, Counter())[folder] += 1
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
    dest = Path(os.path.abspath(dest))
    if dest.exists() and (not dest.is_dir() or any(os.scandir(dest))):
        raise DataError(f"{dest} already exists and is not an empty folder; choose a new folder")
    source = Path(os.path.realpath(src))
    if Path(os.path.realpath(dest)).is_relative_to(source):
        raise DataError(f"{dest} is inside {src}, whose photos it would hold twice; choose a folder outside it")
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
    for label, folder in result.renamed.items():
        log(f"label {shown(label)!r} is the folder {shown(folder)!r}")
    for what, why in list(result.left_out.items())[:5]:
        log(f"left out {shown(what)}: {why}")
    return result
