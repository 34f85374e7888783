"""Batch prediction's rate against the engine's raw rate, in one run, and its peak memory.

    python benchmarks/bench_batch.py [--data ../shared/data/flowers102] [--limit N] [--threads 2,3]

`flowerid predict DATA/train DATA/valid --out FILE.csv` (the built-in model, 7370 photos) runs as a
user would run it, in a fresh process that reports its own peak resident memory. The engine's raw
rate (the built-in model's backbone and head on ready-made batches, no decoding) is measured in this
process right before and right after, on the same machine state, in each way the product can run it (one
caller on all threads; one stream per core, as batch prediction runs it); the ratio to the best of them
is the figure to compare.
Goal: batch prediction at >= 0.90 of the raw rate, peak memory under 1 GB.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_DATA, LAUNCH_WITH_PEAK, ROOT

sys.path.insert(0, str(ROOT / "src"))


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def raw_rate(batch: int, seconds: float, streams: int = 1) -> tuple[float, float]:
    """Images per wall second and per CPU second of the built-in model's engine and head on ready batches:
    the ceiling for prediction. With `streams` > 1, that many threads each run their own batches on the
    engine's `for_streams` share of the cores, as batch prediction does."""
    import threading

    import numpy as np

    from flowerid._numeric import one_blas_thread
    from flowerid.model.predictor import load

    clf = load()
    engine = clf.backbone.engine.for_streams(streams)
    size = clf.preprocessing.crop_size
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    clf.forward(x, engine)  # warm-up
    counts = [0] * streams
    t0, c0 = time.perf_counter(), time.process_time()

    def run(i: int) -> None:
        while time.perf_counter() - t0 < seconds:
            clf.forward(x, engine)
            counts[i] += batch

    workers = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    with one_blas_thread():  # as batch prediction runs
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    n = sum(counts)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def batch_predict(inputs: list[str], out: Path, env: dict[str, str]) -> tuple[float, float, float, int, str]:
    """(images/s from predict's own clock, images per CPU second, peak RSS MiB, photos, summary line) of one
    cold CLI run."""
    full = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **env)
    c0 = children_cpu()
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCH_WITH_PEAK, "predict", *inputs, "--out", str(out)],
        env=full,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"predict failed: {proc.stderr[-2000:]}")
    line = next(s for s in proc.stdout.splitlines() if s.startswith("named "))
    m = re.search(r"named (\d+) photos? into .* in ([\d.]+)s", line)
    assert m, line
    n, seconds = int(m.group(1)), float(m.group(2))
    peak = [int(s.split()[1]) for s in proc.stderr.splitlines() if s.startswith("PEAK_KIB ")][-1] / 1024
    return n / seconds, n / (children_cpu() - c0), peak, n, line


def decode_cpu_ms(inputs: list[str], n: int = 400) -> float:
    """CPU milliseconds to read, decode, resize, crop and normalise one photo (the first `n`), on one thread."""
    import itertools

    from flowerid.data.walk import iter_photos
    from flowerid.model.predictor import load

    clf = load()
    paths = list(itertools.islice(iter_photos(inputs), n))
    c0 = time.process_time()
    for path in paths:
        clf.preprocess(path)
    return (time.process_time() - c0) / len(paths) * 1000


def loader_extraction(inputs: list[str]) -> float:
    """Images per wall second of train's feature extraction (decode in DataLoader worker processes) over the
    same photos. (Its CPU time is not comparable: worker processes are counted only once reaped.)"""
    from flowerid.backbones.features import extract_features
    from flowerid.data.walk import iter_photos
    from flowerid.model.predictor import load

    paths = [Path(p) for p in iter_photos(inputs)]
    backbone = load().backbone
    t0 = time.perf_counter()
    extract_features(paths, backbone, use_cache=False)
    return len(paths) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=0, help="only the first N photos (a symlinked subset; 0 = all)")
    ap.add_argument("--raw-seconds", type=float, default=10.0)
    ap.add_argument(
        "--compare-processes",
        action="store_true",
        help="also time train's extraction (DataLoader worker processes, torch) over the same photos",
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        inputs = [str(args.data / "train"), str(args.data / "valid")]
        if args.limit:
            from flowerid.data.walk import iter_photos

            sub = Path(tmp) / "subset"
            sub.mkdir()
            for i, p in enumerate(iter_photos(inputs)):
                if i >= args.limit:
                    break
                (sub / f"{i:06d}{Path(p).suffix}").symlink_to(Path(p).resolve())
            inputs = [str(sub)]
        from flowerid.model.batch import default_threads

        configs = [(8, 1), (32, 1), (8, default_threads())]
        raw_before = {c: raw_rate(c[0], args.raw_seconds, c[1]) for c in configs}
        rate, cpu_rate, peak, n, line = batch_predict(inputs, Path(tmp) / "out.csv", {})
        raw_after = {c: raw_rate(c[0], args.raw_seconds, c[1]) for c in configs}
        loader = loader_extraction(inputs) if args.compare_processes else None
        decode_ms = decode_cpu_ms(inputs)

    raw = {b: (raw_before[b][0] + raw_after[b][0]) / 2 for b in raw_before}
    raw_cpu = {b: (raw_before[b][1] + raw_after[b][1]) / 2 for b in raw_before}
    best, best_cpu = max(raw.values()), max(raw_cpu.values())
    load = os.getloadavg()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, load {load:.1f}")
    print(f"predict: {line}")
    print(f"{'measure':<58} {'img/s':>9} {'img/CPU-s':>10}")
    for b in raw:
        how = f"batch {b[0]} x {b[1]} stream{'s' if b[1] > 1 else ''}"
        label = f"engine raw, {how} ({raw_before[b][0]:.1f} / {raw_after[b][0]:.1f})"
        print(f"{label:<58} {raw[b]:9.1f} {raw_cpu[b]:10.1f}")
    print(f"{f'batch predict --out, {n} photos, decode included':<58} {rate:9.1f} {cpu_rate:10.1f}")
    if loader is not None:
        print(f"{'train extraction (DataLoader processes), same photos':<58} {loader:9.1f} {'-':>10}")
    engine_ms = 1000 / best_cpu
    ceiling = engine_ms / (engine_ms + decode_ms)
    one = configs[0]
    print(f"batch predict peak resident memory: {peak:.0f} MiB")
    print(f"CPU per photo: engine {engine_ms:.2f} ms (best raw), decode + preprocess {decode_ms:.2f} ms (one thread)")
    print("ratios (wall-clock ratios need an idle machine; per-CPU-second ratios hold under load too):")
    print(f"  batch predict / best raw engine rate, wall:         {rate / best:.3f}  (goal >= 0.90)")
    print(f"  the same per CPU second (engine's share of work):   {cpu_rate / best_cpu:.3f}")
    print(f"  batch predict / engine as one caller runs it, wall: {rate / raw[one]:.3f}  (batch {one[0]}, all threads)")
    print(f"  ceiling when decode has no idle core to use:        {ceiling:.3f}  (engine / (engine + decode) CPU)")
    print(f"  batch predict / that ceiling, per CPU second:       {cpu_rate / best_cpu / ceiling:.3f}")
    print(f"  peak memory / 1 GB:                                 {peak / 1024:.3f}  (goal < 1)")
    if loader is not None:
        print(f"  decode threads / decode processes, wall:            {rate / loader:.3f}")


if __name__ == "__main__":
    main()
