"""The report's mistakes, explained: for each of the most confident mistakes, the map of the category it said
beside the map of the right one, drawn by model/overlay.py (Pillow) as small JPEGs for report.html."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ImageError, UsageError

if TYPE_CHECKING:
    from ..model.predictor import Classifier

SIDE = 240  # each panel's longer side, pixels


@dataclass(frozen=True)
class MistakePicture:
    path: str
    said: str
    true: str
    jpeg: bytes
    exact: bool


def _name(clf: Classifier, category: str) -> str:
    return clf.names[clf.categories.index(category)] or category


def mistake_pictures(clf: Classifier, metrics: dict[str, Any], limit: int = 12) -> tuple[list[MistakePicture], str]:
    """Pictures of the `limit` most confident mistakes (the mistakes figure's order) and a note: why there are
    none, or an empty string."""
    from ..data.images import load_image
    from ..model.overlay import picture

    wrong = sorted((r for r in metrics["predictions"] if r["predicted"] != r["true"]), key=lambda r: -r["probability"])
    out: list[MistakePicture] = []
    for rec in wrong[:limit]:
        try:
            photo = load_image(rec["path"], min_size=clf.preprocessing.resize_size)
            array, box = clf.explainer.of_image(photo)
            cats = [clf.categories.index(rec["predicted"]), clf.categories.index(rec["true"])]
            exps = clf.explainer.explain_arrays([array], [box], 1, 2, [cats])[0].explanations
        except ImageError:
            continue  # unreadable now: the mistakes figure says so already
        except UsageError as exc:  # a network whose answers cannot be split by place
            return out, str(exc)
        said, true = exps
        captions = [f"said: {_name(clf, said.category)} {said.probability:.0%}",
                    f"true: {_name(clf, true.category)} {true.probability:.0%}"]  # fmt: skip
        buf = io.BytesIO()
        picture(photo, exps, SIDE, captions).save(buf, format="JPEG", quality=82)
        out.append(MistakePicture(rec["path"], said.category, true.category, buf.getvalue(), said.exact))
    return out, "" if wrong else "no mistakes to explain"
