"""How `predict` prints its answers (the table and the JSON), for the plain and the explained command alike."""

from __future__ import annotations

import json


def format_predictions(image: str, preds: list[dict], known: bool | None = None, num_classes: int = 0) -> str:
    """A photo's top-K as a table; a photo unlike anything trained on says so first, plainly."""
    width = max(len(p["name"] or p["category"]) for p in preds)
    lines = [image]
    if known is False:
        closest = preds[0]["name"] or preds[0]["category"]
        known_ones = "the one category" if num_classes == 1 else f"one of the {num_classes} categories"
        lines.append(f"  not {known_ones} I know (closest: {closest})")
    for rank, p in enumerate(preds, 1):
        label = p["name"] or p["category"]
        bar = "█" * int(round(p["probability"] * 20))
        lines.append(
            f"  {rank}. {label:<{width}}  {p['probability']:7.2%}  {bar}"
            + (f"  [{p['category']}]" if p["name"] else "")
        )
    return "\n".join(lines)


def print_json(records: list[dict]) -> None:
    text = json.dumps(records, indent=2, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8: \u escapes keep the JSON valid
        text = json.dumps(records, indent=2)
    print(text)
