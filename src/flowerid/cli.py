"""Command line: `flowerid train|predict|info|export|backbones`. The only place errors become exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import FlowerIdError

EXIT_INTERRUPTED = 130


def _err(msg: str) -> None:
    print(f"flowerid: error: {msg}", file=sys.stderr)


def add_train_args(p: argparse.ArgumentParser) -> None:
    from .registry import DEFAULT_BACKBONE
    from .training import TrainConfig

    d = TrainConfig()
    p.add_argument("data_dir", help="folder with train/ and valid/ (and optionally test/) in ImageFolder layout")
    p.add_argument(
        "--save-dir", default="runs/flowers", help="where checkpoint.pth and metrics.json go (default: %(default)s)"
    )
    p.add_argument(
        "--arch", default=DEFAULT_BACKBONE, help="backbone (default: %(default)s); `flowerid backbones` lists them"
    )
    p.add_argument("--weights", default=None, metavar="PATH", help="local state dict for the backbone")
    p.add_argument("--epochs", type=int, default=d.epochs, help="head training epochs (default: %(default)s)")
    p.add_argument(
        "--learning-rate", type=float, default=d.learning_rate, help="peak learning rate (default: %(default)s)"
    )
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
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s")
    p.add_argument(
        "--category-names",
        default=None,
        metavar="JSON",
        help="category-to-name JSON (default: DATA_DIR/cat_to_name.json if present)",
    )
    p.add_argument("--no-cache", action="store_true", help="recompute features instead of using the cache")


def run_train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, train

    cfg = TrainConfig(
        arch=args.arch,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        hidden_units=args.hidden_units,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        weights=args.weights,
        category_names=args.category_names,
        use_cache=not args.no_cache,
    )
    train(args.data_dir, args.save_dir, cfg, log=lambda s: print(s, flush=True))
    return 0


def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="photos to name")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a checkpoint.pth written by `flowerid train` (default: the built-in 102-flower model)",
    )
    p.add_argument("--top-k", type=int, default=5, help="how many categories to show (default: %(default)s)")
    p.add_argument(
        "--category-names",
        default=None,
        metavar="JSON",
        help="category-to-name JSON (default: the names stored in the checkpoint)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_predict(args: argparse.Namespace) -> int:
    from .errors import ImageError
    from .predictor import Classifier

    if args.top_k < 1:
        raise FlowerIdError("--top-k must be at least 1")
    from .shipped import shipped_model_path

    checkpoint = args.checkpoint or shipped_model_path()
    clf = Classifier.load(checkpoint, device=args.device, category_names=args.category_names)
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
            records.append({"image": image, "predictions": [p.to_dict() for p in res]})
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
    else:
        for rec in records:
            if "predictions" in rec:
                print(format_predictions(rec["image"], rec["predictions"]))
    return 1 if failed else 0


def format_predictions(image: str, preds: list[dict]) -> str:
    width = max(len(p["name"] or p["category"]) for p in preds)
    lines = [image]
    for rank, p in enumerate(preds, 1):
        label = p["name"] or p["category"]
        bar = "█" * int(round(p["probability"] * 20))
        lines.append(
            f"  {rank}. {label:<{width}}  {p['probability']:7.2%}  {bar}"
            + (f"  [{p['category']}]" if p["name"] else "")
        )
    return "\n".join(lines)


def run_backbones(args: argparse.Namespace) -> int:
    from .registry import _REGISTRY

    print(f"{'name':<20} {'input':>5} {'features':>8}  {'ImageNet':>8}  weights")
    for spec in _REGISTRY.values():
        top1 = f"{spec.imagenet_top1:.1f}%" if spec.imagenet_top1 else "-"
        print(f"{spec.name:<20} {spec.input_size:>5} {spec.num_features:>8}  {top1:>8}  {spec.weights.describe()}")
    return 0


def add_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", default=None, help="a checkpoint (default: the built-in model)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_info(args: argparse.Namespace) -> int:
    from .info import checkpoint_info, format_info
    from .shipped import shipped_model_path

    info = checkpoint_info(args.checkpoint or shipped_model_path(), shipped=args.checkpoint is None)
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
    from .export import export_checkpoint
    from .shipped import shipped_model_path

    ckpt = shipped_model_path() if args.checkpoint == "builtin" else args.checkpoint
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowerid", description="Train image classifiers by transfer learning and name the flower in a photo."
    )
    parser.add_argument("--version", action="version", version=f"flowerid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("train", help="train a classifier head on a frozen pretrained backbone")
    add_train_args(p)
    p.set_defaults(func=run_train)
    p = sub.add_parser("predict", help="name the flowers in photos")
    add_predict_args(p)
    p.set_defaults(func=run_predict)
    p = sub.add_parser("info", help="say what a checkpoint is: backbone, categories, training, accuracy, digest")
    add_info_args(p)
    p.set_defaults(func=run_info)
    p = sub.add_parser("export", help="write a checkpoint as one ONNX or TorchScript model plus a JSON manifest")
    add_export_args(p)
    p.set_defaults(func=run_export)
    p = sub.add_parser("backbones", help="list the backbones")
    p.set_defaults(func=run_backbones)
    return parser


def run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call a command, turning flowerid errors and Ctrl-C into messages and exit codes."""
    try:
        return func(args)
    except KeyboardInterrupt:
        print("\nflowerid: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FlowerIdError as exc:
        _err(str(exc))
        return exc.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
