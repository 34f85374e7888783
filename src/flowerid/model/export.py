"""Exports an app can run without Python: one graph from photo tensor to answer, plus a manifest.

`export_checkpoint` builds the
backbone and head of a trained checkpoint into one graph, writes it as ONNX or
TorchScript (ONNX optionally int8) and beside it a JSON manifest that says how to
preprocess a photo and read the output, so an app needs nothing else.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .._io import atomic_write, atomic_write_json
from ..backbones.onnx import INPUT_NAME, contiguous, example_input, export_onnx, quiet_export
from ..data.images import is_image_file
from ..data.layout import not_a_folder
from ..data.preprocess import Preprocessing
from ..errors import DataError, ImageError, UsageError
from .checkpoint import load_checkpoint
from .network import build_network
from .unknown import GEN_GAMMA, GEN_TOP, UnknownDetector

MANIFEST_FORMAT = "flowerid-export"
MANIFEST_VERSION = 1
FORMATS = ("onnx", "torchscript")
OUTPUTS = ("probabilities", "logits")
QUANTIZATIONS = ("int8",)
SCALE = "0..1 then (x-mean)/std"
DEFAULT_CALIBRATION_SIZE = 128


UNKNOWN_OUTPUT = "unknown_score"


class UnknownScore(nn.Module):
    """unknown.UnknownDetector.score as torch operations, so the exported graph gives the same number."""

    def __init__(self, detector: UnknownDetector) -> None:
        super().__init__()
        self.register_buffer("means", torch.from_numpy(np.asarray(detector.means, dtype=np.float64)))
        self.register_buffer("negatives", torch.from_numpy(np.asarray(detector.negatives, dtype=np.float64)))
        offsets = np.zeros(len(detector.means)) if detector.offsets is None else detector.offsets
        self.register_buffer("offsets", torch.from_numpy(np.asarray(offsets, dtype=np.float64)))
        self.d = detector

    def forward(self, feats: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        # float64, as in numpy: 1 - p for a sure photo (p near 1) loses most of its digits in float32.
        d = self.d
        feats, logits = feats.double(), logits.double()
        p = torch.softmax(logits, dim=1)
        q = torch.topk(p, min(GEN_TOP, p.shape[1]), dim=1).values
        near = (q.pow(GEN_GAMMA) * (1.0 - q).pow(GEN_GAMMA)).sum(dim=1)
        unit = F.normalize(feats, dim=1, eps=1e-12)
        known = (unit @ self.means.T).max(dim=1).values
        far = 1.0 - known
        if self.negatives.shape[0]:
            far = far + torch.clamp((unit @ self.negatives.T).max(dim=1).values - known, min=0.0)
        z_near = (near - d.near_mean) / d.near_std
        z_far = (far - d.far_mean) / d.far_std
        return (z_near + torch.clamp(z_far - d.knee, min=0.0) - self.offsets[logits.argmax(dim=1)]).float()


class ExportModel(nn.Module):
    """Backbone, head and (optionally) softmax in one module: NCHW float32 in, (N, C) out.

    `hflip` averages the probabilities of the photo and its mirror image, for a
    checkpoint whose prediction uses that test-time augmentation. With `unknown`,
    a second output (N,) gives the unknown score of the photo as `predict` computes it
    (of the photo itself, not its mirror).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        output: str = "probabilities",
        hflip: bool = False,
        unknown: UnknownScore | None = None,
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise UsageError(f"output must be one of {', '.join(OUTPUTS)}, not {output!r}")
        if hflip and output != "probabilities":
            raise UsageError("flip averaging combines probabilities; export it with output 'probabilities'")
        self.backbone = backbone
        self.head = head
        self.output = output
        self.hflip = hflip
        self.unknown = unknown

    def _answer(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=1) if self.output == "probabilities" else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        logits = self.head(feats)
        out = self._answer(logits)
        if self.hflip:
            out = 0.5 * (out + self._answer(self.head(self.backbone(torch.flip(x, dims=[3])))))
        if self.unknown is None:
            return out
        return out, self.unknown(feats, logits)


