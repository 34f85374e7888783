"""How `predict` prints its answers (the table and the JSON), for the plain and the explained command alike."""

from __future__ import annotations

import json
import math
from typing import Any

from .._text import shown


def format_predictions(image: str, preds: list[dict], known: bool | None = None, num_classes: int = 0) -> str:
    """A photo's top-K as a table; a photo unlike anything trained on says so first, plainly."""
    labels = [shown(p["name"] or p["category"]) for p in preds]  # names come from whoever made the data
    width = max(len(label) for label in labels)
    lines = [shown(image)]
    if known is False:
        closest = labels[0]
        known_ones = "the one category" if num_classes == 1 else f"one of the {num_classes} categories"
        lines.append(f"  not {known_ones} I know (closest: {closest})")
    for rank, (p, label) in enumerate(zip(preds, labels, strict=True), 1):
        bar = "█" * int(round(p["probability"] * 20))
        lines.append(
            f"  {rank}. {label:<{width}}  {p['probability']:7.2%}  {bar}"
            + (f"  [{shown(p['category'])}]" if p["name"] else "")
        )
    return "\n".join(lines)


def print_json(records: Any) -> None:
    """Valid JSON whatever a stranger's checkpoint holds: NaN and infinities (which JSON has not) as null."""
    records = _finite(records)
    text = json.dumps(records, indent=2, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8: \u escapes keep the JSON valid
        text = json.dumps(records, indent=2, allow_nan=False)
    print(text)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
