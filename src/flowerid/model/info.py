"""What a checkpoint is: backbone, categories, how it was trained, its validation figures, file digest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._io import file_sha256
from .._text import pct, shown
from ..backbones import get_spec
from ..errors import BackboneError
from .checkpoint import load_checkpoint
from .head import HeadConfig


def checkpoint_info(path: str | os.PathLike, shipped: bool = False) -> dict[str, Any]:
    """A JSON-ready summary of a checkpoint (no weights, no per-epoch history)."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    backbone = dict(ckpt["backbone"])
    try:
        spec = get_spec(backbone["name"])
        backbone.update(arch=spec.arch, input_size=spec.input_size, weights_source=spec.weights.describe())
    except BackboneError:  # an unknown backbone is reported by name; `predict` says what is wrong with it
        pass
    metrics = {k: v for k, v in ckpt.get("metrics", {}).items() if k != "history"}
    if "history" in ckpt.get("metrics", {}):
        metrics["epochs_run"] = len(ckpt["metrics"]["history"])
    return {
        "path": str(path),
        "shipped": shipped,
        "file_bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "format": f"{ckpt['format']} v{ckpt['format_version']}",
        "flowerid_version": ckpt.get("flowerid_version"),
        "created": ckpt.get("created"),
        "backbone": backbone,
        "preprocessing": ckpt["preprocessing"],
        "head": ckpt["head"].get("config", {}),
        "num_classes": len(ckpt["categories"]),
        "categories": list(ckpt["categories"]),
        "names": list(ckpt["names"]),
        "training": ckpt.get("training", {}),
        "metrics": metrics,
        "unknown": _unknown_info(ckpt),
        "additions": list(ckpt.get("additions") or []),
        "can_add": ckpt.get("class_stats") is not None,
    }


