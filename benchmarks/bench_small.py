"""Issue 23's table: does the default recipe hold on small sets, and against the tutorials' plain recipe?

Small sets are drawn from the data at hand: the flowers (train+valid pooled) subsampled to 2, 5,
10 and 30 categories with 10, 20 and 40 photos each, and as a second domain cats-dogs (2 categories)
and not-flowers grouped into animals and objects (2 broad categories of ImageNet classes). Each
draw picks categories and photos with its own seed, lays them out as one folder per category
(symlinks under --work) and cross-validates each recipe on it: 5 stratified folds, each trained
exactly as `flowerid train` trains; valid is never used. `--unbalanced` adds sets whose categories
hold 40 down to 5 photos (8x imbalance), scored by mean per-class accuracy as well as top-1.

Recipes: `plain` is the tutorials' transfer learning (frozen backbone, linear head, Adam at 1e-3, no
weight decay or label smoothing, batch 32, 10 epochs: TensorFlow's tutorial's initial_epochs);
`default` is the default preset as `flowerid train` runs it on that set (each fold's recipe fitted to
its training photos by `training.config.adapt_to_data`); `default-fixed` is the preset without adapting.

Bounded by default: the sizes where `default` keeps the backbone frozen (under 200 training photos a
fold), about 5 minutes for 3 draws on 2 shared cores once the features are cached. `--sizes all` adds
30 x 10, 10 x 40, 30 x 20 and 30 x 40, where the default tunes the last stage: minutes a fold there.

    nice -n 5 python benchmarks/bench_small.py [--draws 3] [--recipes plain,default] [--sizes all] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA, ROOT

sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TQDM_DISABLE", "1")

SHARED = DEFAULT_DATA.parent
FLOWER_SIZES = [(c, n) for c in (2, 5, 10, 30) for n in (10, 20, 40)]
OTHER_SIZES = [(2, n) for n in (10, 20, 40)]
BOUNDED = ["2x10", "2x20", "2x40", "5x10", "5x20", "5x40", "10x10", "10x20"]  # default frozen there: seconds a size


def flower_pool() -> dict[str, list[Path]]:
    from flowerid.data.folders import list_images

    out: dict[str, list[Path]] = {}
    for split in ("train", "valid"):
        for d in sorted((DEFAULT_DATA / split).iterdir()):
            out.setdefault(d.name, []).extend(list_images(d))
    return out


def cats_dogs_pool() -> dict[str, list[Path]]:
    from flowerid.data.folders import list_images

    root = SHARED / "cats-dogs"
    return {c: list_images(root / "training_set" / c) + list_images(root / "test_set" / c) for c in ("cats", "dogs")}


def not_flowers_pool() -> dict[str, list[Path]]:
    """ImageNet classes grouped by WordNet id: animals (below n026) and made objects (n026 to n05)."""
    from flowerid.data.folders import list_images

    out: dict[str, list[Path]] = {"animals": [], "objects": []}
    for p in list_images(SHARED / "not-flowers"):
        wnid = int(p.name[1:9])
        if wnid < 2_600_000:
            out["animals"].append(p)
        elif wnid < 5_000_000:
            out["objects"].append(p)
    return out


def draw(pool: dict[str, list[Path]], counts: list[int], seed: int) -> dict[str, list[Path]]:
    """Categories (with enough photos) and photos chosen by `seed`; counts[i] photos for the i-th category."""
    rng = np.random.default_rng(seed)
    able = sorted(c for c, ps in pool.items() if len(ps) >= max(counts))
    cats = [able[i] for i in rng.choice(len(able), size=len(counts), replace=False)]
    return {
        c: [pool[c][i] for i in rng.choice(len(pool[c]), size=n, replace=False)]
        for c, n in zip(cats, counts, strict=True)
    }


def lay_out(picks: dict[str, list[Path]], dest: Path) -> Path:
    """One folder per category of symlinks: the layout people bring with no split."""
    for cat, photos in picks.items():
        (dest / cat).mkdir(parents=True, exist_ok=True)
        for p in photos:
            link = dest / cat / p.name
            if not link.is_symlink():
                link.symlink_to(p.resolve())
    return dest


def plain_recipe() -> object:
    """The tutorials' transfer learning: a frozen backbone and a linear head, their optimiser and epochs."""
    from flowerid.training.config import TrainConfig

    return TrainConfig(
        arch="efficientnet_lite0", epochs=10, learning_rate=1e-3, weight_decay=0.0, label_smoothing=0.0,
        batch_size=32, tune_stages=0, preset=None, calibrate=False,
    )  # fmt: skip


