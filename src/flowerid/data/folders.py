"""Reading labelled photo folders (torchvision ImageFolder layout)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes
from .._text import shown
from ..errors import DataError, FlowerIdError, UsageError
from .images import looks_like_image
from .layout import SPLIT_SEED, VALID_FRACTION, Layout, find_layout, hold_out
from .walk import is_ignored

SPLITS = ("train", "valid", "test")
CATEGORY_NAMES_FILE = "cat_to_name.json"


@dataclass
class ImageFolder:
    """One split: its categories in ImageFolder order and (path, index) samples."""

    root: Path
    categories: list[str]
    samples: list[tuple[Path, int]]

    @property
    def paths(self) -> list[Path]:
        return [p for p, _ in self.samples]

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.categories, 0)
        for _, t in self.samples:
            out[self.categories[t]] += 1
        return out


def find_categories(root: Path) -> list[str]:
    """Category folders sorted as ImageFolder sorts them (plain string order: "1", "10", "2")."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not is_ignored(e.name))


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder`, sorted; hidden files and folders (`.DS_Store`,
    `._IMG.jpg`, `.ipynb_checkpoints/`) and obvious non-images are left out quietly."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_ignored(d)]
        for f in filenames:
            p = Path(dirpath) / f
            if not f.startswith(".") and p.is_file() and looks_like_image(p):
                out.append(p)
    return sorted(out)


def same_name(folder: str) -> str:
    """A folder name in one Unicode composition (NFC): 'rosé' typed on Linux and copied from a Mac are one."""
    return unicodedata.normalize("NFC", folder)


def scan_folder(root: str | os.PathLike, categories: list[str] | None = None) -> ImageFolder:
    """List a split's images. With `categories`, folders map onto that order by name.

    Raises DataError for no categories, an empty category or a category that
    `categories` does not know.
    """
    root = Path(root)
    found = find_categories(root)
    if not found:
        raise DataError(f"{root} has no category folders; expected {root}/<category>/<image files>")
    if categories is None:
        firsts: dict[str, str] = {}  # one category per name, under the spelling its first folder has
        for c in found:
            firsts.setdefault(same_name(c), c)
        categories = list(firsts.values())
    index = {c: i for i, c in enumerate(categories)}
    # A folder copied through a Mac spells 'rosé' in another Unicode composition: the same category.
    index |= {same_name(c): i for i, c in enumerate(categories) if same_name(c) not in index}
    unknown = [c for c in found if c not in index and same_name(c) not in index]
    if unknown:
        raise DataError(
            f"{root} has categories the model does not know: {', '.join(map(shown, unknown[:10]))}"
            + (" …" if len(unknown) > 10 else "")
            + " (every category needs a folder in train/)"
        )
    samples: list[tuple[Path, int]] = []
    empty: list[str] = []
    for name in found:
        files = list_images(root / name)
        if not files:
            empty.append(name)
        samples.extend((p, index[name] if name in index else index[same_name(name)]) for p in files)
    if empty:
        raise DataError(f"{root}: category folders with no images: {', '.join(empty[:10])}")
    return ImageFolder(root, list(categories), samples)


@dataclass
class DataSet:
    """A data folder's train and valid (and maybe test) splits sharing one category order.

    `split`: the record of a valid split held out of train (layout.hold_out), None when valid/ was given.
    """

    root: Path
    categories: list[str]
    train: ImageFolder
    valid: ImageFolder
    test: ImageFolder | None
    layout: Layout | None = None
    split: dict[str, Any] | None = None


def load_dataset(
    data_dir: str | os.PathLike, valid_fraction: float = VALID_FRACTION, split_seed: int = SPLIT_SEED
) -> DataSet:
    """The splits of a data folder in any layout `layout.find_layout` recognises.

    With no valid folder, `valid_fraction` of each category (seeded by `split_seed`) is held out of train.
    """
    layout = find_layout(data_dir)
    root = layout.root
    train = scan_folder(layout.train)
    split = None
    if layout.valid is not None:
        valid = scan_folder(layout.valid, train.categories)
    else:
        kept, held, split = hold_out(train.samples, train.categories, layout.train, valid_fraction, split_seed)
        split["held_out_of"] = layout.train.relative_to(root).as_posix()  # "." for one folder per category
        valid = ImageFolder(train.root, train.categories, held)
        train = ImageFolder(train.root, train.categories, kept)
    test = scan_folder(layout.test, train.categories) if layout.test is not None else None
    return DataSet(root, train.categories, train, valid, test, layout, split)


def exclude_photos(data: DataSet, listed: list[str]) -> tuple[DataSet, int, list[str]]:
    """The data set without the listed photos: paths relative to the data folder (as the docs and
    check --deep's issues.csv give them), relative to the working folder, or absolute.

    Returns it with how many photos were left out and the listed paths that
    match no photo (a typo, or a file already moved), so the caller can say so.
    Raises DataError when leaving them out empties a train/ category.
    """
    base = os.path.abspath(data.root)

    def key(path: str | os.PathLike) -> str:
        return os.path.normpath(os.path.relpath(os.path.abspath(path), base))

    def keys(listed_path: str) -> set[str]:
        # Relative to the data folder, or to the working folder; an absolute path gives one key twice.
        return {key(os.path.join(base, listed_path)), key(listed_path)}

    # The samples' paths start with the data folder as it was given (maybe relative to the working
    # folder), so they are keyed by their absolute path, never joined onto the data folder again.
    wanted = set().union(*(keys(p) for p in listed)) if listed else set()
    matched: set[str] = set()
    left_out = 0

    def keep(split: ImageFolder) -> ImageFolder:
        nonlocal left_out
        kept = []
        for path, target in split.samples:
            k = key(path)
            if k in wanted:
                matched.add(k)
                left_out += 1
            else:
                kept.append((path, target))
        return ImageFolder(split.root, split.categories, kept)

    train, valid = keep(data.train), keep(data.valid)
    test = keep(data.test) if data.test is not None else None
    emptied = [c for c, n in train.counts().items() if n == 0]
    if emptied:
        raise DataError(
            f"excluding the listed photos leaves no train/ photo in categories: {', '.join(emptied[:10])}"
            + (" …" if len(emptied) > 10 else "")
            + "; keep some of them, or remove those category folders"
        )
    unknown = sorted({str(p) for p in listed if not keys(p) & matched})
    return dataclasses.replace(data, train=train, valid=valid, test=test), left_out, unknown


SKIPPED_FILE = "skipped.tsv"


def write_skipped(folder: str | os.PathLike, skipped: dict[str, str]) -> Path | None:
    """Write skipped.tsv (path, reason) into `folder` atomically, or remove a stale one.

    File names are written as the file system holds them (names that are not
    UTF-8 keep their bytes); tabs and newlines in them are escaped.
    """
    path = Path(folder) / SKIPPED_FILE
    if not skipped:
        path.unlink(missing_ok=True)  # an old run's list must not be mistaken for this one's
        return None

    def clean(text: str) -> str:
        return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")

    lines = "".join(f"{clean(p)}\t{clean(r)}\n" for p, r in sorted(skipped.items()))
    return atomic_write_bytes(path, ("path\treason\n" + lines).encode("utf-8", "surrogateescape"))


SMALL_FILE_MAX = 16 * 2**20  # 102 names take 3 KB; a million names or excluded paths would still fit


def read_small_file(path: Path, what: str, error: type[FlowerIdError]) -> bytes:
    """A names or list file's bytes, refusing what is not one: a pipe (it would wait forever), a
    device (/dev/zero never ends) or a file over SMALL_FILE_MAX. OSErrors pass through to the caller."""
    if path.exists() and not path.is_file():
        raise error(f"{what} {path} is not a regular file")
    with open(path, "rb") as f:
        raw = f.read(SMALL_FILE_MAX + 1)
    if len(raw) > SMALL_FILE_MAX:
        raise error(f"{what} {path} is over {SMALL_FILE_MAX:,} bytes; is it the right file?")
    return raw


def load_category_names(path: str | os.PathLike) -> dict[str, str]:
    """Read a {category: name} JSON file such as cat_to_name.json."""
    path = Path(path)
    try:
        # utf-8-sig: Notepad starts a UTF-8 file with a byte-order mark, which plain utf-8 keeps and JSON refuses
        data = json.loads(read_small_file(path, "category names file", DataError).decode("utf-8-sig"))
    except FileNotFoundError:
        raise DataError(f"category names file {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"category names file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DataError(f"{path} must hold one JSON object mapping category to name")
    return {str(k): v for k, v in data.items()}


def category_names_path(*folders: str | os.PathLike) -> Path | None:
    """The names file (cat_to_name.json) a data folder holds: the first found in `folders`, or None."""
    for folder in folders:
        path = Path(folder) / CATEGORY_NAMES_FILE
        if path.is_file():
            return path
    return None


def default_category_names(*folders: str | os.PathLike) -> dict[str, str] | None:
    """The category names of a data folder when it holds a names file (see `category_names_path`), else None."""
    path = category_names_path(*folders)
    return load_category_names(path) if path is not None else None


def names_for(categories: list[str], mapping: dict[str, str] | None) -> list[str | None]:
    if not mapping:
        return [None] * len(categories)
    spelt = {same_name(k): v for k, v in mapping.items()}  # a names file typed in another composition
    return [mapping.get(c, spelt.get(same_name(c))) for c in categories]


def read_exclude_list(path: str | os.PathLike) -> list[str]:
    """Paths to leave out of training: an issues.csv (its `path` column) or a file with one path a line.

    Blank lines and lines starting with # are skipped, so rows can be kept by
    deleting or commenting them out.
    """
    try:
        raw = read_small_file(Path(path), "the exclude list", UsageError)
        text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="surrogateescape")  # Notepad's BOM
    except OSError as exc:
        raise UsageError(f"cannot read the exclude list {path}: {exc.strerror or exc}") from None
    lines = [line for line in text.split("\n") if line.strip() and not line.lstrip().startswith("#")]
    if lines and next(csv.reader([lines[0]]))[:2] == ["path", "kind"]:
        # Read as CSV records, not lines: a quoted path may hold a line break (a folder named "a\nb").
        try:
            rows = list(csv.reader(io.StringIO(text, newline="")))[1:]
        except csv.Error as exc:
            raise UsageError(f"the exclude list {path} is not a CSV file flowerid can read: {exc}") from None
        return [row[0] for row in rows if row and row[0].strip() and not row[0].lstrip().startswith("#")]
    return [line.strip() for line in lines]