def _unknown_info(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """How the checkpoint tells photos of other things, or None when it cannot (trained before it could)."""
    from .unknown import UnknownDetector

    det = UnknownDetector.of_checkpoint(ckpt)
    if det is None:
        return None
    return {
        "method": det.method,
        "threshold": det.threshold,
        "accept_rate": det.accept_rate,
        "negative_prototypes": len(det.negatives),
        "stored_floats": int(det.means.size + det.negatives.size),
    }


def format_info(info: dict[str, Any]) -> str:
    """The summary as aligned lines for a terminal."""
    b, p, t, m = info["backbone"], info["preprocessing"], info["training"], info["metrics"]
    head = HeadConfig.from_dict(info["head"]) if info["head"] else None
    labelled = [shown(n or c) for c, n in zip(info["categories"], info["names"], strict=True)]
    first = ", ".join(labelled[:6]) + (f", … ({len(labelled) - 6} more)" if len(labelled) > 6 else "")
    rows = [
        ("checkpoint", info["path"] + ("  (built-in model)" if info["shipped"] else "")),
        ("file", f"{info['file_bytes']:,} bytes, sha256 {info['sha256']}"),
        (
            "format",
            f"{info['format']}, flowerid {info['flowerid_version'] or '?'}, created {info['created'] or '?'}",
        ),
        (
            "backbone",
            f"{b['name']}"
            + (f" ({b['arch']}, {b['input_size']} px)" if "arch" in b else "")
            + f", {b.get('num_features', '?')} features, weights sha256 {str(b.get('weights_digest', '?'))[:16]}…"
            + (
                f", local weights {b['weights_path']} (a tuned or user-given file, not the registry's)"
                if b.get("weights_path")
                else (f", from {b['weights_source']}" if "weights_source" in b else "")
            ),
        ),
        (
            "preprocessing",
            f"shorter side to {p['resize_size']} ({p['interpolation']}), centre crop {p['crop_size']}, "
            f"mean {list(p['mean'])}, std {list(p['std'])}",
        ),
    ]
    if head:
        shape = (
            f"{head.in_features} → {head.hidden_units} → {head.num_classes}"
            if head.hidden_units
            else f"linear {head.in_features} → {head.num_classes}"
        )
        rows.append(("head", shape + (f", dropout {head.dropout}" if head.dropout else "")))
    rows.append(("categories", f"{info['num_classes']}: {first}"))
    if t:
        settings = ", ".join(
            f"{k.replace('_', ' ')} {t[k]}"
            for k in (
                "preset",
                "epochs",
                "learning_rate",
                "batch_size",
                "hidden_units",
                "weight_decay",
                "label_smoothing",
                "seed",
                "views",
                "tune_stages",
                "world_size",
            )
            if t.get(k) is not None
        )
        rows.append(
            (
                "training",
                f"{t.get('train_images', '?')} train / {t.get('valid_images', '?')} valid images "
                f"from {t.get('data_dir', '?')} on {t.get('device', '?')}; {settings}",
            )
        )
        if t.get("split"):
            sp = t["split"]
            held = f"held out of {sp['held_out_of']}: {sp['valid_fraction']:.0%} of each category, seed {sp['seed']}"
            rows.append(("valid split", f"{held}, {sp['valid']} photos (list digest {sp['valid_digest'][:12]})"))
        if t.get("selection"):
            sel = t["selection"]
            rows.append(("chosen from", f"{len(sel)} settings by valid top-1: " + "; ".join(_selection(sel))))
    if m:
        rows.append(
            (
                "validation",
                f"top-1 {pct(m.get('valid_acc'))}, loss {m.get('valid_loss', float('nan')):.4f}, "
                f"kept epoch {m.get('best_epoch', '?')} of {m.get('epochs_run', len(m.get('history') or []) or '?')}"
                + (
                    "; probabilities unscaled (valid had no mistakes to fit a temperature on)"
                    if m.get("temperature_identified") is False
                    else f"; probabilities calibrated (temperature {m['temperature']:.3f} fitted on valid, "
                    f"loss {m['valid_loss_uncalibrated']:.4f} before)"
                    if isinstance(m.get("temperature"), float) and isinstance(m.get("valid_loss_uncalibrated"), float)
                    else ""
                ),
            )
        )
        if m.get("members"):
            rows.append(
                (
                    "members",
                    "each tuned with a head of its own, heads averaged; valid top-1 alone: "
                    + ", ".join(f"{x.get('backbone', '?')} {pct(x.get('valid_acc'))}" for x in m["members"]),
                )
            )
        if isinstance(m.get("teacher"), dict):
            tr, te = info.get("training", {}), m["teacher"]
            rows.append(
                (
                    "taught by",
                    f"{te.get('preset') or te.get('backbone', '?')} (sha256 {str(te.get('digest'))[:12]}…, valid top-1 "
                    f"{pct(te.get('valid_acc'))}"
                    + (f", its recipe {pct(te['cv_top1'])} by cross-validation" if te.get("cv_top1") else "")
                    + f"), its probabilities at temperature {tr.get('distill_temperature', '?')}, "
                    f"share {tr.get('distill_alpha', '?')}, on the photos and {tr.get('views', 0)} view(s) of each",
                )
            )
        if "test_acc" in m:
            rows.append(("test", f"top-1 {pct(m['test_acc'])}, loss {m.get('test_loss', float('nan')):.4f}"))
    u = info.get("unknown")
    rows.append(
        (
            "unknown photos",
            f"{u['method']}: unknown above {u['threshold']:.4g}, a threshold that accepts "
            f"{u['accept_rate']:.0%} of valid"
            + (f"; sharpened by {u['negative_prototypes']} negative prototypes" if u["negative_prototypes"] else "")
            if u
            else 'cannot tell: trained before flowerid could say "not one of my categories"; '
            "retrain to get it (every photo gets one of the categories)",
        )
    )
    rows += _additions_rows(info)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _selection(sel: list[dict[str, Any]]) -> list[str]:
    out = []
    for run in sel:
        settings = " ".join(f"{k}={v}" for k, v in run.get("settings", {}).items())
        out.append(f"{settings or 'defaults'} → {pct(run.get('valid_acc'))}")
    return out


def _additions_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """What `flowerid add` taught the model since training, one line per run, and whether it can."""
    out = []
    for a in info.get("additions", []):
        parts = [
            f"{len(v)} {k} ({sum(v.values())} photos: {', '.join(list(v)[:4])}{' …' if len(v) > 4 else ''})"
            for k, v in (("added", a.get("added") or {}), ("corrected", a.get("corrected") or {}))
            if v
        ]
        out.append(
            (
                "added",
                f"{a.get('when', '?')}: {'; '.join(parts) or 'nothing'} from {a.get('from', '?')}"
                f" ({a.get('method', '?')}" + (f", {a['skipped']} unreadable skipped)" if a.get("skipped") else ")"),
            )
        )
    if not info.get("can_add"):
        out.append(("add", "no per-category statistics: retrain to be able to `flowerid add` categories"))
    return out
