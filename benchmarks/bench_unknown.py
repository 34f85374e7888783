#!/usr/bin/env python3
"""How well flowerid says "not one of my categories" (issue 14), measured the way a user meets it.

1. Photos of other things: the valid flowers against ../shared/data/not-flowers, through a
   checkpoint (default: the built-in model). AUROC, the share of non-flowers let through at the
   threshold that keeps 95% of valid flowers, and both error rates at the stored threshold.
2. Flowers of species the model never saw: for each draw, 10 species are left out of training
   (the preset's recipe, through `flowerid.train` on a folder of links), and their photos are
   scored against the other species' valid photos, with the same score and threshold rule.
3. Cost: `flowerid predict` on one photo in a fresh process (cold), median of several runs, with
   the detector and without it (the same checkpoint minus its "unknown" entry), alternating.
4. Exports: the ONNX graph's second output against predict's score on real photos.

Scores of photos whose features are cached come from the cache (the same engine and numbers as
`predict`); section 4 and the spot check in section 1 compare with `Classifier.predict` itself.

    python benchmarks/bench_unknown.py                     # built-in model, 3 draws of the default preset
    python benchmarks/bench_unknown.py --draws 5 --preset fast
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _scores(clf, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(unknown scores, logits) of photos through the checkpoint's backbone, from the feature cache."""
    from flowerid.backbones.features import extract_features

    ex = extract_features(paths, clf.backbone, desc="features")
    feats = ex.features[ex.ok]
    logits = clf.head(feats)
    return clf.unknown.score(feats, logits), logits


def _rates(known: np.ndarray, unknown: np.ndarray, threshold: float) -> dict[str, float]:
    from flowerid.evaluation.metrics import rejection_metrics

    m = rejection_metrics(known, unknown, threshold)
    return {k: m[k] for k in ("auroc", "unknown_accepted_at_95", "unknown_accepted_at_threshold")} | {
        "known_rejected_at_threshold": m["known_rejected_at_threshold"]
    }


def other_things(checkpoint: Path, data: Path, others: Path) -> None:
    import flowerid
    from flowerid.data.folders import list_images, scan_folder

    clf = flowerid.load(checkpoint, device="cpu")
    if clf.unknown is None:
        sys.exit(f"{checkpoint} cannot tell unknown photos (trained before flowerid could); retrain it")
    valid = scan_folder(data / "valid", clf.categories)
    s_valid, logits = _scores(clf, valid.paths)
    s_other, _ = _scores(clf, list_images(others))
    r = _rates(s_valid, s_other, clf.unknown.threshold)
    top1 = float((logits.argmax(1) == np.asarray(valid.targets)).mean())
    print(f"== photos of other things: {checkpoint.name} ({clf.spec.name}), {clf.unknown.describe()}")
    print(f"   valid flowers {len(s_valid)}, other things {len(s_other)} ({others})")
    print(f"   AUROC                                   {r['auroc']:.4f}   (goal >= 0.999)")
    print(f"   other things let through at 95% kept    {r['unknown_accepted_at_95']:.2%}")
    print(f"   other things called known at threshold  {r['unknown_accepted_at_threshold']:.2%}   (goal <= 1%)")
    print(f"   valid flowers called unknown            {r['known_rejected_at_threshold']:.2%}   (goal <= 6%)")
    recorded = clf.checkpoint.get("metrics", {}).get("valid_acc")
    print(f"   valid top-1 {top1:.2%} (the checkpoint recorded {recorded:.2%}: the detector leaves the head alone)")
    # Spot check: predict itself gives these scores.
    for path, expected in list(zip(valid.paths, s_valid, strict=True))[:3]:
        got = clf.predict(path, top_k=1)[0].unknown_score
        assert abs(got - expected) < 1e-4, (path, got, expected)


def _link_folder(data: Path, keep: list[str], root: Path) -> Path:
    """A data folder of links to the kept categories' train/ and valid/ folders (the cache follows links)."""
    for split in ("train", "valid"):
        (root / split).mkdir(parents=True)
        for cat in keep:
            os.symlink((data / split / cat).resolve(), root / split / cat)
    if (data / "cat_to_name.json").exists():
        os.symlink((data / "cat_to_name.json").resolve(), root / "cat_to_name.json")
    return root


