"""`flowerid arrange SRC DEST [--labels CSV]`: photos labelled by their file names or a CSV, laid out as
the one-folder-per-category tree the other commands read."""

from __future__ import annotations

import argparse

from .._text import shown


def add_arrange_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Lay photos out as one folder per category when their labels are in their file names "
        "(cat.1.jpg, american_bulldog_12.jpg) or in a CSV of file names and labels. DEST gets links to the "
        "photos (or copies with --copy); a train/valid/test split in SRC is kept."
    )
    p.add_argument("src", metavar="SRC", help="the folder that holds the photos")
    p.add_argument("dest", metavar="DEST", help="a new folder for the arranged tree")
    p.add_argument(
        "--labels",
        metavar="CSV",
        help="a CSV of file name and label per photo (columns found by names such as file/image/id and "
        "label/class/category, else the first two); without it, labels come from the file names",
    )
    p.add_argument("--copy", action="store_true", help="copy the photos instead of linking to them")


def run_arrange(args: argparse.Namespace) -> int:
    from ..data.arrange import arrange

    result = arrange(args.src, args.dest, args.labels, copy=args.copy, log=print)
    order = ("", "train", "valid", "test")
    splits = sorted(result.counts, key=lambda s: order.index(s) if s in order else len(order))
    labels = result.labels
    width = max(len(shown(label)) for label in [*labels, "category"])
    print(f"{'category':<{width}}  " + "  ".join(f"{s or 'photos':>7}" for s in splits))
    for label in labels:
        print(f"{shown(label):<{width}}  " + "  ".join(f"{result.counts[s][label]:>7}" for s in splits))
    left = len(result.left_out)
    print(
        f"{len(labels)} categories in {shown(result.dest)} ({'copies' if args.copy else 'links to the photos'})"
        + (f"; {left} left out (the first five above)" if left else "")
    )
    print(f"next: flowerid check {shown(result.dest)}, then flowerid train {shown(result.dest)}")
    return 0
