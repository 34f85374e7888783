"""A copy of the shared data with planted mistakes, for bench_check.py.

Untouched photos are symlinks (the feature cache follows them to the shared
files, so a warm run computes nothing for them); changed photos are real files.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageOps


@dataclass
class Planted:
    moved: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (true category, given category)
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)  # (copy in train, valid original, how)
    strays: list[str] = field(default_factory=list)  # non-flower photos filed under a category

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))


def _variant(src: Path, dest: Path, how: str) -> None:
    """A re-encoded copy: 80% size, JPEG quality 70, and maybe mirrored or cropped by 10%."""
    with Image.open(src) as im:
        img = im.convert("RGB")
    w, h = img.size
    if "crop" in how:
        dx, dy = round(w * 0.05), round(h * 0.05)
        img = img.crop((dx, dy, w - dx, h - dy))
    if "mirror" in how:
        img = ImageOps.mirror(img)
    img = img.resize((round(img.width * 0.8), round(img.height * 0.8)), Image.BICUBIC)
    img.save(dest, quality=70)


def plant(
    data: Path,
    dest: Path,
    not_flowers: Path,
    *,
    label_share: float = 0.03,
    n_duplicates: int = 20,
    n_strays: int = 10,
    seed: int = 0,
) -> Planted:
    """Build `dest` from `data` with wrong labels, near-duplicates of valid photos in train, and stray photos."""
    rng = random.Random(seed)
    out = Planted()
    categories = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    files = {s: sorted((data / s).glob("*/*")) for s in ("train", "valid")}
    n_moved = round(label_share * len(files["train"]))
    moved = set(rng.sample(range(len(files["train"])), n_moved))
    for split, paths in files.items():
        for c in categories:
            (dest / split / c).mkdir(parents=True, exist_ok=True)
        for k, src in enumerate(paths):
            cat = src.parent.name
            if split == "train" and k in moved:
                cat = rng.choice([c for c in categories if c != src.parent.name])
                out.moved[f"train/{cat}/{src.name}"] = (src.parent.name, cat)
            (dest / split / cat / src.name).symlink_to(src.resolve())
    hows = ["plain", "mirror", "crop", "mirror+crop"]
    for k, src in enumerate(rng.sample(files["valid"], n_duplicates)):
        how = hows[k % len(hows)]
        rel = f"train/{src.parent.name}/copy_{src.stem}.jpg"
        _variant(src, dest / rel, how)
        out.duplicates.append((rel, f"valid/{src.parent.name}/{src.name}", how))
    for src in rng.sample(sorted(not_flowers.glob("*.jpg")), n_strays):
        rel = f"train/{rng.choice(categories)}/{src.name}"
        (dest / rel).symlink_to(src.resolve())
        out.strays.append(rel)
    names = data / "cat_to_name.json"
    if names.exists():
        (dest / "cat_to_name.json").symlink_to(names.resolve())
    return out
