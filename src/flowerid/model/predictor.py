"""Prediction: load a checkpoint once, then name the flowers in photos."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._numeric import one_blas_thread, softmax
from ..data.folders import load_category_names
from ..data.images import ImageSource, load_image
from ..data.preprocess import Preprocessing
from ..errors import CheckpointError, ImageError, UsageError
from .checkpoint import backbone_spec, check_weights, load_checkpoint
from .head import HeadConfig, linear_layers
from .unknown import UnknownDetector

if TYPE_CHECKING:
    from ..backbones.engines import Engine
    from .explain import Explanation
    from .spatial import Explainer


@dataclass(frozen=True)
class Prediction:
    """One of a photo's top-K categories.

    `known` and `unknown_score` describe the photo, so every prediction of one photo
    carries the same two: whether it looks like anything the model was trained on,
    and how unlike it is (higher: less like; `known` is `unknown_score <= threshold`).
    Both are None for a model trained before flowerid could tell.
    """

    category: str
    name: str | None
    probability: float
    known: bool | None = None
    unknown_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The category, name and probability; the photo-level fields go beside the list (`photo_fields`)."""
        return {"category": self.category, "name": self.name, "probability": self.probability}


def photo_fields(preds: Sequence[Prediction]) -> dict[str, Any]:
    """`known` and `unknown_score` of the photo these predictions are for, as JSON puts them."""
    return {"known": preds[0].known, "unknown_score": preds[0].unknown_score}


@dataclass
class BatchProbabilities:
    """Class probabilities for many photos; rows of unreadable photos are NaN and listed in `errors`."""

    probs: np.ndarray  # (N, C) float64
    errors: dict[int, ImageError] = field(default_factory=dict)
    unknown_scores: np.ndarray | None = None  # (N,) float64, NaN where unreadable; None: the model cannot tell

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.probs[:, 0]) if len(self.probs) else np.zeros(0, dtype=bool)


class NumpyHead:
    """The trained head applied with numpy: a head is a matrix or two, torch is not needed."""

    def __init__(self, cfg: HeadConfig, state: dict[str, Any]) -> None:
        linears = linear_layers(state)
        try:
            self.layers = [
                (
                    np.asarray(state[f"{m}.weight"], dtype=np.float32).T.copy(),
                    np.asarray(state[f"{m}.bias"], dtype=np.float32),
                )
                for m in linears
            ]
        except KeyError as exc:
            raise CheckpointError(f"head weights lack {exc}") from None
        expected = 2 if cfg.hidden_units > 0 else 1
        if (
            len(self.layers) != expected
            or self.layers[0][0].shape[0] != cfg.in_features
            or self.layers[-1][0].shape[1] != cfg.num_classes
        ):
            raise CheckpointError("head weights do not match the head's recorded shape")

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        x = feats
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return x


