#!/usr/bin/env python3
"""Teaching a trained model new flowers from a few photos (issue 22), cross-validated over species.

For each draw, 10 of the 102 species are left out; a preset is trained on the other 92 (a folder
of links under --work, through `flowerid train` in a fresh process, timed). Then the 10 are added
with `flowerid.add` from k = 1, 3, 5, 10 and all of their train photos (the first k of each, in a
fixed shuffled order), and scored on their valid photos (top-1, share called known, ECE) and on
the 92's valid photos (top-1 against the trained model's). The same features feed every method
compared (imprinting from the head alone, class-mean rows, the head's new rows refitted on the
stored statistics), so the methods differ only in how they set the new rows.

    python benchmarks/bench_add.py --draws 3 --presets default fast --work /work/artifacts/i22
    python benchmarks/bench_add.py --phase train ...   # only the trainings (slow; start them early)
    python benchmarks/bench_add.py --joint runs/default/checkpoint.pth ...  # + the preset trained on all 102
    python benchmarks/bench_add.py --draws 20 --presets default --also fast.json --plot docs/img/teach-curve.png

With --joint, the same valid photos are also scored by the preset trained on every species at once: a
model that must tell the 10 from the 92 loses some of the 92's photos however it learned them, so
that is the floor under the old species' drop.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import DEFAULT_DATA, subset  # noqa: E402

HELD_OUT = 10
KS = (1, 3, 5, 10, 0)  # 0: all of their train photos


def held_out(categories: list[str], draw: int) -> list[str]:
    """The draw's left-out species: a fixed random 10."""
    rng = np.random.default_rng(1000 + draw)
    return sorted(rng.choice(categories, HELD_OUT, replace=False).tolist(), key=int)


def train_draw(data: Path, work: Path, preset: str, draw: int, cache: Path | None = None) -> Path:
    """Train `preset` on the 92 species of this draw (once: a finished run is reused); the checkpoint path.

    The draws share one feature cache, so after the first most photos' features are cached: their
    wall_seconds are a warm re-run's. `cache` (an empty folder) times a cold run instead."""
    cats = sorted(p.name for p in (data / "train").iterdir())
    held = held_out(cats, draw)
    folder = subset(data, [c for c in cats if c not in held], work / "data" / f"draw{draw}")
    save = work / "runs" / f"{preset}-d{draw}" if cache is None else cache / "run"
    ckpt = save / "checkpoint.pth"
    if ckpt.exists():
        return ckpt
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    if cache is not None:
        env["FLOWERID_CACHE"] = str(cache)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "flowerid", "train", str(folder), "--preset", preset, "--save-dir", str(save)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    log = work / "logs" / f"train-{preset}-d{draw}{'' if cache is None else '-cold'}.log"
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"training {preset} draw {draw} failed; see {work / 'logs'}")
    (save / "wall_seconds.json").write_text(json.dumps({"wall_seconds": time.perf_counter() - t0}))
    return ckpt


def _features(clf, paths: list[Path]) -> np.ndarray:
    """Head inputs of photos through the checkpoint's own network (cached per weights digest)."""
    from flowerid.backbones.features import extract_features

    ex = extract_features(paths, clf.backbone, desc="features")
    if not ex.ok.all():
        raise SystemExit(f"{int((~ex.ok).sum())} unreadable photos in the flowers data")
    return ex.features


