"""The commands that use a trained model: `flowerid predict`, `serve`, `show`, `info`, `export` and `backbones`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .._text import shown
from ..distributed import world
from ..errors import UsageError
from .explain import add_explain_args, check_explain_args, run_explained
from .options import add_category_names, add_checkpoint, add_device, add_engine, add_json, err
from .printing import format_predictions, print_json

if TYPE_CHECKING:
    from ..model.predictor import Classifier


def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="photos to name; with --out, folders too (walked, links followed)")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write a row per photo into FILE (.csv, .jsonl, .parquet); a re-run skips the photos FILE names",
    )
    add_checkpoint(p)
    p.add_argument("--top-k", type=int, default=None, help="how many categories to show (default: 5; with --out, 1)")
    add_category_names(p, "the names stored in the checkpoint")
    add_device(p)
    add_json(p, "JSON instead of a table")
    add_engine(p)
    p.add_argument(
        "--plot",
        metavar="PATH",
        help="also draw each photo beside a bar chart of its top-K (one image: PATH; several: PATH-<image>.png, "
        "or <image>.png inside PATH when it is a folder)",
    )
    add_explain_args(p)
    p.set_defaults(interrupt_hint="with --out, run the same command again to go on where it stopped")


def run_predict(args: argparse.Namespace) -> int:

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

        device = w.device_for(resolve_device(device))
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
                err(f"{image}: {res.reason}")
        else:
            records.append({"image": image, **photo_fields(res), "predictions": [p.to_dict() for p in res]})
    if args.json:
        print_json(records)
    else:
        for rec in records:
            if "predictions" in rec:
                print(format_predictions(rec["image"], rec["predictions"], rec["known"], clf.num_classes))
    if args.plot:
        from ..evaluation.photo_figures import write_prediction_plots

        for path in write_prediction_plots(clf, args.images, results, args.plot):
            print(f"plot: {shown(path)}", file=sys.stderr)
    return 1 if failed else 0


def _predict_to_file(clf: Classifier, args: argparse.Namespace) -> int:
    """`predict ... --out FILE`: every photo into FILE; an unreadable photo is a row with its error, not a failure."""
    from ..model.batch import predict_to_file
    from ..model.builtin import resolve_checkpoint

    def warn(path: str, reason: str) -> None:
        err(f"{path}: {reason} (folder skipped)")

    checkpoint = resolve_checkpoint(args.checkpoint)
    s = predict_to_file(clf, args.images, args.out, top_k=args.top_k, warn=warn, checkpoint=checkpoint)
    if world().is_main:
        print(
            f"named {s.predicted} photo{'s' if s.predicted != 1 else ''} into {args.out} in {s.seconds:.1f}s "
            f"({s.rate:.1f}/s)"
            + (f"; {s.errors} could not be read (rows with an error)" if s.errors else "")
            + (f"; {s.already} were already there" if s.already else "")
        )
    return 0


def add_serve_args(p: argparse.ArgumentParser) -> None:
    from .serve_config import DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_UNSURE_BELOW

    add_checkpoint(p)
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
    add_category_names(p, "checkpoint's")
    add_device(p)
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
    from .listen import run_server
    from .serve_config import ServeConfig, default_threads
    from .server import create_app

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


def add_show_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="photos in ImageFolder layout (a data folder with train/ shows train/)")
    p.add_argument("--out", default="batch.png", metavar="PATH", help="picture to write (default: %(default)s)")
    p.add_argument("-n", "--num", type=int, default=16, help="how many photos (default: %(default)s)")
    p.add_argument("--cols", type=int, default=4, help="photos per row (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="which random batch (default: %(default)s)")
    p.add_argument("--arch", default=None, help="show the preprocessing of this backbone (default: the default one)")
    p.add_argument("--checkpoint", default=None, help="show the preprocessing and names of this checkpoint")
    add_category_names(p, "cat_to_name.json beside the data")


def run_show(args: argparse.Namespace) -> int:
    from .show import show_folder

    if args.num < 1 or args.cols < 1:
        raise UsageError("--num and --cols must be at least 1")
    path, skipped = show_folder(
        args.folder, args.out, args.num, args.cols, args.seed, args.arch, args.checkpoint, args.category_names
    )
    for p, reason in skipped.items():
        err(f"{p}: {reason} (skipped)")
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
    add_json(p)


def run_info(args: argparse.Namespace) -> int:
    from ..model.builtin import BUILTIN, resolve_checkpoint
    from ..model.info import checkpoint_info, format_info

    builtin = args.checkpoint in (None, BUILTIN)
    info = checkpoint_info(resolve_checkpoint(args.checkpoint), shipped=builtin)
    if args.json:
        print_json(info)
    else:
        print(format_info(info))
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
