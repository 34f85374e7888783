"""Command line: `flowerid train|predict|evaluate|add|show|check|serve|info|export|backbones`.

The only place errors become exit codes."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._version import __version__
from ..distributed import shutdown, world
from ..errors import FlowerIdError, UsageError
from .explain import add_explain_args, check_explain_args, run_explained

if TYPE_CHECKING:
    from ..model.predictor import Classifier

EXIT_INTERRUPTED = 130


def _err(msg: str) -> None:
    """An error line; under torchrun it names the process (`rank 1 of 4`)."""
    w = world()
    print(f"flowerid: {w.label() + ': ' if w.distributed else ''}error: {msg}", file=sys.stderr)


# Options several commands share, declared once (as llm does with its option helpers).


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s")


def _json(p: argparse.ArgumentParser, what: str = "JSON instead of text") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what}")


def _engine(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "onnx", "torch"],
        help="backbone engine: auto = ONNX Runtime on CPU, PyTorch on CUDA (default: %(default)s)",
    )


def _category_names(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--category-names", default=None, metavar="JSON", help=f"category-to-name JSON (default: {default})")


def _checkpoint_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a checkpoint.pth written by `flowerid train` (default: the built-in 102-flower model)",
    )


def _valid_fraction(p: argparse.ArgumentParser) -> None:
    from ..training.config import TrainConfig

    share = "with no valid folder, the share of each category train holds out as valid (default: %(default)s)"
    p.add_argument("--valid-fraction", type=float, default=TrainConfig().valid_fraction, metavar="F", help=share)


DATA_DIR_HELP = (
    "labelled photos: train/ and val/ (or valid/, validation/, dev/; maybe test/), each with one folder per "
    "category; or train/ (training_set/...) alone or with test/; or just one folder per category. Without a "
    "valid folder a share of each category is held out as valid"
)


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
    _valid_fraction(p)
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
    _device(p)
    _category_names(p, "DATA_DIR/cat_to_name.json if present")
    p.add_argument("--no-cache", action="store_true", help="recompute features instead of using the cache")
    _engine(p)
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
    same += ("teacher", "distill_temperature", "distill_alpha")
    same += ("valid_fraction",)
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
    train(args.data_dir, args.save_dir, cfg, log=lambda s: print(s, flush=True))  # None on other torchrun ranks
    return 0


def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="photos to name; with --out, folders too (walked, links followed)")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write a row per photo into FILE (.csv, .jsonl, .parquet); a re-run skips the photos FILE names",
    )
    _checkpoint_option(p)
    p.add_argument("--top-k", type=int, default=None, help="how many categories to show (default: 5; with --out, 1)")
    _category_names(p, "the names stored in the checkpoint")
    _device(p)
    _json(p, "JSON instead of a table")
    _engine(p)
    p.add_argument(
        "--plot",
        metavar="PATH",
        help="also draw each photo beside a bar chart of its top-K (one image: PATH; several: PATH-<image>.png, "
        "or <image>.png inside PATH when it is a folder)",
    )
    add_explain_args(p)
    p.set_defaults(interrupt_hint="with --out, run the same command again to go on where it stopped")


def run_predict(args: argparse.Namespace) -> int:
    import os

    from ..errors import ImageError
    from ..model.predictor import Classifier, photo_fields

    if args.top_k is None:
        args.top_k = 5 if args.out is None else 1  # a file gets the CSV's one-prediction columns unless asked
    if args.top_k < 1:
        raise UsageError("--top-k must be at least 1")
    from ..model.builtin import resolve_checkpoint

    w = world()
    if args.out is None:
        folders = [p for p in args.images if os.path.isdir(p)]
        if folders:
            raise UsageError(f"{folders[0]} is a folder: name its photos into a file with --out FILE.csv")
        if w.distributed:
            raise UsageError("under torchrun, predict writes its rows into a file: add --out FILE.csv")
    else:
        from ..model.results import result_format

        result_format(args.out)  # a bad file name fails before the model loads
        if args.plot or args.json:
            raise UsageError("--out writes every row into its file; leave out --plot and --json")
    device = args.device
    if w.distributed and device != "cpu":
        from ..backbones.engines import resolve_device

        if resolve_device(device).startswith("cuda"):
            device = f"cuda:{w.local_rank}"  # one GPU per process
    check_explain_args(args)
    checkpoint = resolve_checkpoint(args.checkpoint)
    clf = Classifier.load(checkpoint, device=device, category_names=args.category_names, engine=args.engine)
    if args.out is not None:
        return _predict_to_file(clf, args)
    if args.explain is not None:
        return run_explained(clf, args)
    results = clf.predict_many(args.images, top_k=args.top_k)
    failed = 0
    records = []
    for image, res in zip(args.images, results, strict=True):
        if isinstance(res, ImageError):
            failed += 1
            records.append({"image": image, "error": res.reason})
            if not args.json:
                _err(f"{image}: {res.reason}")
        else:
            records.append({"image": image, **photo_fields(res), "predictions": [p.to_dict() for p in res]})
    if args.json:
        print_json(records)
    else:
        for rec in records:
            if "predictions" in rec:
                print(format_predictions(rec["image"], rec["predictions"], rec["known"], clf.num_classes))
    if args.plot:
        from ..evaluation.figures import write_prediction_plots

        for path in write_prediction_plots(clf, args.images, results, args.plot):
            print(f"plot: {path}", file=sys.stderr)
    return 1 if failed else 0


def print_json(records: list[dict]) -> None:
    text = json.dumps(records, indent=2, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8: \u escapes keep the JSON valid
        text = json.dumps(records, indent=2)
    print(text)


def _predict_to_file(clf: Classifier, args: argparse.Namespace) -> int:
    """`predict ... --out FILE`: every photo into FILE; an unreadable photo is a row with its error, not a failure."""
    from ..model.batch import predict_to_file

    def warn(path: str, reason: str) -> None:
        _err(f"{path}: {reason} (folder skipped)")

    s = predict_to_file(clf, args.images, args.out, top_k=args.top_k, warn=warn)
    if world().is_main:
        print(
            f"named {s.predicted} photo{'s' if s.predicted != 1 else ''} into {args.out} in {s.seconds:.1f}s "
            f"({s.rate:.1f}/s)"
            + (f"; {s.errors} could not be read (rows with an error)" if s.errors else "")
            + (f"; {s.already} were already there" if s.already else "")
        )
    return 0


def format_predictions(image: str, preds: list[dict], known: bool | None = None, num_classes: int = 0) -> str:
    """A photo's top-K as a table; a photo unlike anything trained on says so first, plainly."""
    width = max(len(p["name"] or p["category"]) for p in preds)
    lines = [image]
    if known is False:
        closest = preds[0]["name"] or preds[0]["category"]
        lines.append(f"  not one of the {num_classes} categories I know (closest: {closest})")
    for rank, p in enumerate(preds, 1):
        label = p["name"] or p["category"]
        bar = "█" * int(round(p["probability"] * 20))
        lines.append(
            f"  {rank}. {label:<{width}}  {p['probability']:7.2%}  {bar}"
            + (f"  [{p['category']}]" if p["name"] else "")
        )
    return "\n".join(lines)


