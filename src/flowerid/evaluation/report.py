"""report.html: one self-contained page (inline CSS, images as data URIs, no scripts or links out)."""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from .._text import pct

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;
color:#222;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
td,th{padding:.25rem .7rem;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}
.card{border:1px solid #ddd;border-radius:8px;padding:.6rem 1rem;min-width:10rem}
.card b{display:block;font-size:1.5rem}.card span{color:#666;font-size:.8rem}
img{max-width:100%;height:auto;border:1px solid #eee}.bad{color:#c0392b}.scroll{max-height:32rem;overflow:auto}
figure{margin:.8rem 0}figcaption{color:#666;font-size:.8rem}
"""


def _pct(x: float | None, digits: int = 1) -> str:
    return pct(x, digits, missing="–")


def _img(pngs: dict[str, bytes], name: str, alt: str) -> str:
    if name not in pngs:
        return ""
    blob = pngs[name]
    mime = "image/jpeg" if blob[:3] == b"\xff\xd8\xff" else "image/png"
    data = base64.b64encode(blob).decode("ascii")
    return f'<p><img src="data:{mime};base64,{data}" alt="{escape(alt)}"></p>'


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{escape(value)}</b><span>{escape(label)}</span></div>'


def _why(why: tuple[list[Any], str] | None) -> list[str]:
    """The mistakes' maps: what it said and what was right, side by side (evaluation/why.py)."""
    if why is None or (not why[0] and not why[1]):
        return []
    pictures, note = why
    parts = [
        "<h2>Mistakes: where it looked</h2>",
        "<p>Each photo twice: the map of the category it said (left) and of the right one (right), brighter where "
        "a cell pushed that category's score up (docs/explanations.md).</p>",
    ]
    if note:
        parts.append(f"<p>{escape(note)}</p>")
    for pic in pictures:
        data = base64.b64encode(pic.jpeg).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/jpeg;base64,{data}" alt="maps of {escape(pic.said)} and {escape(pic.true)}">'
            f"<figcaption>{escape(pic.path)}</figcaption></figure>"
        )
    return parts


def render_report(
    metrics: dict[str, Any],
    pngs: dict[str, bytes],
    checkpoint: dict[str, Any],
    skipped: dict[str, str],
    why: tuple[list[Any], str] | None = None,
) -> str:
    """The HTML page for an evaluation; `pngs` maps figure names to PNG (or JPEG, for photos) bytes; `why` the
    mistakes' maps and a note."""
    m = metrics
    cal = m["calibration"]
    lo1, hi1 = m["top1_ci"]
    lo5, hi5 = m["top5_ci"]
    ece = "–" if cal["ece"] is None else f"{cal['ece']:.3f}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>flowerid evaluation: {escape(str(m['folder']))}</title><style>{_CSS}</style></head><body>",
        "<h1>flowerid evaluation</h1>",
        f'<p class="sub">{escape(str(m["folder"]))} · checkpoint {escape(str(m["checkpoint"]))} · '
        f"{escape(str(m['created']))} · flowerid {escape(str(m['flowerid_version']))}</p>",
        '<div class="cards">',
        _card(_pct(m["top1"]), f"top-1 accuracy (95% CI {_pct(lo1)} to {_pct(hi1)})"),
        _card(_pct(m["top5"]), f"top-{m['k']} accuracy (95% CI {_pct(lo5)} to {_pct(hi5)})"),
        _card(_pct(m["mean_class_accuracy"]), "mean per-class accuracy"),
        _card(_pct(m["macro_f1"]), "macro F1"),
        _card(ece, "expected calibration error"),
        _card(
            f"{m['n']}",
            f"images, {m['classes_present']} categories" + (f", {m['skipped']} skipped" if m["skipped"] else ""),
        ),
        "</div>",
    ]
    if checkpoint:
        shown = {k: _pct(v) if "accuracy" in k and isinstance(v, float) else str(v) for k, v in checkpoint.items()}
        rows = "".join(
            f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in shown.items() if checkpoint[k] is not None
        )
        parts.append(f"<h2>Model</h2><table>{rows}</table>")
    if "curves" in pngs:
        parts += ["<h2>Training curves</h2>", _img(pngs, "curves", "loss and accuracy per epoch")]
    parts += ["<h2>Confusion matrix</h2>", _img(pngs, "confusion", "confusion matrix")]
    if m["most_confused"]:
        rows = "".join(
            f'<tr><td class="n">{c["count"]}</td><td>{escape(c["true_name"] or c["true"])}</td>'
            f'<td>{escape(c["predicted_name"] or c["predicted"])}</td><td class="n">{_pct(c["rate"], 0)}</td></tr>'
            for c in m["most_confused"]
        )
        parts.append(
            "<h2>Most confused pairs</h2><table><tr><th>images</th><th>true</th><th>predicted as</th>"
            f"<th>of the true class</th></tr>{rows}</table>"
        )
    parts += ["<h2>Per-class accuracy</h2>", _img(pngs, "per_class", "per-class accuracy, worst first")]
    ranked = sorted(m["per_class"], key=lambda p: (p["support"] == 0, p["f1"] if p["f1"] is not None else 2.0))
    rows = "".join(
        f"<tr><td>{escape(p['name'] or '')}</td><td>{escape(p['category'])}</td>"
        f'<td class="n">{_pct(p["precision"])}</td><td class="n">{_pct(p["recall"])}</td>'
        f'<td class="n">{_pct(p["f1"])}</td><td class="n">{p["support"]}</td><td class="n">{p["predicted"]}</td></tr>'
        for p in ranked
    )
    few = len(m["per_class"]) <= 10  # a small model's user reads every row: the table is open
    parts.append(
        f'<details{" open" * few}><summary>Per-class table (lowest F1 first)</summary><div class="scroll"><table>'
        "<tr><th>name</th><th>category</th><th>precision</th><th>recall</th><th>F1</th><th>support</th>"
        f"<th>predicted</th></tr>{rows}</table></div></details>"
    )
    b = m.get("binary")
    if b and b["auc"] is not None:
        name = escape(b["positive_name"] or b["positive"])
        at = b["at_half"]
        parts += [
            "<h2>ROC curve</h2>",
            f"<p>With {name} as the positive category: AUC {b['auc']:.4f} over {b['n_positive']} + "
            f"{b['n_negative']} photos. The model's own decision (the likelier category) finds {_pct(at['tpr'])} "
            f"of {name} and calls {_pct(at['fpr'])} of the others {name}.</p>",
            _img(pngs, "roc", "ROC curve"),
        ]
    parts += [
        "<h2>Calibration</h2>",
        f"<p>Expected calibration error {ece} over {cal['n_bins']} "
        f"equal-width bins of top-1 confidence; mean confidence {_pct(cal['mean_confidence'])} against top-1 "
        f"accuracy {_pct(m['top1'])}; negative log-likelihood {m['nll']:.3f}.</p>",
        _img(pngs, "reliability", "reliability diagram"),
        "<h2>Mistakes</h2>",
        _img(pngs, "mistakes", "misclassified photos"),
        *_why(why),
    ]
    if "unknown" in m:
        u = m["unknown"]
        parts += [
            "<h2>Photos of other things</h2>",
            f"<p>{u['n_unknown']} photos from {escape(str(u['folder']))} against these {u['n_known']}: "
            f"AUROC {u['auroc']:.4f}; at the threshold that keeps 95% of these photos, "
            f"{_pct(u['unknown_accepted_at_95'])} of the others pass as known. At the model's own threshold "
            f"({u['threshold']:.3f}) {_pct(u['unknown_accepted_at_threshold'])} of the others pass as known and "
            f"{_pct(u['known_rejected_at_threshold'])} of these photos are called unknown.</p>",
            _img(pngs, "unknown", "unknown-score histogram and ROC"),
        ]
    if skipped:
        rows = "".join(f"<tr><td>{escape(p)}</td><td>{escape(r)}</td></tr>" for p, r in skipped.items())
        parts.append(
            f'<h2 class="bad">Skipped: {len(skipped)} unreadable images</h2>'
            "<table><tr><th>path</th><th>reason</th></tr>"
            f"{rows}</table>"
        )
    parts.append("</body></html>\n")
    return "\n".join(p for p in parts if p)
