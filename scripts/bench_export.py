#!/usr/bin/env python3
"""Measure the float and int8 ONNX exports of a checkpoint: size, ONNX Runtime images/s, valid top-1.

    python scripts/bench_export.py                       # the built-in model on the shared valid split

Photos are read with flowerid's loader and the manifest's preprocessing, once,
outside the timing; images/s is pure ONNX Runtime inference on this CPU (batch
32, median of 3 passes over the timing set). top-1 is over the whole split, and
"agrees" counts photos where the export's top-1 is `flowerid predict`'s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "flowers102"


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    from flowerid.data.folders import load_dataset
    from flowerid.data.preprocess import Preprocessing
    from flowerid.model.builtin import shipped_model_path
    from flowerid.model.export import export_checkpoint
    from flowerid.model.predictor import Classifier

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: the built-in model")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="train/ (calibration) and valid/ (scoring)")
    ap.add_argument("--out-dir", type=Path, default=None, help="keep the exports here (default: a temp folder)")
    ap.add_argument("--timing-images", type=int, default=256, help="photos in the timing set (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads")
    args = ap.parse_args(argv)

    ckpt = args.checkpoint or shipped_model_path()
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="flowerid-bench-export-"))
    valid = load_dataset(args.data).valid
    exports = {}
    for label, quantize in (("float32", None), ("int8", "int8")):
        t0 = time.perf_counter()
        res = export_checkpoint(ckpt, out_dir / f"flowers-{label}.onnx", quantize=quantize, calibration=args.data)
        exports[label] = (res, time.perf_counter() - t0)
    prep = Preprocessing.from_dict(exports["float32"][0].manifest["preprocessing"])

    t0 = time.perf_counter()
    arrays = [prep.load(p) for p in valid.paths]
    targets = np.asarray(valid.targets)
    print(f"preprocessed {len(arrays)} valid photos in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    clf = Classifier.load(ckpt, device="cpu")
    predict_top1 = np.concatenate(
        [clf.predict_proba(np.stack(arrays[i : i + 32])).argmax(1) for i in range(0, len(arrays), 32)]
    )

    rows = []
    for label, (res, export_s) in exports.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(str(res.model_path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        probs = np.concatenate(
            [sess.run(None, {name: np.stack(arrays[i : i + 32])})[0] for i in range(0, len(arrays), 32)]
        )
        top1 = probs.argmax(1)
        timing = np.stack(arrays[: args.timing_images])
        sess.run(None, {name: timing[:32]})  # warm-up
        rates = []
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(0, len(timing), 32):
                sess.run(None, {name: timing[i : i + 32]})
            rates.append(len(timing) / (time.perf_counter() - t0))
        rows.append(
            (
                label,
                res.model_path.stat().st_size / 1e6,
                statistics.median(rates),
                float((top1 == targets).mean()),
                float((top1 == predict_top1).mean()),
                export_s,
            )
        )
    print(f"predict (flowerid, torch): valid top-1 {float((predict_top1 == targets).mean()):.2%} on {len(targets)}")
    print("| export | size MB | images/s (ORT, CPU) | valid top-1 | top-1 agrees with predict | export s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, size, rate, acc, agree, secs in rows:
        print(f"| {label} | {size:.1f} | {rate:.1f} | {acc:.2%} | {agree:.2%} | {secs:.0f} |")
    print(f"exports in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