def add_serve_args(p: argparse.ArgumentParser) -> None:
    from .serve_config import DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_UNSURE_BELOW

    _checkpoint_option(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 = every network (default: %(default)s)"
    )
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
        help="largest upload (default: %(default)g)",
    )
    p.add_argument(
        "--max-pixels", type=int, default=None, help="largest image in pixels (default: FLOWERID_MAX_PIXELS)"
    )
    p.add_argument("--threads", type=int, default=None, help="photos named at once (default: one per core, 1-4)")
    unsure = "top probability called unsure (default: %(default)s)"
    p.add_argument("--unsure-below", type=float, default=DEFAULT_UNSURE_BELOW, help=unsure)
    p.add_argument(
        "--corrections",
        metavar="DIR",
        default=None,
        help='let the page keep photos it named wrong ("Not right?") in DIR, for `flowerid add` (default: off)',
    )
    _category_names(p, "checkpoint's")
    _device(p)
    _serve_access_args(p)


def _serve_access_args(p: argparse.ArgumentParser) -> None:
    """Who may use the server and how it is reached: token, rate limit, HTTPS."""
    from .serve_config import DEFAULT_RATE_LIMIT, TOKEN_ENV

    g = p.add_argument_group("access (docs/web-app.md)")
    g.add_argument(
        "--token",
        default=None,
        help=f"the token every request needs (default: {TOKEN_ENV}, else a new one beyond loopback, none on it)",
    )
    g.add_argument("--no-token", action="store_true", help="serve beyond loopback without a token (warns)")
    g.add_argument(
        "--rate-limit",
        type=int,
        default=None,
        metavar="N",
        help=f"requests a minute per client, 0 = none (default: {DEFAULT_RATE_LIMIT} beyond loopback, none on it)",
    )
    g.add_argument("--https", action="store_true", help="HTTPS with a self-signed certificate kept in the cache")
    g.add_argument("--cert", default=None, metavar="PEM", help="HTTPS with this certificate (with --key)")
    g.add_argument("--key", default=None, metavar="PEM", help="the certificate's private key, unencrypted")


