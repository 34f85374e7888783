"""Command line: `flowerid train|predict|evaluate|add|arrange|show|check|serve|info|export|backbones`: the
command table, the parser and the one place errors become exit codes. The commands live in train_commands.py and
model_commands.py, the options they share in options.py."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence

from .._io import os_error_reason
from .._version import __version__
from ..distributed import shutdown, world
from ..errors import FlowerIdError
from .arrange_command import add_arrange_args, run_arrange
from .model_commands import (
    add_export_args,
    add_info_args,
    add_predict_args,
    add_serve_args,
    add_show_args,
    run_backbones,
    run_export,
    run_info,
    run_predict,
    run_serve,
    run_show,
)
from .options import err, no_args
from .train_commands import (
    add_add_args,
    add_check_args,
    add_evaluate_args,
    add_train_args,
    run_add,
    run_check,
    run_evaluate,
    run_train,
)

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as the shell reports a tool its reader left


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "train": ("train a classifier head on a frozen pretrained backbone", add_train_args, run_train),
    "predict": ("name the flowers in photos", add_predict_args, run_predict),
    "serve": ("web page and JSON API: point a phone at a flower", add_serve_args, run_serve),
    "check": (
        "report on a data folder: counts, unreadable files, duplicates, leakage",
        add_check_args,
        run_check,
    ),
    "evaluate": (
        "measure a checkpoint on labelled photos: metrics, figures and a report",
        add_evaluate_args,
        run_evaluate,
    ),
    "add": (
        "teach a checkpoint new categories, or more photos of old ones, without retraining",
        add_add_args,
        run_add,
    ),
    "arrange": (
        "lay out photos labelled by their file names or a CSV as one folder per category",
        add_arrange_args,
        run_arrange,
    ),
    "show": ("draw a random batch of labelled photos as the model sees them", add_show_args, run_show),
    "info": (
        "say what a checkpoint is: backbone, categories, training, accuracy, digest",
        add_info_args,
        run_info,
    ),
    "export": (
        "write a checkpoint as one ONNX or TorchScript model plus a JSON manifest",
        add_export_args,
        run_export,
    ),
    "backbones": ("list the backbones", no_args, run_backbones),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowerid", description="Train image classifiers by transfer learning and name the flower in a photo."
    )
    parser.add_argument("--version", action="version", version=f"flowerid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args, func) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        add_args(p)
        p.set_defaults(func=func)
    return parser


def cli_flag(setting: str) -> str:
    """The flag of a setting on this command line: `learning_rate` -> `--learning-rate`."""
    return "--" + setting.replace("_", "-")


def run(
    func: Callable[[argparse.Namespace], int], args: argparse.Namespace, flag: Callable[[str], str] = cli_flag
) -> int:
    """Call a command, turning flowerid errors and Ctrl-C into messages and exit codes.

    `flag` spells a setting as the command's own flag, so a message names what the user typed (the heritage
    train.py spells `--learning_rate`)."""
    try:
        from ..data.images import max_pixels_default

        max_pixels_default()  # a bad FLOWERID_MAX_PIXELS fails here, not in a worker
        return func(args)
    except KeyboardInterrupt:
        hint = getattr(args, "interrupt_hint", None)
        if world().is_main:  # under torchrun every process is interrupted; one says so
            print(f"\nflowerid: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _reader_left()
    except FlowerIdError as exc:
        err(_as_cli_message(exc, flag))
        return exc.exit_code
    except OSError as exc:
        if exc.filename is None or os.environ.get("FLOWERID_TRACEBACK"):
            raise
        # A file or folder the machine refused (a file where a folder must go, no permission, a full
        # disk): the user's to fix, so one line; FLOWERID_TRACEBACK=1 shows where it happened.
        why = os_error_reason(exc)
        err(why if str(exc.filename) in why else f"{exc.filename}: {why}")
        return 1
    except Exception as exc:
        if not world().distributed:
            raise
        # torchrun stops the other processes when this one exits: say why, and how to go on.
        text = str(exc).strip().splitlines()
        err(
            f"{type(exc).__name__}: {text[0] if text else ''}; the job stops. Run the same command again: "
            "features already extracted are reused from the cache, rows already written are kept"
        )
        return 1
    finally:
        shutdown()


def _as_cli_message(exc: FlowerIdError, flag: Callable[[str], str] = cli_flag) -> str:
    """The library names a setting as Python spells it (`epochs`); here it is the flag (`--epochs`)."""
    setting = getattr(exc, "setting", None)
    if not setting:
        return str(exc)
    return re.sub(rf"\b{re.escape(setting)}\b", lambda _: flag(setting), str(exc), count=1)


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 must not crash printing
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    # matplotlib's layout and missing-glyph notes (an emoji in a name) are for developers, not users
    warnings.filterwarnings("ignore", category=UserWarning, module="matplotlib")
    code = run(args.func, args)
    try:
        sys.stdout.flush()  # what is still buffered goes now, where a closed pipe can be answered
    except BrokenPipeError:
        return _reader_left()
    return code


def _reader_left() -> int:
    """The reader went away (`flowerid predict DIR | head`): stop quietly, as other command-line tools do,
    with stdout pointed at nothing so the interpreter's last flush raises nothing either."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
