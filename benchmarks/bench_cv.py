"""Issue 13's table: every preset cross-validated over train+valid pooled, and timed as a user runs it.

For each preset: 5 stratified folds (seed 0) of the 7370 labelled photos, each fold
trained exactly as `flowerid train` trains (same features or cached activations, same
fit, a fixed number of epochs), printed as top-1 mean +- sd over the folds, top-5,
and the out-of-fold expected calibration error (each fold's temperature fitted on
the other folds' held-out predictions). Then the cold wall time of `flowerid train
--preset P` from an empty cache and the warm re-run (warm/cold is the ratio), and
the 10-category check: a subset whose valid split is classified perfectly must not
call photos of other things flowers with certainty (median top probability on
../shared/data/not-flowers). The hidden test split is never used.

A distilled recipe (`--presets distilled`) trains its teacher's recipe inside each fold on that
fold's training photos only (its logits kept under teachers/ in the cache, so a second student
costs only its own training); its timing runs need a trained teacher (`--teacher CHECKPOINT`).
`--set KEY=VALUE` changes a setting of the presets cross-validated (the curve of issue 25:
`--presets distilled --set epochs=12 --set views=2`); it skips the timing runs.

    python benchmarks/bench_cv.py [--presets fast,default,best,distilled] [--folds 0,1] [--no-timing] [--save DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_train import TEN  # the 10 categories whose valid split the default classifies perfectly
from common import DEFAULT_DATA, ROOT, run_cli, subset

sys.path.insert(0, str(ROOT / "src"))

NOT_FLOWERS = DEFAULT_DATA.parent / "not-flowers"


def ten_category_check(data: Path, work: Path, preset: str) -> str:
    """Train `preset` on 10 categories; valid accuracy, temperature and not-flowers' median top probability."""
    import flowerid
    from flowerid.data.images import IMAGE_EXTENSIONS
    from flowerid.model.checkpoint import load_checkpoint

    ten = subset(data, TEN, work / "ten")
    run = work / f"ten-{preset}"
    run_cli(["train", str(ten), "--preset", preset, "--save-dir", str(run)])
    clf = flowerid.load(run / "checkpoint.pth")
    ck = load_checkpoint(run / "checkpoint.pth")
    photos = sorted(p for p in NOT_FLOWERS.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    tops = [r[0].probability for r in clf.predict_many(photos, top_k=1) if isinstance(r, list)]
    m = ck["metrics"]
    return (
        f"10 categories, {preset}: valid top-1 {m['valid_acc']:.2%}, temperature {m.get('temperature', 1.0):.2f} "
        f"({'fitted' if m.get('temperature_identified', True) else 'not identifiable: unscaled'}); "
        f"median top probability on {len(tops)} not-flower photos {statistics.median(tops):.2f}"
    )


def settings(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs of TrainConfig settings, each value read as JSON where it parses (12, 2.0, true)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def main() -> None:
    from flowerid.training.config import TrainConfig
    from flowerid.training.crossval import FOLDS, CVResult, combine, cross_validate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--presets", default="fast,default,best")
    ap.add_argument("--folds", default="", help="only these folds (e.g. 0,1): a quicker, rougher figure")
    ap.add_argument("--no-timing", action="store_true", help="skip the cold/warm `flowerid train` runs")
    ap.add_argument("--no-cv", action="store_true", help="only the timings and the 10-category check")
    ap.add_argument("--no-ten", action="store_true", help="skip the 10-category not-flowers check")
    ap.add_argument("--save", type=Path, help="keep each preset's out-of-fold logits here (NAME.npz)")
    ap.add_argument("--ensemble", action="append", default=[], metavar="A+B", help="also score saved results averaged")
    ap.add_argument("--teacher", type=Path, help="a trained teacher for the distilled preset's timing runs")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a training setting of every preset cross-validated (e.g. epochs=12, views=2); no timing runs",
    )
    args = ap.parse_args()
    overrides = settings(args.set)
    if overrides:
        args.no_timing = True  # the timings run the presets as shipped
    if not (args.data / "train").is_dir():
        raise SystemExit(f"no data at {args.data}; pass --data")
    only = [int(f) for f in args.folds.split(",")] if args.folds else None
    rows: list[tuple[str, str, CVResult, float]] = []
    results: dict[str, CVResult] = {}
    for preset in [p for p in args.presets.split(",") if p and not args.no_cv]:
        cfg = TrainConfig.from_preset(preset, **overrides)
        if overrides:
            preset += "[" + ",".join(f"{k}={v}" for k, v in overrides.items()) + "]"
        t0 = time.perf_counter()
        taught = f", {cfg.views} views, taught by {cfg.teacher} trained in each fold" if cfg.teacher else ""
        print(f"== {preset}: {cfg.arch}, tune_stages {cfg.tune_stages}, {cfg.epochs} epochs{taught}", flush=True)
        result = cross_validate(args.data, cfg, only=only, log=lambda s: print("  " + s, flush=True))
        results[preset] = result
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            result.save(args.save / f"{preset}.npz")
        rows.append(
            (
                preset,
                f"{cfg.arch}"
                + (f", last {cfg.tune_stages} stage(s) tuned" if cfg.tune_stages else "")
                + (f", taught by {cfg.teacher}" if cfg.teacher else ""),
                result,
                time.perf_counter() - t0,
            )
        )
    for spec in args.ensemble:
        members = [results.get(m) or CVResult.load(args.save / f"{m}.npz") for m in spec.split("+")]
        rows.append((spec, "averaged log-probabilities", combine(*members), 0.0))

    timings: dict[str, tuple[float, float]] = {}
    ten_lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.no_timing:
            for preset in [p for p in args.presets.split(",") if p]:
                argv = ["train", str(args.data), "--preset", preset, "--save-dir", str(work / preset)]
                if TrainConfig.from_preset(preset).teacher:
                    if args.teacher is None:
                        print(f"{preset}: not timed (it needs --teacher CHECKPOINT)", flush=True)
                        continue
                    argv += ["--teacher", str(args.teacher)]
                env = {"FLOWERID_CACHE": str(work / f"cache-{preset}")}  # empty: a cold run
                cold, _ = run_cli(argv, env)
                warm, _ = run_cli(argv, env)
                timings[preset] = (cold, warm)
                print(f"{preset}: cold {cold / 60:.1f} min, warm {warm / 60:.1f} min", flush=True)
        if not args.no_ten:
            ten_lines.append(ten_category_check(args.data, work, "default"))

    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}; "
        f"{len(only) if only else FOLDS} of {FOLDS} folds, seed 0, train+valid pooled"
    )
    print(
        f"{'preset':<14} {'recipe':<44} {'CV top-1 (mean +- sd)':>22} {'top-5':>7} {'ECE':>6} "
        f"{'cold':>7} {'warm':>7} {'warm/cold':>9}"
    )
    for name, recipe, r, _ in rows:
        t1 = r.top1
        sd = t1.std(ddof=1) if len(t1) > 1 else float("nan")
        cold, warm = timings.get(name, (float("nan"), float("nan")))
        print(
            f"{name:<14} {recipe:<44} {t1.mean():>13.2%} +- {sd:.2%} {r.top5.mean():7.2%} {r.ece():6.3f} "
            f"{cold / 60:5.1f} m {warm / 60:5.1f} m {warm / cold if cold == cold else float('nan'):9.2f}"
        )
    for name, (cold, warm) in timings.items():
        if name not in results:
            print(
                f"{name:<14} (not cross-validated in this run) cold {cold / 60:.1f} m, warm {warm / 60:.1f} m, "
                f"warm/cold {warm / cold:.2f}"
            )
    for line in ten_lines:
        print(line)


if __name__ == "__main__":
    main()