def run_serve(args: argparse.Namespace) -> int:
    from .._numeric import one_blas_thread
    from ..model.predictor import Classifier
    from .serve_config import ServeConfig, default_threads
    from .server import create_app, run_server

    threads = default_threads() if args.threads is None else args.threads
    if args.corrections is not None:
        try:
            Path(args.corrections).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--corrections {args.corrections} cannot be made ({exc.strerror or exc})") from None
    from .serve_config import choose_token, default_rate_limit
    from .tls import choose_tls

    token, warnings = choose_token(args.host, args.token, args.no_token)
    rate = default_rate_limit(args.host) if args.rate_limit is None else args.rate_limit
    tls = choose_tls(args.host, args.https, args.cert, args.key)
    cfg = ServeConfig(
        int(args.max_upload_mb * 2**20),
        args.max_pixels,
        threads,
        args.unsure_below,
        token=token,
        rate_limit=rate,
        corrections=args.corrections,
    )
    from ..model.builtin import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    clf = Classifier.load(checkpoint, device=args.device, category_names=args.category_names)
    with one_blas_thread():  # the server owns its process: numpy's BLAS keeps off the engine's cores for good
        return run_server(create_app(clf, cfg, str(checkpoint)), args.host, args.port, tls, warnings)


# check --deep compares frozen features of this pair (its figures in docs/data-check.md were measured with it).
DEEP_CHECK_ARCH = "efficientnet_lite0_lite2"


def add_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", help=DATA_DIR_HELP)
    p.add_argument("--min-size", type=int, default=64, help="warn about images with a shorter side under this")
    p.add_argument(
        "--max-imbalance", type=float, default=10.0, help="warn when train categories differ more than this factor"
    )
    _valid_fraction(p)
    p.add_argument("--strict", action="store_true", help="exit non-zero on warnings too")
    _json(p, "the report as JSON")
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
    _device(p)
    _engine(p)
    p.set_defaults(interrupt_hint="run it again: the features computed so far are cached")


def run_check(args: argparse.Namespace) -> int:
    """Exit 0 when the data can be trained on as it is, 1 when something would make training wrong.

    With --deep, also 1 when it lists anything: each finding is for the user to decide on.
    """
    from ..data.check import check_data
    from ..training.config import MIN_STEPS, TUNE_FROM

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
        from ..data.folders import CATEGORY_NAMES_FILE, load_category_names
        from ..evaluation.data_check import run_deep_check

        root = Path(args.data_dir)
        out = Path(args.out) if args.out else Path(f"check-{root.resolve().name}")
        names_path = root / CATEGORY_NAMES_FILE
        names = load_category_names(names_path) if names_path.is_file() else {}
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


