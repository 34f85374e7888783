"""Photos that users of the web page say were named wrong, kept in `flowerid add`'s NEWDATA layout.

`serve --corrections DIR` turns it on. A correction names an existing category (its id) or a new
name; the photo is checked to be an image the model can read, then written atomically as
DIR/<category folder>/<its sha256>.<format> (the same photo twice is one file). A new name gets a
folder whose name is made safe (no path separators, no dots first, letters, digits, `_` and `-`
only) and its display name in DIR/cat_to_name.json; a name that `add` would read as an existing
category (its id or name, in other case or spacing, or a folder that reads as one: "Rose!" is kept
in `rose`) is filed under that category, so this folder never makes `add` see a clash. The model is
never changed here: `flowerid add CHECKPOINT DIR --out NEW` takes the folder when its owner decides to.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import unicodedata
from io import BytesIO
from pathlib import Path

from .._io import atomic_write_bytes, atomic_write_json
from .._text import first_line
from ..data.folders import CATEGORY_NAMES_FILE, read_small_file
from ..data.images import load_image
from ..errors import DataError, OutputError, UsageError

MAX_NAME = 60  # characters of a new category's name
_FORMATS = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tif",
    "HEIF": "heic",
    "AVIF": "avif",
}
_NAMES_FIX = 'make it a JSON object of folder: name ({"blue_poppy": "Blue poppy"}), or remove it'
_INVISIBLE = frozenset({"Cc", "Cf", "Cs"})  # Unicode categories: controls, format characters, surrogates
_LOCK = threading.Lock()  # cat_to_name.json is read, changed and written whole


def safe_folder(name: str) -> str:
    """A folder name for a category name: NFKC, lower case, runs of anything but letters and digits as `_`."""
    text = unicodedata.normalize("NFKC", name).strip().casefold()
    slug = re.sub(r"[^\w-]+", "_", text, flags=re.UNICODE).strip("_-")[:MAX_NAME]
    if not slug:
        raise UsageError(f"{name!r} has no letters or digits to name a folder by; type what it is called")
    return slug


def clean_name(name: str) -> str:
    """`name` with its runs of whitespace as single spaces; refused if it holds any other control character
    or an invisible format character (NUL, ESC, a right-to-left override, a zero-width space...).

    Refused rather than stripped: such a name comes from a broken client or is meant to make the name
    look like what it is not, and the sender is told, instead of the owner finding a changed name.
    """
    bad = sorted({f"U+{ord(ch):04X}" for ch in name if unicodedata.category(ch) in _INVISIBLE and not ch.isspace()})
    if bad:
        raise UsageError(
            f"a name cannot hold control or invisible formatting characters ({', '.join(bad)}); type it plainly"
        )
    return " ".join(name.split())


def folder_for(
    categories: list[str], names: list[str | None], category: str | None, name: str | None
) -> tuple[str, str | None]:
    """(folder, display name to record or None) for a correction to `category` (an id) or a new `name`.

    `flowerid add` calls a new folder a clash when the folder or its name matches an existing
    category's id or name after its normalisation (`_norm`). A typed name for which either would
    match is filed under that existing category instead, so this folder never makes `add` refuse.
    """
    from ..model.add import _norm  # add's own comparison, so the two cannot drift apart

    if (category is None) == (name is None):
        raise UsageError("say what the photo is: either category (one the model knows) or name (a new one)")
    if category is not None:
        if category not in categories:
            raise UsageError(f"category {category!r} is not one this model knows; send a new one as name")
        if category.startswith(".") or any(ch in category for ch in "/\\\0"):
            raise UsageError(f"category {category!r} cannot name a folder safely")
        return category, None
    name = clean_name(name)
    if not name or len(name) > MAX_NAME:
        raise UsageError(f"a new category's name must be 1 to {MAX_NAME} characters")
    owner = {_norm(c): c for c in categories} | {_norm(n): c for c, n in zip(categories, names, strict=True) if n}
    if _norm(name) in owner:
        return owner[_norm(name)], None
    folder = safe_folder(name)
    if _norm(folder) in owner:  # "Rose!" is kept in folder rose, which add reads as the model's "rose"
        return owner[_norm(folder)], None
    return folder, name


def save_correction(
    root: str | Path,
    data: bytes,
    categories: list[str],
    names: list[str | None],
    *,
    category: str | None = None,
    name: str | None = None,
    min_size: int = 1,
    max_pixels: int | None = None,
) -> Path:
    """Check the photo, then write it into root/<folder>/ and then a new name into cat_to_name.json (each
    atomically, the photo taken back if its name cannot be written); returns the file written."""
    folder, display = folder_for(categories, names, category, name)
    from PIL import Image

    load_image(data, min_size=min_size, max_pixels=max_pixels)  # refuses what the model could not read
    with Image.open(BytesIO(data)) as probe:
        ext = _FORMATS.get(str(probe.format or "").upper(), "img")
    root = Path(root)
    dest = root / folder
    if dest.resolve().parent != root.resolve():
        raise UsageError(f"{folder!r} is not a safe folder name")
    path = dest / f"{hashlib.sha256(data).hexdigest()[:24]}.{ext}"
    if display is None:
        if not path.exists():
            atomic_write_bytes(path, data)
        return path
    with _LOCK:  # a new name's folder is written only here, under the lock
        mapping = _read_names(root)  # first: a damaged names file keeps nothing
        new = not path.exists()
        if new:
            atomic_write_bytes(path, data)  # the photo, then its name: never a name without its photo
        if folder not in mapping:  # the first name given wins
            try:
                atomic_write_json(root / CATEGORY_NAMES_FILE, {**mapping, folder: display})
            except OutputError:
                if new:  # take the photo back: a folder without its name would be a new category named by it
                    path.unlink(missing_ok=True)
                    with contextlib.suppress(OSError):
                        dest.rmdir()
                raise
    return path


def _read_names(root: Path) -> dict[str, object]:
    """root/cat_to_name.json as it is ({} if there is none); a damaged one is a DataError naming it."""
    names_file = root / CATEGORY_NAMES_FILE
    try:
        raw = read_small_file(names_file, "names file", DataError) if names_file.exists() else b"{}"
        mapping = json.loads(raw.decode("utf-8-sig"))  # a byte-order mark, if its owner edited it in Notepad
    except (OSError, ValueError) as exc:
        raise DataError(f"{names_file} cannot be read ({first_line(exc)}); {_NAMES_FIX}") from None
    if not isinstance(mapping, dict):
        raise DataError(f"{names_file} is not a JSON object; {_NAMES_FIX}")
    return mapping
