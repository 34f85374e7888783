"""Helpers shared by the benchmarks: timing subprocesses and making data subsets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "flowers102"

# `python -c LAUNCH_WITH_PEAK ARGS` runs `flowerid ARGS` in this fresh process and reports its own peak
# resident memory at exit as a `PEAK_KIB n` line on stderr. (The rusage of a forked child would report
# the benchmark's peak instead: Linux carries the parent's high-water mark across fork and exec.)
LAUNCH_WITH_PEAK = """
import atexit, runpy, sys
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("\\nPEAK_KIB " + line.split()[1] + "\\n")
atexit.register(_peak)
sys.argv = ["flowerid", *sys.argv[1:]]
runpy.run_module("flowerid", run_name="__main__")
"""


def run_cli(args: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Run `python -m flowerid ARGS` as a user would (a cold process); return wall seconds and the result."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **(env or {}))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flowerid", *args], env=full_env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"flowerid {' '.join(args[:2])} failed with exit {proc.returncode}")
    return seconds, proc


def subset(data: Path, categories: list[str], dest: Path) -> Path:
    """A data folder of a few categories, made of symlinks (no image is copied)."""
    for split in ("train", "valid"):
        (dest / split).mkdir(parents=True, exist_ok=True)
        for c in categories:
            link = dest / split / c
            if not link.exists():
                link.symlink_to((data / split / c).resolve(), target_is_directory=True)
    names = data / "cat_to_name.json"
    if names.exists() and not (dest / "cat_to_name.json").exists():
        (dest / "cat_to_name.json").symlink_to(names.resolve())
    return dest
