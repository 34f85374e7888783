"""review.html for `check --deep`: one self-contained page (inline CSS, thumbnails as data URIs, no scripts).

Each suspect label sits beside typical photos of its given and its suggested
category, each duplicate pair side by side, each outlier beside its category.
"""

from __future__ import annotations

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.images import load_image
from ..errors import ImageError

if TYPE_CHECKING:
    from ..data.deep_check import Findings, Photos

SHOWN = 150  # rows per kind on the page; issues.csv has them all
EXAMPLES = 3  # typical photos shown per category
SIDE = 140  # thumbnail size in pixels

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1300px;padding:0 1rem;
color:#222;line-height:1.4}h1{font-size:1.6rem;margin-bottom:.2rem}.sub{color:#666;margin-top:0}
h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
.row{display:flex;gap:1.2rem;align-items:flex-start;padding:.6rem 0;border-bottom:1px solid #eee;flex-wrap:wrap}
.group{display:flex;flex-direction:column;gap:.2rem}.group b{font-size:.8rem;color:#555}
.imgs{display:flex;gap:.3rem}figure{margin:0;font-size:.72rem;color:#555;max-width:140px;word-break:break-all}
img{display:block;border:1px solid #ddd;border-radius:3px}.suspect img{border:3px solid #c0392b}
.score{font-variant-numeric:tabular-nums;color:#c0392b}
"""


def _thumb(path: Path) -> str:
    """A small JPEG as a data URI, or '' for a photo that cannot be read now."""
    try:
        img = load_image(path, min_size=SIDE)
    except ImageError:
        return ""
    img.thumbnail((SIDE, SIDE))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(uris: dict[str, str], rel: str, caption: str = "") -> str:
    src = uris.get(rel, "")
    img = f'<img src="{src}" width="{SIDE}" alt="{escape(rel)}">' if src else "<i>unreadable</i>"
    return f"<figure>{img}<figcaption>{escape(caption or rel)}</figcaption></figure>"


def _label(cat: str, names: dict[str, str]) -> str:
    return f"{cat} ({names[cat]})" if cat in names else cat


def render_review(root: Path, photos: Photos, findings: Findings, names: dict[str, str]) -> str:
    """The page for one deep check; `names` maps category folders to names (may be empty)."""
    from ..data.deep_check import DUPLICATE, LABEL, OUTLIER

    shown = {kind: findings.of_kind(kind)[:SHOWN] for kind in (LABEL, DUPLICATE, OUTLIER)}
    suspects = {i.path for rows in shown.values() for i in rows}
    # typical photos of a category: the ones its out-of-fold heads were surest of
    index = {c: k for k, c in enumerate(photos.categories)}
    own = findings.probs[np.arange(len(photos.labels)), photos.labels]
    examples: dict[str, list[str]] = {}
    wanted = {i.given for rows in shown.values() for i in rows} | {i.suggested for i in shown[LABEL]}
    for cat in wanted - {""}:
        members = np.flatnonzero(photos.labels == index[cat])
        best = members[np.argsort(-own[members], kind="stable")]
        examples[cat] = [photos.paths[m] for m in best if photos.paths[m] not in suspects][:EXAMPLES]
    needed = sorted(suspects | {i.other for i in shown[DUPLICATE]} | {p for ps in examples.values() for p in ps})
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) + 1)) as pool:
        uris = dict(zip(needed, pool.map(lambda rel: _thumb(root / rel), needed), strict=True))

    def group(title: str, cat: str) -> str:
        figs = "".join(_figure(uris, p) for p in examples.get(cat, []))
        head = f"<b>{escape(title)}: {escape(_label(cat, names))}</b>"
        return f'<div class="group">{head}<div class="imgs">{figs}</div></div>'

    def suspect(issue, note: str) -> str:
        return (
            f'<div class="group suspect"><b>{escape(note)} <span class="score">{issue.score:.3f}</span></b>'
            f"{_figure(uris, issue.path)}</div>"
        )

    counts = {k: len(findings.of_kind(k)) for k in (LABEL, DUPLICATE, OUTLIER)}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>flowerid deep check: {escape(str(root))}</title><style>{_CSS}</style></head><body>",
        "<h1>flowerid deep check</h1>",
        f'<p class="sub">{escape(str(root))} · {len(photos.paths)} photos · '
        f"{counts[LABEL]} suspect labels, {counts[DUPLICATE]} duplicate pairs, {counts[OUTLIER]} outliers · "
        "every finding is in issues.csv; nothing was changed. To train without some of them: "
        "<code>flowerid train DATA --exclude issues.csv</code> (delete the rows to keep first).</p>",
    ]
    sections = (
        (LABEL, "Suspect labels", "the model would file these elsewhere; score = 1 - its probability of the label"),
        (
            DUPLICATE,
            "Near-duplicates",
            "copies of one photo; score = pixel similarity, +1 across splits, +1 if labels differ",
        ),
        (OUTLIER, "Photos that belong nowhere", "far from every other photo; score = robust z of the distance"),
    )
    for kind, title, how in sections:
        rows = shown[kind]
        more = f" (the first {len(rows)} of {counts[kind]})" if counts[kind] > len(rows) else ""
        parts.append(f"<h2>{title}{more}</h2><p class='sub'>{escape(how)}</p>")
        if not rows:
            parts.append("<p>none found</p>")
        for issue in rows:
            if kind == LABEL:
                body = suspect(issue, "suspect") + group("given", issue.given) + group("suggested", issue.suggested)
            elif kind == DUPLICATE:
                body = suspect(issue, "copy") + f'<div class="group"><b>of</b>{_figure(uris, issue.other)}</div>'
            else:
                body = suspect(issue, "outlier") + group("given", issue.given)
            parts.append(f'<div class="row">{body}</div>')
    parts.append("</body></html>\n")
    return "\n".join(parts)