def format_deep(findings, csv_path: Path, html_path: Path, shown: int = 5) -> str:
    """The deep check's summary: counts, the first few of each kind, where the files are."""
    from ..data.deep_check import DUPLICATE, LABEL, OUTLIER

    lines = [""]
    for kind, title in ((LABEL, "suspect labels"), (DUPLICATE, "near-duplicate pairs"), (OUTLIER, "outliers")):
        rows = findings.of_kind(kind)
        lines.append(f"deep: {len(rows)} {title}")
        for i in rows[:shown]:
            if kind == LABEL:
                lines.append(f"    {i.path}: filed under {i.given}, looks like {i.suggested} ({i.score:.3f})")
            elif kind == DUPLICATE:
                lines.append(f"    {i.path} = {i.other} ({i.score:.3f})")
            else:
                lines.append(f"    {i.path} ({i.score:.1f})")
        if len(rows) > shown:
            lines.append(f"    … and {len(rows) - shown} more")
    lines.append(f"deep: every finding is in {csv_path}; look at them in {html_path}")
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
    _json(p, "the summary of metrics.json instead of text")
    p.add_argument("--no-figures", action="store_true", help="write metrics.json only (faster)")
    p.add_argument(
        "--unknown",
        metavar="DIR",
        help="photos of none of the categories: how well the model tells them apart (AUROC, rates, a figure)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="photos per forward pass (default: %(default)s)")
    _category_names(p, "the checkpoint's")
    _device(p)
    _engine(p)


def run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..evaluation.run import evaluate

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    from ..model.builtin import BUILTIN, resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    beside = Path() if args.checkpoint == BUILTIN else checkpoint.parent  # never write into the installed package
    out = args.out or beside / f"eval-{Path(args.folder).resolve().name}"
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
    _device(p)
    _engine(p)


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


def add_show_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="photos in ImageFolder layout (a data folder with train/ shows train/)")
    p.add_argument("--out", default="batch.png", metavar="PATH", help="picture to write (default: %(default)s)")
    p.add_argument("-n", "--num", type=int, default=16, help="how many photos (default: %(default)s)")
    p.add_argument("--cols", type=int, default=4, help="photos per row (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="which random batch (default: %(default)s)")
    p.add_argument("--arch", default=None, help="show the preprocessing of this backbone (default: the default one)")
    p.add_argument("--checkpoint", default=None, help="show the preprocessing and names of this checkpoint")
    _category_names(p, "cat_to_name.json beside the data")


def run_show(args: argparse.Namespace) -> int:
    from .show import show_folder

    if args.num < 1 or args.cols < 1:
        raise UsageError("--num and --cols must be at least 1")
    path, skipped = show_folder(
        args.folder, args.out, args.num, args.cols, args.seed, args.arch, args.checkpoint, args.category_names
    )
    for p, reason in skipped.items():
        _err(f"{p}: {reason} (skipped)")
    print(f"wrote {path}")
    return 0


def run_backbones(args: argparse.Namespace) -> int:
    from ..backbones import list_specs

    specs = list_specs()
    width = max(len(spec.name) for spec in specs)
    print(f"{'name':<{width}} {'input':>5} {'features':>8}  {'ImageNet':>8}  weights")
    for spec in specs:
        top1 = f"{spec.imagenet_top1:.1f}%" if spec.imagenet_top1 else "-"
        print(f"{spec.name:<{width}} {spec.input_size:>5} {spec.num_features:>8}  {top1:>8}  {spec.weights.describe()}")
    return 0


def add_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", default=None, help="a checkpoint (default: the built-in model)")
    _json(p)


def run_info(args: argparse.Namespace) -> int:
    from ..model.builtin import BUILTIN, resolve_checkpoint
    from ..model.info import checkpoint_info, format_info

    builtin = args.checkpoint in (None, BUILTIN)
    info = checkpoint_info(resolve_checkpoint(args.checkpoint), shipped=builtin)
    print(json.dumps(info, indent=2, ensure_ascii=False) if args.json else format_info(info))
    return 0


def add_export_args(p: argparse.ArgumentParser) -> None:
    # Literal choices: importing .export here would load torch for every command (tests keep them in step).
    p.add_argument("checkpoint", help="a checkpoint, or `builtin` for the built-in 102-flower model")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="default: %(default)s")
    p.add_argument("--quantize", choices=["int8"], default=None, help="int8: smaller and faster (ONNX only)")
    p.add_argument("--out", required=True, help="model file to write (or a folder); the manifest goes beside it")
    p.add_argument(
        "--output",
        choices=["probabilities", "logits"],
        default="probabilities",
        help="what the graph returns (default: %(default)s)",
    )
    p.add_argument(
        "--calibration",
        default=None,
        metavar="DIR",
        help="photos for int8 calibration (default: the training data's train/)",
    )
    p.add_argument("--calibration-size", type=int, default=128, help="default: %(default)s")


def run_export(args: argparse.Namespace) -> int:
    from ..model.builtin import resolve_checkpoint
    from ..model.export import export_checkpoint

    ckpt = resolve_checkpoint(args.checkpoint)
    res = export_checkpoint(
        ckpt,
        args.out,
        args.format,
        quantize=args.quantize,
        output=args.output,
        calibration=args.calibration,
        calibration_size=args.calibration_size,
    )
    size = res.model_path.stat().st_size
    print(f"wrote {res.model_path} ({size / 1e6:.1f} MB) and {res.manifest_path}")
    return 0


def _no_args(p: argparse.ArgumentParser) -> None:
    pass


# The command table: name -> (help, declare its options, run it). Order is the order `--help` lists them.
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
    "backbones": ("list the backbones", _no_args, run_backbones),
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


def run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call a command, turning flowerid errors and Ctrl-C into messages and exit codes."""
    try:
        from ..data.images import max_pixels_default

        max_pixels_default()  # a bad FLOWERID_MAX_PIXELS fails here, not in a worker
        return func(args)
    except KeyboardInterrupt:
        hint = getattr(args, "interrupt_hint", None)
        if world().is_main:  # under torchrun every process is interrupted; one says so
            print(f"\nflowerid: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FlowerIdError as exc:
        _err(_as_cli_message(exc))
        return exc.exit_code
    except Exception as exc:
        if not world().distributed:
            raise
        # torchrun stops the other processes when this one exits: say why, and how to go on.
        text = str(exc).strip().splitlines()
        _err(
            f"{type(exc).__name__}: {text[0] if text else ''}; the job stops. Run the same command again: "
            "features already extracted are reused from the cache, rows already written are kept"
        )
        return 1
    finally:
        shutdown()


def _as_cli_message(exc: FlowerIdError) -> str:
    """The library names a setting as Python spells it (`epochs`); here it is the flag (`--epochs`)."""
    setting = getattr(exc, "setting", None)
    if not setting:
        return str(exc)
    return re.sub(rf"\b{re.escape(setting)}\b", "--" + setting.replace("_", "-"), str(exc), count=1)


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 must not crash printing
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
