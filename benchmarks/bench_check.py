"""Issue 15's benchmark: `check --deep` on a copy of the shared data with planted mistakes.

Plants, in a temp folder (symlinks for untouched photos, real files for changed ones):
3% of train labels moved to a wrong category; 20 copies of valid photos in train
(80% size, JPEG quality 70; plain, mirrored, 10% cropped, or both); 10 non-flower
photos filed under categories. Then runs `flowerid check PLANTED --deep` twice
(the second run is the warm one: every feature from the cache) and prints

- label rows: recall and precision against the moved photos, and how often the
  suggestion is the photo's true category;
- duplicate rows: how many planted pairs are listed, and the other pairs found;
- outlier rows: how many non-flower photos are listed;
- the warm wall time, with the plain `check` on the same folder as the reference;
- what it finds on the real shared train+valid (first rows of each kind).

    python benchmarks/bench_check.py [--data ../shared/data/flowers102] [--seed 0] [--no-real]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_DATA, ROOT
from plant import plant

NOT_FLOWERS = DEFAULT_DATA.parent / "not-flowers"


def check(args: list[str]) -> tuple[float, int, str]:
    """`python -m flowerid check ARGS` in a fresh process: wall seconds, exit code, output."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flowerid", "check", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"flowerid check failed with exit {proc.returncode}")
    return seconds, proc.returncode, proc.stdout


def rows_of(out: Path) -> dict[str, list[dict[str, str]]]:
    rows = list(csv.DictReader((out / "issues.csv").open(encoding="utf-8")))
    return {k: [r for r in rows if r["kind"] == k] for k in ("label", "duplicate", "outlier")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--not-flowers", type=Path, default=NOT_FLOWERS)
    ap.add_argument("--seed", type=int, default=0, help="which photos get planted mistakes")
    ap.add_argument("--no-real", action="store_true", help="skip the run on the real shared data")
    ap.add_argument("--keep", action="store_true", help="keep the planted folder and the outputs")
    args = ap.parse_args()
    if not (args.data / "train").is_dir():
        raise SystemExit(f"no data at {args.data}; pass --data")
    work = Path(tempfile.mkdtemp(prefix="bench-check-"))
    try:
        planted = plant(args.data, work / "planted", args.not_flowers, seed=args.seed)
        out = work / "out"
        cold, _, _ = check([str(work / "planted"), "--deep", "--out", str(out)])
        warm, code, printed = check([str(work / "planted"), "--deep", "--out", str(out), "--json"])
        stages = json.loads(printed)["deep"]["seconds"]
        plain, _, _ = check([str(work / "planted")])
        found = rows_of(out)

        labels = found["label"]
        hits = [r for r in labels if r["path"] in planted.moved]
        right = sum(r["suggested"] == planted.moved[r["path"]][0] for r in hits)
        pairs = {frozenset((r["path"], r["other"])) for r in found["duplicate"]}
        listed = [d for d in planted.duplicates if frozenset(d[:2]) in pairs]
        strays = [r for r in found["outlier"] if r["path"] in planted.strays]
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; seed {args.seed}")
        print(
            f"planted: {len(planted.moved)} wrong labels, {len(planted.duplicates)} copies, "
            f"{len(planted.strays)} strays"
        )
        print(
            f"labels:     {len(labels)} rows, recall {len(hits) / len(planted.moved):.1%}, "
            f"precision {len(hits) / max(1, len(labels)):.1%}, true category suggested for {right}/{len(hits)}"
        )
        missed = [d[2] for d in planted.duplicates if d not in listed]
        print(
            f"duplicates: {len(listed)}/{len(planted.duplicates)} planted pairs listed"
            + (f" (missed: {', '.join(missed)})" if missed else "")
            + f"; {len(found['duplicate']) - len(listed)} other pairs"
        )
        print(
            f"outliers:   {len(strays)}/{len(planted.strays)} non-flower photos listed; "
            f"{len(found['outlier']) - len(strays)} other rows"
        )
        print(f"exit code {code}; cold {cold:.1f}s, warm {warm:.1f}s; plain check {plain:.1f}s ({warm / plain:.2f}x)")
        print("warm stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()))

        if not args.no_real:
            real_out = work / "real"
            seconds, code, _ = check([str(args.data), "--deep", "--out", str(real_out)])
            real = rows_of(real_out)
            print(
                f"\nreal data {args.data}: {seconds:.1f}s, exit {code}; "
                + ", ".join(f"{len(v)} {k}" for k, v in real.items())
            )
            for kind, rows in real.items():
                for r in rows[:8]:
                    extra = f" -> {r['suggested']}" if kind == "label" else (f" = {r['other']}" if r["other"] else "")
                    print(f"  {kind:9s} {r['score']:>7s} {r['path']} ({r['given']}){extra}")
            if args.keep:
                print(f"real data findings: {real_out}")
        if args.keep:
            print(f"kept {work}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
