"""The spatial graph: a checkpoint's backbone giving its feature map(s) beside its pooled features, and the
`Explainer` that turns them into explanations (model/explain.py) through the checkpoint's own head.

On a CPU it is an ONNX graph cached beside the backbone's own (exported once from the torch network of
model/network.py, then loaded in a tenth of a second), loaded only when something is explained: `predict`
without explanations never touches it. Elsewhere the torch network runs as it is.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .._numeric import one_blas_thread, softmax
from ..backbones.cache import CacheKey
from ..backbones.engines import OnnxEngine
from ..data.images import ImageSource, load_image, photo_size
from ..errors import ImageError, UsageError
from .explain import Box, Explanation, MapLayout, check_maps, explain_rows

if TYPE_CHECKING:
    from .predictor import Classifier, Prediction

Maps = tuple[list[np.ndarray], np.ndarray]  # the maps (one per ensemble member) and the pooled features


class _OnnxSpatial:
    def __init__(self, path: Path) -> None:
        self.inner = OnnxEngine(path)

    def __call__(self, batch: np.ndarray) -> Maps:
        outs = self.inner.session.run(None, {self.inner.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return list(outs[:-1]), outs[-1]


class _TorchSpatial:
    def __init__(self, net: Any, device: str) -> None:
        self.net = net.to(device)
        self.device = device

    def __call__(self, batch: np.ndarray) -> Maps:
        import torch

        with torch.inference_mode():
            maps, pooled = self.net.feature_maps(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return [m.float().cpu().numpy() for m in maps], pooled.float().cpu().numpy()


def _export(checkpoint: dict[str, Any], path: Path, size: int, count: int) -> Path:
    """Build the checkpoint's network (torch) and write its maps and pooled features as one ONNX graph."""
    import torch.nn as nn

    from ..backbones.onnx import export_onnx
    from .network import build_network

    net = build_network(checkpoint)

    class Spatial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> tuple[Any, ...]:
            maps, pooled = self.net.feature_maps(x)
            return (*maps, pooled)

    names = [f"map{i}" for i in range(count)] + ["features"]
    return export_onnx(Spatial(), path, size, output_name=names)


def load_spatial(clf: Classifier) -> Any:
    """The classifier's spatial engine: batch -> (maps, pooled)."""
    spec, size = clf.spec, clf.preprocessing.crop_size
    if clf.backbone.engine.name != "onnx":
        from .network import build_network

        return _TorchSpatial(build_network(clf.checkpoint), clf.device)
    path = CacheKey.of(spec, clf.backbone.digest).spatial_graph_path()
    if path.is_file():
        try:
            return _OnnxSpatial(path)
        except Exception:  # a damaged cached graph is rebuilt, not trusted
            path.unlink(missing_ok=True)
    return _OnnxSpatial(_export(clf.checkpoint, path, size, len(spec.members) or 1))


@dataclass(frozen=True)
class Explained:
    """A photo's predictions (as `predict` gives them) and the explanations of the categories asked for."""

    predictions: list[Prediction]
    explanations: list[Explanation]


