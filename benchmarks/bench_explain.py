#!/usr/bin/env python3
"""Do the explanations point at what the answer depends on? A deletion test (issue 21), and what they cost.

1. Deletion: for a fixed seeded sample of valid photos (one from each of N categories drawn at random), the
   top category's map is computed; then a quarter of the grid's cells is greyed in the photo itself (through
   `box`, with the preprocessing's mean colour): the hottest quarter, the coldest quarter and a random
   quarter. The photo is named again and the drop of the first answer's probability is recorded.
   Goal: the hottest quarter drops it by >= 0.15 on average and by >= 3x the coldest quarter.
2. Cost: the same photos explained (`Explainer.explain_photos`, spatial graph warm) against named
   (`predict_many`), per photo, in one process, alternating; and with --cold, `flowerid predict` on one photo
   in a fresh process, this tree against a base checkout (default ../base), median of 7 runs, alternating.

    python benchmarks/bench_explain.py                                # the built-in model
    python benchmarks/bench_explain.py --checkpoint /work/artifacts/best/checkpoint.pth --cold
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VALID = ROOT.parent / "shared" / "data" / "flowers102" / "valid"


def sample(folder: Path, n: int, seed: int) -> list[Path]:
    """One photo from each of `n` categories drawn at random (seeded): the same photos every run."""
    rng = random.Random(seed)
    cats = sorted(p for p in folder.iterdir() if p.is_dir())
    chosen = sorted(rng.sample(cats, min(n, len(cats))), key=lambda p: p.name)
    photos = []
    for cat in chosen:
        files = sorted(f for f in cat.iterdir() if f.is_file())
        photos.append(rng.choice(files))
    return photos


def grey(photo, cells: np.ndarray, colour: tuple[int, int, int]):
    """A copy of `photo` with the given cells' rectangles (x0, y0, x1, y1 in its pixels) painted `colour`."""
    from PIL import ImageDraw

    out = photo.copy()
    draw = ImageDraw.Draw(out)
    for x0, y0, x1, y1 in cells:
        draw.rectangle((int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)) - 1, int(np.ceil(y1)) - 1), fill=colour)
    return out


def deletion(clf, photos: list[Path], seed: int) -> dict[str, float]:
    """Mean drop of the top category's probability when each kind of quarter is greyed."""
    from flowerid.data.images import load_image

    ex = clf.explainer
    mean = tuple(int(round(255 * m)) for m in clf.preprocessing.mean)
    rng = np.random.default_rng(seed)
    drops: dict[str, list[float]] = {"hottest": [], "coldest": [], "random": []}
    exact = True
    worst_identity = 0.0
    for path in photos:
        photo = load_image(path)  # full resolution: the box is in these pixels
        array, box = ex.prepare(photo)
        res = ex.explain_arrays([array], [box], 1, 1)[0]
        e = res.explanations[0]
        exact &= e.exact
        worst_identity = max(worst_identity, abs(e.grid.mean() + e.bias - e.logit))
        c = clf.categories.index(e.category)
        order = np.argsort(e.grid.ravel(), kind="stable")
        q = max(1, round(order.size / 4))
        boxes = e.cell_boxes().reshape(-1, 4)
        picks = {"hottest": order[-q:], "coldest": order[:q], "random": rng.choice(order.size, q, replace=False)}
        batch = np.stack([ex.prepare(grey(photo, boxes[idx], mean))[0] for idx in picks.values()])
        probs = clf.forward(batch)[0][:, c]
        for (kind, _), p in zip(picks.items(), probs, strict=True):
            drops[kind].append(float(e.probability - p))
    out = {k: float(np.mean(v)) for k, v in drops.items()}
    out["ratio_hot_cold"] = out["hottest"] / max(out["coldest"], 1e-9)
    out["exact"] = exact
    out["worst_identity_error"] = worst_identity
    return out


def cost(clf, photos: list[Path], rounds: int = 3) -> dict[str, float]:
    """Seconds per photo named and explained (spatial graph warm), alternating, best of `rounds`."""
    clf.explainer.explain_photos(photos[:4])  # load (or export) the spatial graph first
    named, explained = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        clf.predict_many(photos, top_k=5, batch_size=8)
        named.append((time.perf_counter() - t) / len(photos))
        t = time.perf_counter()
        clf.explainer.explain_photos(photos, top_k=5, k=1, batch_size=8)
        explained.append((time.perf_counter() - t) / len(photos))
    return {"predict_s": min(named), "explain_s": min(explained), "ratio": min(explained) / min(named)}


def _cold(src: Path, checkpoint: str, photo: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(src))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flowerid", "predict", str(photo), "--checkpoint", checkpoint],
                   env=env, check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - t


def cold(base: Path, checkpoint: str, photo: Path, runs: int = 7) -> dict[str, float]:
    """Cold one-photo `predict` (no --explain) in fresh processes: the base checkout against this tree."""
    here = ROOT / "src"
    _cold(base / "src", checkpoint, photo), _cold(here, checkpoint, photo)  # warm caches and the page cache
    a, b = [], []
    for _ in range(runs):
        a.append(_cold(base / "src", checkpoint, photo))
        b.append(_cold(here, checkpoint, photo))
    ma, mb = statistics.median(a), statistics.median(b)
    return {"base_s": ma, "this_s": mb, "ratio": mb / ma}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="builtin")
    p.add_argument("--valid", type=Path, default=VALID)
    p.add_argument("-n", type=int, default=80, help="photos (one per category drawn)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cold", action="store_true", help="also time cold one-photo predict against --base")
    p.add_argument("--base", type=Path, default=ROOT.parent / "base")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds of the cost section (best of)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args()

    import flowerid
    from flowerid.model.builtin import resolve_checkpoint

    clf = flowerid.load(resolve_checkpoint(a.checkpoint), device="cpu")
    photos = sample(a.valid, a.n, a.seed)
    t = time.perf_counter()
    d = deletion(clf, photos, a.seed)
    print(f"== deletion test: {a.checkpoint} ({clf.spec.name}), {len(photos)} valid photos, seed {a.seed}, "
          f"{time.perf_counter() - t:.0f}s")  # fmt: skip
    print(f"   greying the hottest quarter: mean drop {d['hottest']:.3f}   (goal >= 0.15)")
    print(f"   greying the coldest quarter: mean drop {d['coldest']:.3f}")
    print(f"   greying a random quarter:    mean drop {d['random']:.3f}")
    print(f"   hottest / coldest:           {d['ratio_hot_cold']:.1f}x   (goal >= 3x)")
    print(f"   exact: {d['exact']}; largest |mean(grid) + bias - logit|: {d['worst_identity_error']:.2e}")
    c = cost(clf, photos, a.rounds)
    print(f"== cost per photo (warm, batches of 8): predict {c['predict_s'] * 1000:.1f} ms, "
          f"predict + explain {c['explain_s'] * 1000:.1f} ms ({c['ratio']:.2f}x)")  # fmt: skip
    out = {"checkpoint": a.checkpoint, "backbone": clf.spec.name, "n": len(photos), **d, "cost": c}
    if a.cold:
        k = cold(a.base, a.checkpoint, photos[0])
        out["cold"] = k
        print(f"== cold one-photo predict, median of 7 alternating: base {k['base_s']:.2f}s, "
              f"this tree {k['this_s']:.2f}s, ratio {k['ratio']:.3f}")  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