def export_torchscript(module: nn.Module, path: str | os.PathLike, input_size: int | tuple[int, int]) -> Path:
    """Trace `module` to TorchScript (loadable with plain `torch.jit.load`); any batch size runs."""
    module = contiguous(module)
    buf = io.BytesIO()
    with quiet_export(), torch.no_grad():
        traced = torch.jit.trace(module, (example_input(input_size),), check_trace=False)
        traced = torch.jit.freeze(traced.eval())
        torch.jit.save(traced, buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()))


def quantize_onnx_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: Sequence[np.ndarray],
    *,
    input_name: str = INPUT_NAME,
    batch_size: int = 16,
    keep_float: int = 4,
) -> Path:
    """Static int8 quantization of the convolutions (QDQ, per-channel weights), calibrated on real photos.

    Activation ranges come from `calibration` (preprocessed CHW arrays): dynamic
    quantization cannot know them and lost far more accuracy. The first
    `keep_float` convolutions, which see the photo at full resolution, stay
    float: quantizing them cost about 6 points of valid top-1 on the flowers
    model, for under 1% of the weights. The head and softmax stay float too.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not len(calibration):
        raise UsageError("int8 quantization needs at least one calibration photo")
    batches = [
        {input_name: np.ascontiguousarray(np.stack(calibration[i : i + batch_size]), dtype=np.float32)}
        for i in range(0, len(calibration), batch_size)
    ]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    dst = Path(dst)
    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quantize.") as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "int8.onnx"
        root.setLevel(logging.ERROR)  # the quantizer logs a warning for every shape tensor it rightly skips
        try:
            quant_pre_process(str(src), str(pre))
            convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
            quantize_static(
                str(pre),
                str(out),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["Conv"],
                nodes_to_exclude=convs[:keep_float],
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        finally:
            root.setLevel(level)
        os.replace(out, dst)
    return dst


# ---------------------------------------------------------------- checkpoints


def build_export_model(
    checkpoint: dict[str, Any], output: str = "probabilities", hflip: bool = False
) -> tuple[ExportModel, Preprocessing]:
    """The checkpoint's network (`network.build_network`: backbone checked by digest) as one exportable module."""
    net = build_network(checkpoint)
    detector = UnknownDetector.of_checkpoint(checkpoint)
    unknown = UnknownScore(detector) if detector is not None else None
    model = ExportModel(net.backbone, net.head, output=output, hflip=hflip, unknown=unknown)
    return model.eval(), net.preprocessing


def build_manifest(
    checkpoint: dict[str, Any], model_file: str, prep: Preprocessing, output: str, input_name: str = INPUT_NAME
) -> dict[str, Any]:
    """Everything an app needs to feed the model and read its answer, and nothing else."""
    cats = [str(c) for c in checkpoint["categories"]]
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "model": model_file,
        "input": {
            "name": input_name,
            "shape": [1, 3, prep.crop_size, prep.crop_size],
            "layout": "NCHW",
            "dtype": "float32",
        },
        "preprocessing": {
            "resize_size": prep.resize_size,
            "crop_size": prep.crop_size,
            "interpolation": prep.interpolation,
            "mean": [float(m) for m in prep.mean],
            "std": [float(s) for s in prep.std],
            "scale": SCALE,
        },
        "output": output,
        "unknown": _unknown_manifest(checkpoint),
        "categories": cats,
        # An app shows a label for every class: the category stands in for a missing name, as `predict` does.
        "names": [n if n else c for c, n in zip(cats, checkpoint["names"], strict=True)],
    }