class Explainer:
    """Explanations of a classifier's answers, from its spatial graph (loaded on first use) and its head."""

    def __init__(self, clf: Classifier) -> None:
        self.clf = clf
        self.layout = MapLayout.of_spec(clf.spec)
        self._engine: Any = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> Any:
        with self._lock:  # a server's first requests must not export the graph twice at once
            if self._engine is None:
                self._engine = load_spatial(self.clf)
        return self._engine

    def prepare(self, image: ImageSource) -> tuple[np.ndarray, Box]:
        """The model's input for a photo and the box of the photo (its own pixels) that input shows."""
        return self.of_image(load_image(image, min_size=self.clf.preprocessing.resize_size))

    def of_image(self, img: Image.Image) -> tuple[np.ndarray, Box]:
        """`prepare` for a photo `load_image` has read (the server reads with its own pixel limit)."""
        prep = self.clf.preprocessing
        return prep(img), prep.crop_box(img.size, photo_size(img))  # type: ignore[return-value]

    def run(self, batch: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray] | None, np.ndarray]:
        """(maps, the mirrored photos' maps when the network averages with them, pooled features); the maps are
        checked to stand for the pooled features."""
        maps, pooled = self.engine(batch)
        mirrored = self.engine(np.ascontiguousarray(batch[..., ::-1]))[0] if self.layout.flip else None
        check_maps(self.layout, maps, pooled, mirrored, self.clf.spec.name)
        return maps, mirrored, pooled

    def category_index(self, category: str | int) -> int:
        cats = self.clf.categories
        if isinstance(category, int) and not isinstance(category, bool) and 0 <= category < len(cats):
            return category
        if str(category) in cats:
            return cats.index(str(category))
        if category in self.clf.names:
            return self.clf.names.index(category)  # type: ignore[arg-type]
        raise UsageError(f"{category!r} is not one of this model's {len(cats)} categories (e.g. {cats[0]!r})")

    def explain_arrays(
        self,
        arrays: Sequence[np.ndarray],
        boxes: Sequence[Box],
        top_k: int,
        k: int,
        categories: Sequence[Sequence[int]] | None = None,
    ) -> list[Explained]:
        """Predictions and explanations of preprocessed photos: of each photo's top `k` categories, or of the
        category indices `categories` gives for each photo."""
        clf = self.clf
        maps, mirrored, pooled = self.run(np.stack(arrays))
        logits = clf.head(pooled)
        probs = softmax(logits)
        scores = clf.unknown.score(pooled, logits) if clf.unknown is not None else None
        wanted = categories or [list(np.argsort(-p, kind="stable")[:k]) for p in probs]
        rows = explain_rows(self.layout, clf.head.layers, maps, pooled, wanted, mirrored)
        out = []
        for i, (items, cats) in enumerate(zip(rows, wanted, strict=True)):
            preds = clf.top_k(probs[i], top_k, None if scores is None else scores[i])
            exps = [
                Explanation(clf.categories[c], grid, boxes[i], logit, bias, exact, clf.names[c], float(probs[i][c]))
                for c, (grid, logit, bias, exact) in zip(cats, items, strict=True)
            ]
            out.append(Explained(preds, exps))
        return out

    def explain_photos(
        self, images: Sequence[ImageSource], top_k: int = 5, k: int = 1, batch_size: int = 8
    ) -> list[Explained | ImageError]:
        """Each photo's predictions and the explanations of its top `k` categories; an unreadable photo gives
        its ImageError, as `predict_many` does."""
        if top_k < 1 or k < 1:
            raise UsageError("top_k and the number of categories explained must each be at least 1")
        out: list[Explained | ImageError] = []
        with one_blas_thread():  # as predict_many: BLAS threads left spinning would take the engine's cores
            for start in range(0, len(images), batch_size):
                out.extend(self._explain_chunk(images[start : start + batch_size], top_k, k))
        return out

    def _explain_chunk(self, images: Sequence[ImageSource], top_k: int, k: int) -> list[Explained | ImageError]:
        """One batch: its readable photos through the graph at once, an unreadable one's ImageError in its place."""
        ready: list[tuple[int, np.ndarray, Box]] = []
        chunk: list[Explained | ImageError] = []
        for j, image in enumerate(images):
            try:
                ready.append((j, *self.prepare(image)))
                chunk.append(ImageError("", ""))
            except ImageError as exc:
                chunk.append(exc)
        if ready:
            done = self.explain_arrays([a for _, a, _ in ready], [b for *_, b in ready], top_k, k)
            for (j, _, _), res in zip(ready, done, strict=True):
                chunk[j] = res
        return chunk

    def explain(self, image: ImageSource, category: str | int | None = None) -> Explanation:
        """The map of `category` (an id, a name or an index; None: the photo's top category) in one photo."""
        array, box = self.prepare(image)
        wanted = None if category is None else [[self.category_index(category)]]
        return self.explain_arrays([array], [box], 1, 1, wanted)[0].explanations[0]
