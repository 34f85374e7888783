"""`flowerid predict PHOTOS --explain [DIR]`: each photo's answer with the map of why (model/explain.py).

In text mode each photo's picture goes to DIR/<name>.explain.png (the top category's map; with
--explain-k N the top N side by side); with --json each row also carries the explanation's fields, and the
pictures are written only when DIR is named.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import atomic_write
from .._text import shown
from ..errors import ImageError, UsageError

if TYPE_CHECKING:
    from ..model.predictor import Classifier

HERE = ""  # --explain with no folder: the current one


def add_explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--explain",
        nargs="?",
        const=HERE,
        default=None,
        metavar="DIR",
        help="also show why: the map of what made it name the top category, over the photo, as "
        "DIR/<photo>.explain.png (default DIR: the current folder); with --json, the map's numbers in each row",
    )
    p.add_argument(
        "--explain-k", type=int, default=1, metavar="N", help="with --explain, the maps of the top N categories"
    )


def check_explain_args(args: argparse.Namespace) -> None:
    """Before the model loads: the flags make sense together and DIR is not a photo taken for a folder."""
    if args.explain is None:
        if args.explain_k != 1:
            raise UsageError("--explain-k N says how many categories --explain shows; add --explain")
        return
    if args.explain_k < 1:
        raise UsageError("--explain-k must be at least 1")
    if args.out is not None:
        raise UsageError("--explain draws each photo; leave out --out (or name the photos without --explain)")
    if args.explain and Path(args.explain).is_file():
        raise UsageError(
            f"--explain takes a folder for the pictures, and {args.explain} is a file: put --explain after the "
            "photos, or give it a folder (--explain DIR)"
        )


def picture_names(images: list[str]) -> list[str]:
    """<stem>.explain.png per photo; a stem seen before gets -2, -3... so no picture overwrites another."""
    seen: dict[str, int] = {}
    names = []
    for image in images:
        stem = Path(image).stem or "photo"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.explain.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.explain.png")
    return names


def _write_picture(path: Path, image: str, explanations: list) -> None:
    from ..data.images import load_image
    from ..model.overlay import MAX_SIDE, picture

    pic = picture(load_image(image, min_size=MAX_SIDE), explanations)  # a large JPEG decodes at reduced scale
    # Fast zlib: the best compression took 0.7 s a picture and saved an eighth of its bytes.
    atomic_write(path, lambda f: pic.save(f, format="PNG", compress_level=1))


def run_explained(clf: Classifier, args: argparse.Namespace) -> int:
    """predict with --explain: the usual table or JSON rows, each photo's explanation beside them."""
    from ..model.predictor import photo_fields
    from .options import err
    from .printing import format_predictions, print_json

    results = clf.explainer.explain_photos(args.images, top_k=args.top_k, k=args.explain_k)
    draw = not args.json or args.explain != HERE
    folder = Path(args.explain or ".")
    if draw:
        folder.mkdir(parents=True, exist_ok=True)
    failed = 0
    records: list[dict[str, Any]] = []
    for image, name, res in zip(args.images, picture_names(args.images), results, strict=True):
        if isinstance(res, ImageError):
            failed += 1
            records.append({"image": image, "error": res.reason})
            if not args.json:
                err(f"{image}: {res.reason}")
            continue
        rec = {"image": image, **photo_fields(res.predictions), "predictions": [p.to_dict() for p in res.predictions]}
        rec["explanation"] = res.explanations[0].to_dict()
        if args.explain_k > 1:
            rec["explanations"] = [e.to_dict() for e in res.explanations]
        if draw:
            _write_picture(folder / name, image, res.explanations)
            rec["picture"] = str(folder / name)
        records.append(rec)
        if not args.json:
            print(format_predictions(image, rec["predictions"], rec["known"], clf.num_classes))
            if draw:
                print(f"  why: {shown(str(folder / name))}")
    if args.plot:
        from ..evaluation.photo_figures import write_prediction_plots

        plain = [r if isinstance(r, ImageError) else r.predictions for r in results]
        for path in write_prediction_plots(clf, args.images, plain, args.plot):
            print(f"plot: {shown(path)}", file=sys.stderr)
    if args.json:
        print_json(records)
    elif draw and records:
        print("the maps show each category's logit per cell: bright cells pushed the answer most", file=sys.stderr)
    return 1 if failed else 0