def _unknown_manifest(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """How an app reads the second output, or None for a model that cannot tell (one output only)."""
    det = UnknownDetector.of_checkpoint(checkpoint)
    if det is None:
        return None
    return {
        "output": UNKNOWN_OUTPUT,
        "threshold": det.threshold,
        "rule": f"the photo is none of the categories when {UNKNOWN_OUTPUT} > threshold",
        "method": det.method,
        "accept_rate": det.accept_rate,
    }


def manifest_path_for(model_path: str | os.PathLike) -> Path:
    """`flowers.onnx` -> `flowers.json`, beside the model."""
    return Path(model_path).with_suffix(".json")


def calibration_photos(source: str | os.PathLike, count: int = DEFAULT_CALIBRATION_SIZE, seed: int = 0) -> list[Path]:
    """Up to `count` photos drawn at random (fixed seed) from a folder, searched recursively.

    Given a data folder with a train/ split, only train photos are drawn, so
    calibration never sees the photos accuracy is measured on.
    """
    root = Path(source)
    if (root / "train").is_dir():
        root = root / "train"
    if not root.is_dir():
        raise not_a_folder(root, "calibration folder")
    photos = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".") and is_image_file(p))
    if not photos:
        raise DataError(f"{root} holds no photos to calibrate int8 quantization on")
    random.Random(seed).shuffle(photos)
    return photos[:count]


def _default_calibration(checkpoint: dict[str, Any]) -> Path:
    data_dir = checkpoint.get("training", {}).get("data_dir")
    if data_dir and (Path(data_dir) / "train").is_dir():
        return Path(data_dir)
    raise UsageError(
        "int8 quantization calibrates on real photos: pass --calibration with a folder of photos like the "
        "ones the model will see (the training data's train/ split is best)"
        + (f"; the checkpoint's training data {data_dir} is not on this machine" if data_dir else "")
    )


@dataclass
class ExportResult:
    model_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    calibration_images: int = 0


def export_checkpoint(
    checkpoint: str | os.PathLike | dict[str, Any],
    out: str | os.PathLike,
    fmt: str = "onnx",
    *,
    quantize: str | None = None,
    output: str = "probabilities",
    calibration: str | os.PathLike | None = None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    hflip: bool = False,
    keep_float: int = 4,
) -> ExportResult:
    """Write a checkpoint as one runnable model file plus its JSON manifest.

    `out` may be a folder (existing, or ending in a slash): the file is then named after the checkpoint. int8
    calibrates on photos from `calibration` (default: the checkpoint's training
    data, train split, when it is on this machine); the first `keep_float`
    convolutions stay float (see `quantize_onnx_int8`).
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UsageError(f"unknown quantization {quantize!r}; choose one of: {', '.join(QUANTIZATIONS)}")
    if quantize and fmt != "onnx":
        raise UsageError("--quantize int8 is made with ONNX Runtime's quantizer: use it with --format onnx")
    if calibration_size < 1:
        raise UsageError("--calibration-size must be at least 1")
    if isinstance(checkpoint, dict):
        ckpt, stem = checkpoint, "model"
    else:
        ckpt, stem = load_checkpoint(checkpoint), Path(checkpoint).stem
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    folder = str(out).endswith(("/", os.sep))  # "exports/" names a folder even before it exists
    out = Path(out)
    if out.is_dir() or folder:
        out = out / f"{stem}{'-int8' if quantize else ''}{suffix}"
    if out.suffix.lower() == ".json":
        raise UsageError(f"{out} would be overwritten by the manifest; give the model file a {suffix} name")
    photos: list[Path] = []
    if quantize:
        photos = calibration_photos(calibration or _default_calibration(ckpt), calibration_size)
    model, prep = build_export_model(ckpt, output=output, hflip=hflip)
    names = [output, UNKNOWN_OUTPUT] if model.unknown is not None else output
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        export_torchscript(model, out, prep.crop_size)
    elif not quantize:
        export_onnx(model, out, prep.crop_size, output_name=names)
    else:
        arrays = []
        for p in photos:
            with contextlib.suppress(ImageError):  # an unreadable photo just does not calibrate
                arrays.append(prep.load(p))
        if not arrays:
            raise DataError(f"none of the {len(photos)} calibration photos could be read")
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export.") as tmp:
            float_path = export_onnx(model, Path(tmp) / "float.onnx", prep.crop_size, output_name=names)
            quantize_onnx_int8(float_path, Path(tmp) / "int8.onnx", arrays, keep_float=keep_float)
            os.replace(Path(tmp) / "int8.onnx", out)
    manifest = build_manifest(ckpt, out.name, prep, output)
    manifest_path = atomic_write_json(manifest_path_for(out), manifest)
    return ExportResult(out, manifest_path, manifest, len(photos))
