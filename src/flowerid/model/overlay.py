"""An explanation drawn over its photo: the map in colour where the model looked, the answer in a corner and a
colour scale beside it. Pillow and numpy only (matplotlib takes a second to import), so `predict --explain`
stays quick; `evaluate`'s report and the docs' pictures are drawn the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.images import photo_size
from .explain import Explanation

# Inferno's anchors (dark purple, red, orange, pale yellow): cold cells dim the photo, hot ones light it up.
_ANCHORS = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
     [252, 255, 164]], dtype=np.float64,
)  # fmt: skip
LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, i]) for i in range(3)], axis=1
).astype(np.uint8)
SCALE_W = 46  # the colour scale's strip, pixels
MAX_SIDE = 448


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # a Pillow without FreeType
        return ImageFont.load_default()


def _heat(exp: Explanation, size: tuple[int, int]) -> tuple[np.ndarray, float, float]:
    """The grid scaled to 0..1 (its lowest to its highest cell) and resized smoothly to `size`; and that range."""
    grid = np.asarray(exp.grid, dtype=np.float64)
    lo, hi = float(grid.min()), float(grid.max())
    unit = (grid - lo) / (hi - lo) if hi > lo else np.zeros_like(grid)
    small = Image.fromarray(unit.astype(np.float32))
    return np.clip(np.asarray(small.resize(size, Image.Resampling.BILINEAR)), 0.0, 1.0), lo, hi


def _label(exp: Explanation) -> str:
    name = exp.name or exp.category
    prob = "" if exp.probability is None else " <1%" if exp.probability < 0.005 else f" {exp.probability:.0%}"
    return f"{name}{prob}" + ("" if exp.exact else " (Grad-CAM)")


def panel(photo: Image.Image, exp: Explanation, max_side: int = MAX_SIDE, caption: str | None = None) -> Image.Image:
    """One photo (RGB, as `load_image` gives it) with one explanation over it, a caption and a colour scale."""
    full_w, full_h = photo_size(photo)
    scale = max_side / max(full_w, full_h)
    w, h = max(1, round(full_w * scale)), max(1, round(full_h * scale))
    base = np.asarray(photo.convert("RGB").resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64)
    x0, y0, x1, y1 = (round(v * scale) for v in exp.box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, max(x1, x0 + 1)), min(h, max(y1, y0 + 1))
    out = base * 0.45 + 255 * 0.25  # outside the box: what the model did not see, veiled
    heat, lo, hi = _heat(exp, (x1 - x0, y1 - y0))
    alpha = (0.25 + 0.5 * heat)[..., None]
    colour = LUT[np.round(heat * 255).astype(np.intp)].astype(np.float64)
    out[y0:y1, x0:x1] = base[y0:y1, x0:x1] * (1 - alpha) + colour * alpha
    img = Image.new("RGB", (w + SCALE_W, h), (255, 255, 255))
    img.paste(Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(img)
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 255, 255))
    _corner(draw, caption or _label(exp), max(11, w // 28))
    _scale(img, draw, w, h, lo, hi)
    return img


def _corner(draw: ImageDraw.ImageDraw, text: str, size: int) -> None:
    font = _font(size)
    left, top, right, bottom = draw.textbbox((6, 5), text, font=font)
    draw.rectangle((left - 4, top - 3, right + 4, bottom + 3), fill=(0, 0, 0))
    draw.text((6, 5), text, fill=(255, 255, 255), font=font)


def _scale(img: Image.Image, draw: ImageDraw.ImageDraw, w: int, h: int, lo: float, hi: float) -> None:
    """The colour bar at the right, its ends labelled with the lowest and highest cell's logit contribution."""
    font = _font(10)
    top, bottom = 16, max(17, h - 16)
    ramp = LUT[np.linspace(255, 0, bottom - top).astype(np.intp)]
    bar = np.repeat(ramp[:, None, :], 12, axis=1)
    img.paste(Image.fromarray(bar), (w + 6, top))
    draw.text((w + 2, 2), f"{hi:+.2f}", fill=(0, 0, 0), font=font)
    draw.text((w + 2, bottom + 2), f"{lo:+.2f}", fill=(0, 0, 0), font=font)
    draw.text((w + 21, (top + bottom) // 2 - 10), "logit\nper\ncell", fill=(90, 90, 90), font=font)


def picture(photo: Image.Image, exps: Sequence[Explanation], max_side: int = MAX_SIDE,
            captions: Sequence[str] | None = None) -> Image.Image:  # fmt: skip
    """Panels of the same photo side by side, one per explanation (`predict --explain-k N`, the mistakes gallery)."""
    panels = [panel(photo, e, max_side, captions[i] if captions else None) for i, e in enumerate(exps)]
    out = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), max(p.height for p in panels)),
                    (255, 255, 255))  # fmt: skip
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + 8
    return out