def held_out_species(data: Path, preset: str, draws: int, held_out: int) -> None:
    import flowerid
    from flowerid.data.folders import find_categories, list_images, scan_folder
    from flowerid.training.config import TrainConfig

    cats = find_categories(data / "train")
    cfg = TrainConfig.from_preset(preset)
    print(f"== species left out of training: preset {preset} ({cfg.arch}, tune_stages {cfg.tune_stages}), "
          f"{held_out} of {len(cats)} species out, {draws} draws")  # fmt: skip
    rows = []
    for d in range(draws):
        rng = np.random.default_rng(100 + d)
        out = sorted(rng.choice(cats, held_out, replace=False).tolist())
        keep = [c for c in cats if c not in out]
        with tempfile.TemporaryDirectory(prefix="flowerid-heldout-") as tmp:
            folder = _link_folder(data, keep, Path(tmp) / "data")
            t0 = time.perf_counter()
            result = flowerid.train(folder, Path(tmp) / "run", cfg, log=lambda s: None)
            clf = flowerid.load(result.checkpoint_path, device="cpu")
            s_known, _ = _scores(clf, scan_folder(folder / "valid", clf.categories).paths)
            unseen = [p for c in out for split in ("train", "valid") for p in list_images(data / split / c)]
            s_unseen, _ = _scores(clf, unseen)
            r = _rates(s_known, s_unseen, clf.unknown.threshold)
            rows.append(r)
            print(
                f"   draw {d}: AUROC {r['auroc']:.4f}; unseen let through at 95% kept "
                f"{r['unknown_accepted_at_95']:.1%}, "
                f"at threshold {r['unknown_accepted_at_threshold']:.1%}; known valid called unknown "
                f"{r['known_rejected_at_threshold']:.1%}; valid top-1 {result.metrics['valid_acc']:.2%} "
                f"({time.perf_counter() - t0:.0f}s; left out {', '.join(out)})"
            )
    a = [r["auroc"] for r in rows]
    sd = statistics.stdev(a) if len(a) > 1 else 0.0
    print(f"   AUROC mean {statistics.mean(a):.4f} +- {sd:.4f} over {len(a)} draws (goal >= 0.95)")


def _cold_predict(checkpoint: Path, photo: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "flowerid", "predict", str(photo), "--checkpoint", str(checkpoint)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def latency(checkpoint: Path, photo: Path, runs: int) -> None:
    from flowerid.model.checkpoint import load_checkpoint, save_checkpoint

    with tempfile.TemporaryDirectory(prefix="flowerid-latency-") as tmp:
        plain = load_checkpoint(checkpoint)
        plain.pop("unknown", None)
        without = save_checkpoint(plain, Path(tmp) / "without.pth")
        with_ = save_checkpoint(load_checkpoint(checkpoint), Path(tmp) / "with.pth")  # a tuned backbone's path resolved
        _cold_predict(with_, photo)  # warm the ONNX graph cache and the page cache once
        a, b = [], []
        for _ in range(runs):
            a.append(_cold_predict(without, photo))
            b.append(_cold_predict(with_, photo))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"== predict one photo, cold (a fresh process), median of {runs}, alternating")
    print(f"   without the detector {ma * 1000:.0f} ms, with it {mb * 1000:.0f} ms: ratio {mb / ma:.3f} (goal <= 1.05)")


def export_agreement(checkpoint: Path, photos: list[Path]) -> None:
    import onnxruntime as ort

    import flowerid
    from flowerid.model.export import export_checkpoint

    clf = flowerid.load(checkpoint, device="cpu")
    with tempfile.TemporaryDirectory(prefix="flowerid-export-") as tmp:
        res = export_checkpoint(checkpoint, Path(tmp) / "m.onnx")
        sess = ort.InferenceSession(str(res.model_path), providers=["CPUExecutionProvider"])
        batch = np.stack([clf.preprocess(p) for p in photos])
        _, onnx_scores = sess.run(None, {"input": batch})
    predicted = np.array([clf.predict(p, top_k=1)[0].unknown_score for p in photos])
    worst = float(np.abs(onnx_scores - predicted).max())
    same = bool((clf.unknown.known(predicted) == (onnx_scores <= res.manifest["unknown"]["threshold"])).all())
    print(f"== ONNX export: second output vs predict on {len(photos)} photos: max |difference| {worst:.2e} "
          f"(goal <= 1e-4); same verdict on every photo: {same}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED / "flowers102")
    ap.add_argument("--not-flowers", type=Path, default=SHARED / "not-flowers")
    ap.add_argument("--checkpoint", default="builtin", help="a checkpoint.pth, or builtin (default)")
    ap.add_argument("--preset", default="default", help="the recipe the species draws train with")
    ap.add_argument("--draws", type=int, default=3, help="species draws (0: skip; each trains a model)")
    ap.add_argument("--held-out", type=int, default=10)
    ap.add_argument("--latency-runs", type=int, default=7)
    args = ap.parse_args()
    from flowerid.data.folders import list_images
    from flowerid.model.builtin import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    other_things(checkpoint, args.data, args.not_flowers)
    valid = sorted(list_images(args.data / "valid"))
    export_agreement(checkpoint, valid[::100] + sorted(list_images(args.not_flowers))[::60])
    latency(checkpoint, valid[0], args.latency_runs)
    if args.draws:
        held_out_species(args.data, args.preset, args.draws, args.held_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