class Classifier:
    """A trained flowerid model. Use `Classifier.load(path)`, then `predict(image)`."""

    def __init__(
        self,
        checkpoint: dict[str, Any],
        device: str = "auto",
        category_names: dict[str, str] | None = None,
        engine: str = "auto",
    ) -> None:
        from ..backbones.engines import load_backbone, resolve_device

        self.checkpoint = checkpoint
        self.categories: list[str] = list(checkpoint["categories"])
        names = list(checkpoint["names"])
        if category_names:
            names = [category_names.get(c, n) for c, n in zip(self.categories, names, strict=True)]
        self.names: list[str | None] = names
        self.preprocessing = Preprocessing.from_dict(checkpoint["preprocessing"])
        self.spec = backbone_spec(checkpoint)
        self.device = resolve_device(device)
        self.backbone = load_backbone(self.spec, self.device, checkpoint["backbone"].get("weights_path"), engine)
        check_weights(checkpoint, self.backbone.digest)
        head = checkpoint["head"]
        head_cfg = HeadConfig.from_dict(head["config"])
        self.head = NumpyHead(head_cfg, head["state_dict"])
        # None: a checkpoint from before flowerid could tell photos of other things; it names every photo.
        self.unknown = UnknownDetector.of_checkpoint(checkpoint)
        self._explainer: Explainer | None = None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        category_names: str | os.PathLike | None = None,
        engine: str = "auto",
    ) -> Classifier:
        mapping = load_category_names(category_names) if category_names else None
        return cls(load_checkpoint(path), device, mapping, engine)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def preprocess(self, image: ImageSource) -> np.ndarray:
        return self.preprocessing(load_image(image, min_size=self.preprocessing.resize_size))

    def forward(self, batch: np.ndarray, engine: Engine | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities (N, C) and unknown scores (N,) (None when the model cannot tell) for a batch.

        `engine` replaces the backbone's own (one of its `for_streams` engines, for batch work).
        """
        feats = (engine or self.backbone.engine)(np.ascontiguousarray(batch, dtype=np.float32))
        if not np.isfinite(feats).all():  # the head's own weights are checked when they load; these are the backbone's
            raise CheckpointError(
                f"the backbone {self.spec.name} gives NaN or infinite features: its weights file is damaged"
            )
        logits = self.head(feats)
        scores = self.unknown.score(feats, logits) if self.unknown is not None else None
        return softmax(logits), scores

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) for a preprocessed NCHW batch."""
        return self.forward(batch)[0]

    def top_k(self, probs: np.ndarray, k: int, unknown_score: float | None = None) -> list[Prediction]:
        k = min(k, len(probs))
        order = np.argsort(-probs, kind="stable")[:k]
        known = None
        if unknown_score is not None and self.unknown is not None:
            unknown_score = float(unknown_score)
            known = bool(self.unknown.known(unknown_score))
        return [Prediction(self.categories[i], self.names[i], float(probs[i]), known, unknown_score) for i in order]

    def predict(self, image: ImageSource, top_k: int = 5) -> list[Prediction]:
        """Top-K predictions for one photo (a path, bytes, an open binary file, a PIL image or a numpy array);
        each says whether the photo is `known`."""
        _check_top_k(top_k)
        probs, scores = self.forward(self.preprocess(image)[None])
        return self.top_k(probs[0], top_k, None if scores is None else scores[0])

    @property
    def explainer(self) -> Explainer:
        """Explanations of this model's answers (model/spatial.py); its graph loads on first use only."""
        if self._explainer is None:
            from .spatial import Explainer

            self._explainer = Explainer(self)
        return self._explainer

    def explain(self, image: ImageSource, category: str | int | None = None) -> Explanation:
        """Why the photo is (or would be) named `category` (None: its top category): the category's logit per
        cell of the photo (`grid`, numpy), the part of the photo the grid covers (`box`), the logit and bias
        (grid.mean() + bias == logit) and whether that split is exact (a linear head) or Grad-CAM's."""
        return self.explainer.explain(image, category)

    def forward_photos(
        self, images: Sequence[ImageSource], engine: Engine | None = None
    ) -> tuple[list[int], np.ndarray, np.ndarray | None, dict[int, ImageError]]:
        """Decode `images` and name the readable ones in one engine call.

        Returns their indices, their probabilities and unknown scores (as `forward`), and
        the ImageError of each photo that could not be read, by index.
        """
        rows: list[int] = []
        arrays: list[np.ndarray] = []
        errors: dict[int, ImageError] = {}
        for i, image in enumerate(images):
            try:
                arrays.append(self.preprocess(image))
                rows.append(i)
            except ImageError as exc:
                errors[i] = exc
        if not arrays:
            return rows, np.zeros((0, self.num_classes)), None, errors
        probs, scores = self.forward(np.stack(arrays), engine)
        return rows, probs, scores, errors

    def _forward_many(
        self, images: Sequence[ImageSource], batch_size: int, failed: Callable[[int, ImageError], None]
    ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray | None]]:
        """(indices, probabilities, unknown scores) a batch at a time; an unreadable photo goes to `failed`."""
        step = max(1, batch_size)
        with one_blas_thread():
            for start in range(0, len(images), step):
                rows, probs, scores, errors = self.forward_photos(images[start : start + step])
                for i, exc in errors.items():
                    failed(start + i, exc)
                if rows:
                    yield [start + i for i in rows], probs, scores

    def predict_many(
        self, images: Sequence[ImageSource], top_k: int = 5, batch_size: int = 32
    ) -> list[list[Prediction] | ImageError]:
        """Predict a list of photos in batches; an unreadable one yields its ImageError."""
        _check_top_k(top_k)
        out: list[list[Prediction] | ImageError] = [ImageError("", "")] * len(images)

        def failed(i: int, exc: ImageError) -> None:
            out[i] = exc

        for rows, probs, scores in self._forward_many(images, batch_size, failed):
            for j, i in enumerate(rows):
                out[i] = self.top_k(probs[j], top_k, None if scores is None else scores[j])
        return out

    def predict_proba_many(
        self,
        images: Sequence[ImageSource],
        batch_size: int = 32,
        progress: Callable[[int], None] | None = None,
    ) -> BatchProbabilities:
        """Full probability rows for many photos, through the same path as `predict`.

        Evaluation uses this so its numbers match `predict`; an unreadable photo
        is recorded, not raised. `progress(n)` is called after each batch.
        """
        if batch_size < 1:
            raise UsageError("batch_size must be at least 1")
        result = BatchProbabilities(np.full((len(images), self.num_classes), np.nan))
        if self.unknown is not None:
            result.unknown_scores = np.full(len(images), np.nan)

        def failed(i: int, exc: ImageError) -> None:
            result.errors[i] = exc
            if progress:
                progress(1)

        for rows, probs, scores in self._forward_many(images, batch_size, failed):
            result.probs[rows] = probs
            if result.unknown_scores is not None and scores is not None:
                result.unknown_scores[rows] = scores
            if progress:
                progress(len(rows))
        return result


def load(
    path: str | os.PathLike | None = None,
    device: str = "auto",
    category_names: str | os.PathLike | None = None,
    engine: str = "auto",
) -> Classifier:
    """Load a trained classifier from a checkpoint file; with no path, the built-in 102-flower model."""
    if path is None:
        from .builtin import shipped_model_path

        path = shipped_model_path()
    return Classifier.load(Path(path), device, category_names, engine)


def _check_top_k(top_k: object) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer):
        raise UsageError(f"top_k must be a whole number, got {top_k!r}")
    if top_k < 1:
        raise UsageError("top_k must be at least 1")
