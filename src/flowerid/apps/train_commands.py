"""The data and training commands: `flowerid train`, `check` (and `check --deep`), `evaluate` and `add`."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from .._text import shown
from ..errors import UsageError
from .options import DATA_DIR_HELP, add_category_names, add_device, add_engine, add_json, add_valid_fraction


def add_train_args(p: argparse.ArgumentParser) -> None:
    from ..training.config import DEFAULT_PRESET, PRESETS, TrainConfig

    d = TrainConfig()
    p.add_argument("data_dir", help=DATA_DIR_HELP)
    p.add_argument(
        "--save-dir", default="runs/flowers", help="where checkpoint.pth and metrics.json go (default: %(default)s)"
    )
    p.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        choices=list(PRESETS),
        help="; ".join(f"{p.name}: {p.summary} ({p.arch})" for p in PRESETS.values())
        + " (default: %(default)s). Flags below override the preset.",
    )
    p.add_argument("--arch", default=None, help="backbone (default: the preset's); `flowerid backbones` lists them")
    p.add_argument("--weights", default=None, metavar="PATH", help="local state dict for the backbone")
    p.add_argument(
        "--epochs", type=int, default=None, help="training epochs, the last one kept (default: the preset's)"
    )
    p.add_argument("--keep-best-epoch", action="store_true", help="keep the epoch best on valid, not the last one")
    add_valid_fraction(p)
    p.add_argument(
        "--no-adapt",
        action="store_true",
        help="train a small set with the preset as it is (default: under a few hundred photos the backbone stays "
        "frozen and the head takes enough steps; docs/presets.md); --epochs or --tune-stages also turn it off",
    )
    p.add_argument(
        "--balance-classes",
        action="store_true",
        help="weight the loss so every category counts alike: better on rare categories, "
        "a little worse top-1 (measured in docs/presets.md)",
    )
    p.add_argument("--views", type=int, default=None, help="augmented views per training photo (default: the preset's)")
    p.add_argument(
        "--tune-stages",
        type=int,
        default=None,
        metavar="N",
        help="fine-tune the backbone's last N stages with the head, on cached activations "
        "(EfficientNets; default: the preset's, 0 = frozen)",
    )
    p.add_argument(
        "--full-finetune",
        action="store_true",
        help="train every layer on freshly augmented photos each epoch (mixed precision on CUDA): for a GPU",
    )
    p.add_argument(
        "--no-calibrate", action="store_true", help="keep raw probabilities (default: fit a temperature on valid)"
    )
    p.add_argument(
        "--accept-rate",
        type=float,
        default=d.accept_rate,
        metavar="FRACTION",
        help='the share of valid photos the "not one of my categories" threshold accepts (default: %(default)s)',
    )
    p.add_argument("--negatives", metavar="DIR", help="photos of none of the categories: sharpen the unknown score")
    p.add_argument(
        "--teacher",
        default=None,
        metavar="CHECKPOINT",
        help="learn this trained model's probabilities on the same views (distillation; e.g. a --preset best run)",
    )
    p.add_argument(
        "--distill-temperature", type=float, default=None, help="distillation temperature (default: the preset's)"
    )
    p.add_argument(
        "--distill-alpha", type=float, default=None, help="the teacher's share of the loss (default: the preset's)"
    )
    p.add_argument("--learning-rate", type=float, default=None, help="peak learning rate (default: the preset's)")
    p.add_argument(
        "--hidden-units",
        type=int,
        default=d.hidden_units,
        help="hidden layer width; 0 = a linear head (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="head training mini-batch (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    add_device(p)
    add_category_names(p, "DATA_DIR/cat_to_name.json if present")
    p.add_argument("--no-cache", action="store_true", help="recompute features instead of using the cache")
    add_engine(p)
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run's head training from its last epoch"
    )
    p.add_argument(
        "--exclude",
        default=None,
        metavar="FILE",
        help="leave out the photos listed in FILE: one path (relative to DATA_DIR) a line, "
        "or the issues.csv of `check --deep`",
    )
    p.set_defaults(
        interrupt_hint="run it again to reuse the features (or activations) computed so far, "
        "with --resume to continue a frozen backbone's head training"
    )


def run_train(args: argparse.Namespace) -> int:
    from ..training.config import TrainConfig
    from ..training.run import train

    # Flags whose value is the setting of the same name (None: the preset's).
    same = ("arch", "epochs", "views", "tune_stages", "accept_rate", "negatives", "learning_rate", "hidden_units")
    same += ("batch_size", "seed", "device", "weights", "category_names", "engine", "resume", "exclude")
    same += ("teacher", "distill_temperature", "distill_alpha", "valid_fraction")
    cfg = TrainConfig.from_preset(
        args.preset,
        **{name: getattr(args, name) for name in same},
        full_finetune=args.full_finetune or None,
        keep_best_epoch=args.keep_best_epoch or None,
        balance_classes=args.balance_classes or None,
        adapt=False if args.no_adapt else None,  # --epochs or --tune-stages also keep the preset (from_preset)
        calibrate=not args.no_calibrate,
        use_cache=not args.no_cache,
    )
    # The log names folders and files of the user's data: printed escaped, as every other command does.
    train(args.data_dir, args.save_dir, cfg, log=lambda s: print(shown(s), flush=True))
    return 0


# check --deep compares frozen features of this pair (its figures in docs/data-check.md were measured with it).
DEEP_CHECK_ARCH = "efficientnet_lite0_lite2"


def add_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", help=DATA_DIR_HELP)
    p.add_argument("--min-size", type=int, default=64, help="warn about images with a shorter side under this")
    p.add_argument(
        "--max-imbalance", type=float, default=10.0, help="warn when train categories differ more than this factor"
    )
    add_valid_fraction(p)
    p.add_argument("--strict", action="store_true", help="exit non-zero on warnings too")
    add_json(p, "the report as JSON")
    p.add_argument(
        "--deep",
        action="store_true",
        help="also look for wrong labels, near-duplicates and photos that belong nowhere (cached features; "
        "writes issues.csv and review.html into --out)",
    )
    p.add_argument("--out", default=None, metavar="DIR", help="where --deep writes (default: check-<DATA_DIR name>)")
    p.add_argument(
        "--arch",
        default=DEEP_CHECK_ARCH,
        help="backbone whose frozen features --deep compares (default: %(default)s, the pair its figures were "
        "measured with)",
    )
    add_device(p)
    add_engine(p)
    p.set_defaults(interrupt_hint="run it again: the features computed so far are cached")


OUT_NAME_MAX = 100  # bytes: file systems take 255 a name, and the folder's own files need room for their names


def default_out_name(prefix: str, folder: str | os.PathLike) -> str:
    """`prefix` + the folder's name, the default output folder of evaluate and check --deep. A name too long
    for one (file systems allow 255 bytes) is cut, with a short hash of the whole name so two stay apart."""
    name = Path(folder).resolve().name
    if len(os.fsencode(prefix + name)) <= OUT_NAME_MAX:
        return prefix + name
    digest = hashlib.blake2b(os.fsencode(name), digest_size=4).hexdigest()
    cut = name
    while len(os.fsencode(f"{prefix}{cut}-{digest}")) > OUT_NAME_MAX:
        cut = cut[:-1]
    return f"{prefix}{cut}-{digest}"


def run_check(args: argparse.Namespace) -> int:
    """Exit 0 when the data can be trained on as it is, 1 when something would make training wrong.

    With --deep, also 1 when it lists anything: each finding is for the user to decide on.
    """
    from ..data.check import check_data
    from ..training.config import MIN_STEPS, TUNE_FROM

    if args.deep:
        from ..backbones import get_spec

        get_spec(args.arch, setting="arch")  # a misspelt --arch stops before the plain check's output
    report = check_data(
        args.data_dir,
        min_size=args.min_size,
        max_imbalance=args.max_imbalance,
        valid_fraction=args.valid_fraction,
        train_rule=(MIN_STEPS, TUNE_FROM),
    )
    result = report.to_dict()
    if not args.json:
        print(report.format(), flush=True)
    found = 0
    if args.deep:
        from ..data.deep_check import KINDS
        from ..data.folders import default_category_names
        from ..evaluation.data_check import run_deep_check

        root = Path(args.data_dir)
        out = Path(args.out) if args.out else Path(default_out_name("check-", root))
        names = default_category_names(root) or {}
        findings, csv_path, html_path = run_deep_check(
            root, out, args.arch, device=args.device, engine=args.engine, names=names
        )
        counts = {k: len(findings.of_kind(k)) for k in KINDS}
        found = sum(counts.values())
        result["deep"] = {
            "counts": counts,
            "issues_csv": str(csv_path),
            "review_html": str(html_path),
            "seconds": {k: round(v, 2) for k, v in findings.seconds.items()},
        }
        if not args.json:
            print(format_deep(findings, csv_path, html_path))
    if args.json:
        print(json.dumps(result, indent=2))
    return 1 if report.errors or found or (args.strict and report.warnings) else 0


def format_deep(findings, csv_path: Path, html_path: Path, first: int = 5) -> str:
    """The deep check's summary: counts, the first few of each kind, where the files are. File, folder and
    category names are the user's, so they print escaped: a name holding a line break cannot fake a line."""
    from ..data.deep_check import DUPLICATE, LABEL, OUTLIER

    lines = [""]
    for kind, title in ((LABEL, "suspect labels"), (DUPLICATE, "near-duplicate pairs"), (OUTLIER, "outliers")):
        rows = findings.of_kind(kind)
        lines.append(f"deep: {len(rows)} {title}")
        for i in rows[:first]:
            path = shown(i.path)
            if kind == LABEL:
                given, suggested = shown(i.given), shown(i.suggested)
                lines.append(f"    {path}: filed under {given}, looks like {suggested} ({i.score:.3f})")
            elif kind == DUPLICATE:
                lines.append(f"    {path} = {shown(i.other)} ({i.score:.3f})")
            else:
                lines.append(f"    {path} ({i.score:.1f})")
        if len(rows) > first:
            lines.append(f"    … and {len(rows) - first} more")
    lines.append(f"deep: every finding is in {shown(csv_path)}; look at them in {shown(html_path)}")
    lines.append(
        "      to train without some, delete the rows to keep and run `flowerid train DATA --exclude issues.csv`"
    )
    return "\n".join(lines)


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint.pth written by `flowerid train`, or `builtin`")
    p.add_argument("folder", help="labelled photos in ImageFolder layout (FOLDER/<category>/<images>), e.g. DATA/valid")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="where metrics.json, the figures and report.html go (default: eval-<FOLDER name> beside the checkpoint)",
    )
    add_json(p, "the summary of metrics.json instead of text")
    p.add_argument("--no-figures", action="store_true", help="write metrics.json only (faster)")
    p.add_argument(
        "--unknown",
        metavar="DIR",
        help="photos of none of the categories: how well the model tells them apart (AUROC, rates, a figure)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="photos per forward pass (default: %(default)s)")
    add_category_names(p, "the checkpoint's")
    add_device(p)
    add_engine(p)


def run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..evaluation.run import evaluate

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    from ..model.builtin import BUILTIN, resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    beside = Path() if args.checkpoint == BUILTIN else checkpoint.parent  # never write into the installed package
    out = args.out or beside / default_out_name("eval-", args.folder)
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print  # stdout stays pure JSON
    result = evaluate(
        checkpoint,
        args.folder,
        out,
        device=args.device,
        engine=args.engine,
        batch_size=args.batch_size,
        category_names=args.category_names,
        figures=not args.no_figures,
        unknown=args.unknown,
        log=log,
    )
    if args.json:
        print(json.dumps(result.summary(), indent=2, ensure_ascii=False))
    return 0


NEWDATA_HELP = (
    "one folder of photos per category (cat_to_name.json beside them optional): a new name adds a category, "
    "an existing one adds photos to it; e.g. the folder `serve --corrections` fills"
)


def add_add_args(p: argparse.ArgumentParser) -> None:
    from ..model.teach import DEFAULT_METHOD, METHODS

    p.add_argument("checkpoint", help="a checkpoint.pth written by `flowerid train` (or by an earlier add)")
    p.add_argument("new_data", metavar="NEWDATA", help=NEWDATA_HELP)
    p.add_argument("--out", required=True, metavar="PATH", help="the new checkpoint to write (or a folder)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help="default: %(default)s")
    add_device(p)
    add_engine(p)
    p.set_defaults(interrupt_hint="no checkpoint was written; run it again to add them")


def run_add(args: argparse.Namespace) -> int:
    from ..model.add import add
    from ..model.builtin import resolve_checkpoint

    add(
        resolve_checkpoint(args.checkpoint),
        args.new_data,
        args.out,
        method=args.method,
        device=args.device,
        engine=args.engine,
    )
    return 0