def _unknown_scores(ckpt: dict, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The head's logits and the unknown-photo scores of a checkpoint dict on feature rows."""
    from flowerid.model.head import HeadConfig
    from flowerid.model.predictor import NumpyHead
    from flowerid.model.unknown import UnknownDetector

    logits = NumpyHead(HeadConfig.from_dict(ckpt["head"]["config"]), ckpt["head"]["state_dict"])(feats)
    return logits, UnknownDetector.of_checkpoint(ckpt).score(feats, logits)


def _known_share(ckpt: dict, feats: np.ndarray) -> float:
    from flowerid.model.unknown import UnknownDetector

    return float(UnknownDetector.of_checkpoint(ckpt).known(_unknown_scores(ckpt, feats)[1]).mean())


def _score(ckpt: dict, feats: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1, share called known, ECE and mean confidence of a checkpoint dict on feature rows."""
    from flowerid._numeric import softmax
    from flowerid.evaluation.metrics import calibration
    from flowerid.model.unknown import UnknownDetector

    logits, scores = _unknown_scores(ckpt, feats)
    probs = softmax(logits)
    det = UnknownDetector.of_checkpoint(ckpt)
    correct = probs.argmax(1) == labels
    cal = calibration(probs.max(1), correct)
    return {
        "top1": float(correct.mean()),
        "known": float(det.known(scores).mean()),
        "ece": cal["ece"],
        "confidence": cal["mean_confidence"],
        "over_99": float((probs.max(1) > 0.99).mean()),
    }


def _extend(ckpt: dict, groups: list, method: str, seed: int) -> dict:
    """`extend_checkpoint` with `method`; "refit@W" draws the old categories W times wider at every k
    (instead of teach.old_widen's photo-dependent width), the constant widths it is measured against."""
    from flowerid.model import teach
    from flowerid.model.add import extend_checkpoint

    name, _, width = method.partition("@")
    if not width:
        return extend_checkpoint(ckpt, groups, name, seed=seed)
    rule, teach.old_widen = teach.old_widen, lambda photos: float(width)
    try:
        return extend_checkpoint(ckpt, groups, name, seed=seed)
    finally:
        teach.old_widen = rule


def _shuffled_train(data: Path, held: list[str], draw: int) -> dict[str, list[Path]]:
    """The held-out species' train photos in the draw's fixed shuffle: "k photos" are the first k."""
    rng = np.random.default_rng(draw)
    train = {c: sorted((data / "train" / c).iterdir()) for c in held}
    return {c: [ps[i] for i in rng.permutation(len(ps))] for c, ps in train.items()}


def evaluate_draw(
    data: Path, ckpt_path: Path, draw: int, methods: list[str], others: list[Path] | None = None
) -> list[dict]:
    """Every method and k on one trained draw: the new species' and the old species' valid scores.

    Two checks on the unknown-photo score: `others` (photos of other things) called known, and unseen
    species: half of the 10 added from the same k photos, the other half's valid photos called known
    (and the AUROC of the score between the two halves' valid photos).
    """
    import flowerid
    from flowerid.evaluation.metrics import auroc
    from flowerid.model.add import Group
    from flowerid.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    clf = flowerid.load(ckpt_path, device="cpu")
    cats = sorted(p.name for p in (data / "train").iterdir())
    held = held_out(cats, draw)
    train = _shuffled_train(data, held, draw)
    new_valid = [(p, c) for c in held for p in sorted((data / "valid" / c).iterdir())]
    old_valid = [(p, c) for c in clf.categories for p in sorted((data / "valid" / c).iterdir())]
    f_train = {c: _features(clf, ps) for c, ps in train.items()}
    f_new = _features(clf, [p for p, _ in new_valid])
    f_old = _features(clf, [p for p, _ in old_valid])
    y_old = np.array([clf.categories.index(c) for _, c in old_valid])
    f_others = _features(clf, others) if others else None
    half = set(held[: HELD_OUT // 2])
    in_half = np.array([c in half for _, c in new_valid])
    base = _score(ckpt, f_old, y_old)
    rows = []
    for method in methods:
        for k in KS:
            groups = [(Group(c, None, [], False), f[: k or len(f)]) for c, f in f_train.items()]
            t0 = time.perf_counter()
            new = _extend(ckpt, groups, method, seed=draw)
            fit_s = time.perf_counter() - t0
            y_new = np.array([new["categories"].index(c) for _, c in new_valid])
            n, o = _score(new, f_new, y_new), _score(new, f_old, y_old)
            part = _extend(ckpt, [g for g in groups if g[0].category in half], method, seed=draw)
            s_part = _unknown_scores(part, f_new)[1]
            rows.append(
                {"draw": draw, "method": method, "k": k or "all", "fit_seconds": fit_s}
                | {f"new_{a}": v for a, v in n.items()}
                | {f"old_{a}": v for a, v in o.items()}
                | {"old_drop": base["top1"] - o["top1"], "old_base_top1": base["top1"], "old_base_known": base["known"]}
                | {
                    "unseen_known": _known_share(part, f_new[~in_half]),
                    "unseen_auroc": auroc(s_part[in_half], s_part[~in_half]),
                }
                | (
                    {}
                    if f_others is None
                    else {
                        "others_known": _known_share(new, f_others),
                        "others_base_known": _known_share(ckpt, f_others),
                    }
                )
            )
            r = rows[-1]
            print(
                f"  {method:10s} k={r['k']!s:>3}: new top-1 {r['new_top1']:.2%} known {r['new_known']:.2%} "
                f"ECE {r['new_ece']:.3f} conf {r['new_confidence']:.2f}; old top-1 {r['old_top1']:.2%} "
                f"(drop {r['old_drop'] * 100:+.2f} pt), fit {fit_s:.1f}s; unseen species known {r['unseen_known']:.1%} "
                f"(AUROC {r['unseen_auroc']:.3f})"
                + (f", others known {r['others_known']:.1%}" if f_others is not None else ""),
                flush=True,
            )
    return rows


def joint_reference(data: Path, joint_path: Path, draw: int) -> dict:
    """What training on all the species at once gives on the same valid photos: the floor under "old drop".

    A model that must also tell the 10 apart from the 92 confuses some of the 92's photos with them
    whatever way it learned them; `add` is only to blame for the part of the drop beyond this one's.
    """
    import flowerid
    from flowerid.model.checkpoint import load_checkpoint

    clf = flowerid.load(joint_path, device="cpu")
    ckpt = load_checkpoint(joint_path)
    cats = sorted(p.name for p in (data / "train").iterdir())
    held = set(held_out(cats, draw))
    out = {"draw": draw}
    for part, keep in (("old", lambda c: c not in held), ("new", lambda c: c in held)):
        photos = [(p, c) for c in cats if keep(c) for p in sorted((data / "valid" / c).iterdir())]
        y = np.array([clf.categories.index(c) for _, c in photos])
        out[f"{part}_top1"] = _score(ckpt, _features(clf, [p for p, _ in photos]), y)["top1"]
    print(f"  trained on all {len(cats)} at once: old top-1 {out['old_top1']:.2%}, new {out['new_top1']:.2%}")
    return out


def time_add(data: Path, work: Path, ckpt_path: Path, draw: int, k: int | None = None) -> dict:
    """`flowerid.add` as a user runs it (features not cached) from all or `k` train photos of each of the
    10, against training time."""
    from flowerid.model.add import add

    cats = sorted(p.name for p in (data / "train").iterdir())
    if k is None:
        folder = subset(data, held_out(cats, draw), work / "data" / f"new{draw}") / "train"
    else:
        folder = work / "data" / f"new{draw}-k{k}"
        for c, photos in _shuffled_train(data, held_out(cats, draw), draw).items():
            (folder / c).mkdir(parents=True, exist_ok=True)
            for p in photos[:k]:
                if not (folder / c / p.name).exists():
                    (folder / c / p.name).symlink_to(p.resolve())
    t0 = time.perf_counter()
    res = add(ckpt_path, folder, work / "added" / f"{ckpt_path.parent.name}.pth", log=lambda s: None)
    seconds = time.perf_counter() - t0
    wall = ckpt_path.parent / "wall_seconds.json"
    train_s = (
        json.loads(wall.read_text())["wall_seconds"]
        if wall.exists()
        else json.loads((ckpt_path.parent / "metrics.json").read_text())["total_seconds"]
    )
    photos = sum(res.added.values())
    print(f"  add {photos} photos: {seconds:.1f}s; training took {train_s:.0f}s: {seconds / train_s:.1%}", flush=True)
    return {"draw": draw, "add_seconds": seconds, "train_seconds": train_s, "photos": photos}


def time_cold_training(data: Path, work: Path, preset: str, draw: int) -> float:
    """Seconds of one training of `preset` with an empty feature cache, as a new user's first run (once)."""
    done = work / "results" / f"{preset}-cold-train.json"
    if not done.exists():
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            ckpt = train_draw(data, work, preset, draw, cache=Path(tmp))
            seconds = json.loads((ckpt.parent / "wall_seconds.json").read_text())["wall_seconds"]
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"draw": draw, "cold_train_seconds": seconds}))
    return json.loads(done.read_text())["cold_train_seconds"]


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over draws per (method, k), with the old species' worst drop over the draws."""
    out = []
    keys = sorted(
        {(r["method"], str(r["k"])) for r in rows},
        key=lambda mk: (mk[0], KS.index(int(mk[1]) if mk[1] != "all" else 0)),
    )
    for method, k in keys:
        sel = [r for r in rows if r["method"] == method and str(r["k"]) == k]
        mean = {a: float(np.mean([r[a] for r in sel])) for a in sel[0] if isinstance(sel[0][a], float)}
        out.append(
            {"method": method, "k": k, "draws": len(sel)}
            | mean
            | {
                "new_top1_std": float(np.std([r["new_top1"] for r in sel])),
                "old_drop_worst": float(max(r["old_drop"] for r in sel)),
                "new_known_worst": float(min(r["new_known"] for r in sel)),
            }
            | ({"others_known_worst": float(max(r["others_known"] for r in sel))} if "others_known" in sel[0] else {})
        )
    return out


def table(summary: list[dict], preset: str) -> str:
    """A Markdown table of the summary."""
    lines = [
        f"| {preset}: method | photos per new species | new top-1 | new called known | new ECE | new mean confidence "
        "| old top-1 drop (mean / worst) | unseen species called known (AUROC) | others called known | fit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        others = f"{r['others_known']:.2%} (worst {r['others_known_worst']:.2%})" if "others_known" in r else "-"
        lines.append(
            f"| {r['method']} | {r['k']} | {r['new_top1']:.1%} ± {r['new_top1_std']:.1%} "
            f"| {r['new_known']:.1%} (worst {r['new_known_worst']:.1%}) "
            f"| {r['new_ece']:.3f} | {r['new_confidence']:.2f} "
            f"| {r['old_drop'] * 100:+.2f} / {r['old_drop_worst'] * 100:+.2f} pt "
            f"| {r['unseen_known']:.1%} ({r['unseen_auroc']:.3f}) | {others} | {r['fit_seconds']:.1f}s |"
        )
    return "\n".join(lines)


def plot(summaries: dict[str, list[dict]], path: Path) -> None:
    """New species' top-1 and share called known, and the old species' drop, against photos per new species."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    labels = {"1": 1, "3": 3, "5": 5, "10": 10}
    for preset, summary in summaries.items():
        for method in sorted({r["method"] for r in summary}):
            sel = [r for r in summary if r["method"] == method]
            xs = [labels.get(r["k"], 40) for r in sel]
            style = {"label": f"{preset} {method}", "marker": "o", "ls": "-" if preset == "default" else ":"}
            axes[0].plot(xs, [r["new_top1"] * 100 for r in sel], **style)
            axes[1].plot(xs, [r["new_known"] * 100 for r in sel], **style)
            axes[2].plot(xs, [r["old_drop_worst"] * 100 for r in sel], **style)
    for ax, title in zip(
        axes, ["new species top-1 (%)", "new species called known (%)", "old species: worst drop (pt)"], strict=True
    ):
        ax.set_xscale("log")
        ax.set_xticks([1, 3, 5, 10, 40], ["1", "3", "5", "10", "all"])
        ax.set_xlabel("photos per new species")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].axhline(85, color="grey", lw=0.8, ls="--")
    axes[1].axhline(80, color="grey", lw=0.8, ls="--")
    axes[2].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[2].set_ylim(-0.2, 3.0)  # imprinting from the head alone loses ~98 points: off the scale
    axes[2].text(1, 2.7, "imprint: ~98 pt, off scale", fontsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, default=Path("/work/artifacts/i22"))
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--first-draw", type=int, default=0)
    ap.add_argument("--presets", nargs="+", default=["default", "fast"])
    ap.add_argument("--phase", choices=["train", "all"], default="all")
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["refit", "class-mean", "imprint"],
        help="also refit@W: the old categories drawn W times wider at every k (teach.old_widen's alternatives)",
    )
    ap.add_argument(
        "--joint", type=Path, help="a checkpoint of the preset trained on every species: the old drop's floor"
    )
    ap.add_argument(
        "--others",
        type=Path,
        default=DEFAULT_DATA.parent / "not-flowers",
        help="photos of other things: the share the added models call known (skipped when the folder is missing)",
    )
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: WORK/bench_add.json)")
    ap.add_argument("--plot", type=Path, default=None, help="write the curve as a PNG here (docs/img/teach-curve.png)")
    ap.add_argument(
        "--also",
        type=Path,
        nargs="+",
        default=[],
        help="results JSON of earlier runs whose other presets join the plot (e.g. fast over fewer draws)",
    )
    args = ap.parse_args()
    results: dict = {"rows": {}, "timing": {}, "joint": {}, "cold_train_seconds": {}}
    from flowerid.data.folders import list_images

    others = list_images(args.others) if args.others.is_dir() else None
    for preset in args.presets:
        rows, timing, joint = [], [], []
        for draw in range(args.first_draw, args.draws):
            ckpt = train_draw(args.data, args.work, preset, draw)
            print(f"{preset} draw {draw}: {ckpt}", flush=True)
            if args.phase == "train":
                continue
            done = args.work / "results" / f"{preset}-d{draw}.json"  # a draw measured once is reused
            if not done.exists():
                part = {"rows": evaluate_draw(args.data, ckpt, draw, args.methods, others)}
                part["timing"] = time_add(args.data, args.work, ckpt, draw)
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text(json.dumps(part, indent=1))
            part = json.loads(done.read_text())
            if "timing_k5" not in part:  # a few photos each: the case the command is for
                part["timing_k5"] = time_add(args.data, args.work, ckpt, draw, k=5)
                done.write_text(json.dumps(part, indent=1))
            rows += part["rows"]
            timing.append(part["timing"] | {"add_k5_seconds": part["timing_k5"]["add_seconds"]})
            if args.joint:
                joint.append(joint_reference(args.data, args.joint, draw))
        if args.phase == "all":
            results["cold_train_seconds"][preset] = time_cold_training(args.data, args.work, preset, args.first_draw)
        results["rows"][preset], results["timing"][preset] = rows, timing
        results["joint"][preset] = joint
    if args.phase == "train":
        return
    summaries = {p: summarise(r) for p, r in results["rows"].items() if r}
    results["summary"] = summaries
    for preset, summary in summaries.items():
        print(table(summary, preset))
        t = results["timing"][preset]
        add_s, cold = [x["add_seconds"] for x in t], results["cold_train_seconds"][preset]
        few = [x["add_k5_seconds"] for x in t]
        print(
            f"{preset}: add of 5 photos each {np.mean(few):.1f}s (slowest {max(few):.1f}s): "
            f"{np.mean(few) / cold:.1%} (slowest {max(few) / cold:.1%}) of a cold training"
        )
        warm = [x["add_seconds"] / x["train_seconds"] for x in t]
        print(
            f"{preset}: add of all photos (features computed, never cached) {np.mean(add_s):.1f}s "
            f"(slowest {max(add_s):.1f}s); a cold training {cold:.0f}s: {np.mean(add_s) / cold:.1%} "
            f"(slowest {max(add_s) / cold:.1%}); the draws' own, mostly warm, trainings "
            f"{np.mean([x['train_seconds'] for x in t]):.0f}s: {np.mean(warm):.1%} (worst {max(warm):.1%})"
        )
        if results["joint"][preset]:
            j = results["joint"][preset]
            base = {r["draw"]: r["old_base_top1"] for r in results["rows"][preset]}
            floor = [base[x["draw"]] - x["old_top1"] for x in j]
            print(
                f"{preset} trained on every species at once ({args.joint}): the 92's top-1 "
                f"{np.mean([x['old_top1'] for x in j]):.2%}, "
                f"{np.mean(floor) * 100:+.2f} pt (worst {max(floor) * 100:+.2f}) against the 92-species model; "
                f"the 10's top-1 {np.mean([x['new_top1'] for x in j]):.2%}"
            )
    out = args.out or args.work / "bench_add.json"
    out.write_text(json.dumps(results, indent=1))
    if args.plot:
        for earlier in args.also:
            for preset, summary in json.loads(earlier.read_text())["summary"].items():
                summaries.setdefault(preset, summary)
        plot(summaries, args.plot)
    print(f"wrote {out}" + (f" and {args.plot}" if args.plot else ""))


if __name__ == "__main__":
    main()
