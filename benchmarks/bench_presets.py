"""Issue 5's table: each preset trained on the shared train split from an empty cache.

Prints valid top-1, top-5, expected calibration error (ECE) and the cold wall time
of `flowerid train --preset P`, one row per preset, in one run. The valid split
both chooses the best epoch and the temperature and is reported here, as the
README says; the held-back test split is never used.

    python benchmarks/bench_presets.py [--data ../shared/data/flowers102] [--presets fast,default,best]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from common import DEFAULT_DATA, run_cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--presets", default="fast,default,best")
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="LABEL=FLAGS",
        help='another configuration to time, e.g. "lite0-tuned=--preset fast --tune-stages 1 --epochs 12"',
    )
    ap.add_argument("--work", type=Path, help="keep caches and runs in this new folder (default: a temp folder)")
    args = ap.parse_args()
    if not (args.data / "train").is_dir():
        raise SystemExit(f"no data at {args.data}; pass --data")
    rows = []
    if args.work and args.work.exists():
        raise SystemExit(f"{args.work} exists; the caches must start empty")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.work or Path(tmp)
        runs = [(p, ["--preset", p]) for p in args.presets.split(",") if p]
        runs += [(label, flags.split()) for label, _, flags in (e.partition("=") for e in args.extra)]
        for preset, flags in runs:
            env = {"FLOWERID_CACHE": str(tmp / f"cache-{preset}")}  # empty: a cold run
            run = tmp / preset
            secs, _ = run_cli(["train", str(args.data), *flags, "--save-dir", str(run)], env)
            trained = json.loads((run / "metrics.json").read_text())
            _, proc = run_cli(
                ["evaluate", str(run / "checkpoint.pth"), str(args.data / "valid"), "--json", "--no-figures"], env
            )
            ev = json.loads(proc.stdout)
            rows.append((preset, ev, trained, secs))
            print(f"{preset}: done in {secs:.0f}s", flush=True)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(
        f"{'preset':<12} {'backbone':<30} {'valid top-1':>11} {'top-5':>7} {'ECE':>6} {'T':>5} "
        f"{'cold train':>10} {'features':>9}"
    )
    for preset, ev, trained, secs in rows:
        print(
            f"{preset:<12} {ev['backbone']:<30} {ev['top1']:11.2%} {ev['top5']:7.2%} {ev['ece']:6.3f} "
            f"{trained.get('temperature', 1.0):5.2f} {secs / 60:8.1f} m {trained['feature_seconds']:7.0f} s"
        )
    print("valid top-1 is the best epoch's, chosen on valid; T is the temperature fitted on valid.")


if __name__ == "__main__":
    main()
