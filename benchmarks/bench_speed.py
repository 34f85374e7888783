"""Issue 4's figures, in one run on one machine: matmul rate, backbone images/s per engine,
end-to-end extraction over the shared train split, cold/warm train, cold CLI predict, peak memory.

    python benchmarks/bench_speed.py [--data ../shared/data/flowers102] [--arch efficientnet_lite0]

Machines are noisy: compare the ratios printed at the end, which come from the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_DATA, LAUNCH_WITH_PEAK, ROOT

sys.path.insert(0, str(ROOT / "src"))


def rate(fn, batch: int, seconds: float = 6.0) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += batch
    return n / (time.perf_counter() - t0)


def matmul_gflops() -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    per = 2 * 2048**3
    return rate(lambda: a @ b, 1, 3.0) * per / 1e9


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of `flowerid ARGS` in a fresh process."""
    full = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **env)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCH_WITH_PEAK, *args],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"flowerid {' '.join(args[:2])} failed: {proc.stderr[-2000:]}")
    peaks = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_KIB ")]
    return wall, (peaks[-1] / 1024 if peaks else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--arch", default="efficientnet_lite0")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--skip-default", action="store_true", help="skip the default preset's cold train (3-4 min)")
    args = ap.parse_args()
    import torch

    from flowerid.backbones import get_spec
    from flowerid.backbones._platform import tune_malloc
    from flowerid.backbones.build import build_backbone
    from flowerid.backbones.engines import OnnxEngine, export_onnx, load_backbone
    from flowerid.backbones.features import extract_features
    from flowerid.data.folders import load_dataset

    spec = get_spec(args.arch)
    rows: list[tuple[str, float, str]] = []
    gflops = matmul_gflops()
    rows.append(("matmul 2048x2048 float32 (torch)", gflops, "GFLOP/s"))

    module, _ = build_backbone(spec)
    x = torch.randn(args.batch, 3, spec.input_size, spec.input_size)
    with torch.inference_mode():
        eager = rate(lambda: module(x), args.batch)
        rows.append((f"backbone torch eager, batch {args.batch}", eager, "img/s"))
        module_cl = module.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        rows.append(
            (f"backbone torch channels_last, batch {args.batch}", rate(lambda: module_cl(x_cl), args.batch), "img/s")
        )
        tune_malloc()
        rows.append(
            ("backbone torch channels_last + malloc tuning", rate(lambda: module_cl(x_cl), args.batch), "img/s")
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(module.to(memory_format=torch.contiguous_format), Path(tmp) / "b.onnx", spec.input_size)
        ort = OnnxEngine(path)
        xn = x.numpy()
        raw_onnx = rate(lambda: ort(xn), args.batch)
        rows.append((f"backbone onnxruntime (chosen engine), batch {args.batch}", raw_onnx, "img/s"))

        data = load_dataset(args.data)
        os.environ["FLOWERID_CACHE"] = str(Path(tmp) / "cache")
        bb = load_backbone(spec, "cpu", engine="onnx")
        t0 = time.perf_counter()
        ex = extract_features(data.train.paths, bb, use_cache=False, desc="end-to-end")
        e2e = len(data.train.paths) / (time.perf_counter() - t0)
        rows.append((f"end-to-end extraction, {len(data.train.paths)} train photos, decode included", e2e, "img/s"))
        assert ex.ok.all()

        env = {"FLOWERID_CACHE": str(Path(tmp) / "cache2")}
        run = ["train", str(args.data), "--save-dir", f"{tmp}/run"]
        cold, cold_mem = timed([*run, "--preset", "fast", "--arch", spec.name], env)
        warm, warm_mem = timed([*run, "--preset", "fast", "--arch", spec.name], env)
        rows.append((f"cold train --preset fast ({spec.name}, empty cache), wall", cold, "s"))
        rows.append((f"warm train --preset fast ({spec.name}, cached), wall", warm, "s"))
        if not args.skip_default:
            env_d = {"FLOWERID_CACHE": str(Path(tmp) / "cache3")}
            cold_d, cold_d_mem = timed([*run[:-1], f"{tmp}/run_default"], env_d)
            warm_d, _ = timed([*run[:-1], f"{tmp}/run_default"], env_d)
            rows.append(("cold train, default preset (two backbones, empty cache), wall", cold_d, "s"))
            rows.append(("warm train, default preset (cached), wall", warm_d, "s"))
        photos = sorted(str(p) for p in data.valid.paths)[:100]
        ckpt = f"{tmp}/run/checkpoint.pth"
        one, one_mem = timed(["predict", photos[0], "--checkpoint", ckpt], env)
        hundred, hundred_mem = timed(["predict", *photos, "--checkpoint", ckpt], env)
        one_torch, _ = timed(["predict", photos[0], "--checkpoint", ckpt, "--engine", "torch"], env)
        rows.append(("cold CLI predict, 1 photo, wall", one, "s"))
        rows.append(("cold CLI predict, 100 photos, wall", hundred, "s"))
        rows.append(("cold CLI predict, 1 photo, --engine torch, wall", one_torch, "s"))
        if not args.skip_default:
            one_d, _ = timed(["predict", photos[0], "--checkpoint", f"{tmp}/run_default/checkpoint.pth"], env_d)
            rows.append(("cold CLI predict, 1 photo, default-preset model, wall", one_d, "s"))
        one_b, _ = timed(["predict", photos[0]], env)
        rows.append(("cold CLI predict, 1 photo, built-in model, wall", one_b, "s"))
        mems = [
            ("cold train, fast", cold_mem),
            ("warm train, fast", warm_mem),
            ("predict 1", one_mem),
            ("predict 100", hundred_mem),
        ]
        if not args.skip_default:
            mems.insert(2, ("cold train, default", cold_d_mem))
        for name, mem in mems:
            rows.append((f"peak memory, {name}", mem, "MiB"))

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"torch {torch.__version__}, backbone {spec.name}"
    )
    print(f"{'measure':<62} {'value':>10}  unit")
    for name, value, unit in rows:
        print(f"{name:<62} {value:10.2f}  {unit}")
    gflop_per_img = {"efficientnet_lite0": 0.8}.get(spec.name)
    print("ratios:")
    print(f"  end-to-end / onnxruntime raw backbone:   {e2e / raw_onnx:.2f}  (goal >= 0.80)")
    print(f"  end-to-end / torch eager raw backbone:   {e2e / eager:.2f}  (goal >= 3)")
    print(f"  onnxruntime / torch eager:               {raw_onnx / eager:.2f}")
    if gflop_per_img:
        print(f"  onnxruntime share of matmul rate:        {raw_onnx * gflop_per_img / gflops:.2f}")
    print(f"  warm / cold train (fast):                {warm / cold:.3f}")
    print(f"  cold predict, onnx / torch engine:       {one / one_torch:.2f}")


if __name__ == "__main__":
    main()
