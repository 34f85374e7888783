"""Issue 2's figures: valid accuracy and wall time of a cold and a warm default `train`,
and a 10-class `--epochs 5` run judged through `predict --json` on held-back photos.

    python benchmarks/bench_train.py [--data ../shared/data/flowers102]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

from common import DEFAULT_DATA, run_cli, subset

TEN = ["1", "10", "2", "21", "49", "54", "73", "74", "77", "89"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    if not (args.data / "train").is_dir():
        raise SystemExit(f"no data at {args.data}; pass --data")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {"FLOWERID_CACHE": str(tmp / "cache")}
        rows = []
        for label in ("cold", "warm"):
            secs, _ = run_cli(["train", str(args.data), "--save-dir", str(tmp / label)], env)
            m = json.loads((tmp / label / "metrics.json").read_text())
            rows.append((f"default train, {label} cache", secs, m["valid_acc"], m["features_computed"]))

        # 10 categories, 5 epochs; judged on the valid photos of those categories, never seen in training.
        ten = subset(args.data, TEN, tmp / "ten")
        secs, _ = run_cli(["train", str(ten), "--save-dir", str(tmp / "ten-run"), "--epochs", "5"], env)
        photos = sorted(p for c in TEN for p in (args.data / "valid" / c).iterdir())
        _, proc = run_cli(
            [
                "predict",
                *map(str, photos),
                "--checkpoint",
                str(tmp / "ten-run" / "checkpoint.pth"),
                "--top-k",
                "1",
                "--json",
            ],
            env,
        )
        records = json.loads(proc.stdout)
        right = sum(r["predictions"][0]["category"] == Path(r["image"]).parent.name for r in records)
        rows.append(("10 classes, --epochs 5, predict --json", secs, right / len(records), None))

    print(f"machine: {platform.machine()}, {platform.processor() or '?'}, python {platform.python_version()}")
    print(f"{'run':<40} {'wall s':>8} {'accuracy':>9} {'features computed':>18}")
    for name, secs, acc, computed in rows:
        print(f"{name:<40} {secs:8.1f} {acc:9.2%} {'' if computed is None else computed:>18}")
    print(f"warm/cold wall ratio: {rows[1][1] / rows[0][1]:.3f}")


if __name__ == "__main__":
    main()