@contextmanager
def recipe(name: str) -> Iterator[object]:
    """The settings of a named recipe: `plain`, a preset (adapted per fold as train() adapts it), PRESET-fixed
    (not adapted), or PRESET@key=value;...: keys MIN_STEPS, MIN_BATCH, BALANCE_ABOVE set the adapting rule
    for the duration, any other key a TrainConfig field (e.g. default@MIN_STEPS=300, default@tune_stages=0)."""
    import dataclasses

    from flowerid.training import config
    from flowerid.training.config import TrainConfig

    if name == "plain":
        yield plain_recipe()
        return
    preset, _, rest = name.partition("@")
    fixed = preset.endswith("-fixed")
    pairs = {k: _typed(v) for k, v in (kv.split("=", 1) for kv in rest.split(";") if kv)}
    rule = {k: v for k, v in pairs.items() if k.isupper()}
    saved = {k: getattr(config, k) for k in rule}
    cfg = TrainConfig.from_preset(preset.removesuffix("-fixed"), adapt=not fixed)
    try:
        for k, v in rule.items():
            setattr(config, k, v)
        yield dataclasses.replace(cfg, **{k: v for k, v in pairs.items() if k not in rule})
    finally:
        for k, v in saved.items():
            setattr(config, k, v)


def _typed(v: str) -> object:
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def score(result) -> tuple[float, float]:
    """Top-1 (mean over folds) and mean per-class accuracy of out-of-fold predictions."""
    pred = result.logits.argmax(1)
    per_class = [float((pred[result.labels == c] == c).mean()) for c in np.unique(result.labels)]
    return float(result.top1.mean()), float(np.mean(per_class))


def main() -> None:
    from flowerid.training.crossval import cross_validate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=3, help="draws of categories and photos per size (default: 3)")
    ap.add_argument(
        "--recipes",
        default="plain,default",
        help="comma-separated: plain, default, default-fixed, or PRESET@key=value;key=value",
    )
    ap.add_argument("--domains", default="flowers,cats-dogs,not-flowers")
    ap.add_argument(
        "--sizes", default=",".join(BOUNDED), help="CxN sizes, e.g. 2x10,30x40, or all (default: the frozen ones)"
    )
    ap.add_argument("--unbalanced", action="store_true", help="also 10 flower categories of 40 down to 5 photos")
    ap.add_argument("--work", type=Path, default=Path("/tmp/flowerid-bench-small"), help="where the symlinks go")
    args = ap.parse_args()
    chosen = [r for r in args.recipes.split(",") if r]
    pools = {"flowers": flower_pool, "cats-dogs": cats_dogs_pool, "not-flowers": not_flowers_pool}
    only = set() if args.sizes == "all" else {s for s in args.sizes.split(",") if s}
    jobs: list[tuple[str, str, list[int]]] = []  # (domain, size label, photos per category)
    for domain in [d for d in args.domains.split(",") if d]:
        for c, n in FLOWER_SIZES if domain == "flowers" else OTHER_SIZES:
            if not only or f"{c}x{n}" in only:
                jobs.append((domain, f"{c}x{n}", [n] * c))
        if domain == "flowers" and args.unbalanced:
            jobs.append((domain, "10x40..5", [int(round(40 / 2 ** (i / 3))) for i in range(10)]))
    rows: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    t_start = time.perf_counter()
    cache = {name: pools[name]() for name in {d for d, _, _ in jobs}}
    for d in range(args.draws):  # every size once before any twice: an interrupted run still has a full table
        for domain, label, counts in jobs:
            folder = lay_out(
                draw(cache[domain], counts, seed=1000 * d + len(counts)), args.work / f"{domain}-{label}-d{d}"
            )
            for name in chosen:
                t0 = time.perf_counter()
                with recipe(name) as cfg:
                    result = cross_validate(folder, cfg, log=lambda s: None)
                rows.setdefault((domain, label, name), []).append(score(result))
                top1, mca = rows[(domain, label, name)][-1]
                print(
                    f"{domain} {label} draw {d} {name}: top-1 {top1:.2%}, per-class {mca:.2%} "
                    f"({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
        f"{args.draws} draws a size, 5 folds each; {(time.perf_counter() - t_start) / 60:.1f} min"
    )
    head = f"{'domain':<12} {'categories x photos':<20}" + "".join(f" {r:>16}" for r in chosen)
    print(head + ("   (mean per-class accuracy in brackets)" if args.unbalanced else ""))
    for domain, label, _ in jobs:
        cells = []
        for name in chosen:
            got = rows[(domain, label, name)]
            top1 = statistics.mean(g[0] for g in got)
            cells.append(f"{top1:>7.2%}" + (f" ({statistics.mean(g[1] for g in got):.1%})" if ".." in label else ""))
        print(f"{domain:<12} {label:<20}" + "".join(f" {c:>16}" for c in cells))


if __name__ == "__main__":
    main()
