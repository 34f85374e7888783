"""What the command modules share: options several commands take, declared once (as llm does with its option
helpers), and the error line."""

from __future__ import annotations

import argparse
import sys

from .._text import shown
from ..distributed import world


def err(msg: str) -> None:
    """An error line; under torchrun it names the process (`rank 1 of 4`)."""
    w = world()
    print(f"flowerid: {w.label() + ': ' if w.distributed else ''}error: {shown(msg)}", file=sys.stderr)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s")


def add_json(p: argparse.ArgumentParser, what: str = "JSON instead of text") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what}")


def add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "onnx", "torch"],
        help="backbone engine: auto = ONNX Runtime on CPU, PyTorch on CUDA (default: %(default)s)",
    )


def add_category_names(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--category-names", default=None, metavar="JSON", help=f"category-to-name JSON (default: {default})")


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a checkpoint.pth written by `flowerid train` (default: the built-in 102-flower model)",
    )


def add_valid_fraction(p: argparse.ArgumentParser) -> None:
    from ..training.config import TrainConfig

    share = "with no valid folder, the share of each category train holds out as valid (default: %(default)s)"
    p.add_argument("--valid-fraction", type=float, default=TrainConfig().valid_fraction, metavar="F", help=share)


DATA_DIR_HELP = (
    "labelled photos: train/ and val/ (or valid/, validation/, dev/; maybe test/), each with one folder per "
    "category; or train/ (training_set/...) alone or with test/; or just one folder per category. Without a "
    "valid folder a share of each category is held out as valid"
)


def no_args(p: argparse.ArgumentParser) -> None:
    pass


# The command table: name -> (help, declare its options, run it). Order is the order `--help` lists them.
