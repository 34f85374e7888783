"""Self-describing checkpoints: plain data that loads with `weights_only=True`.

A checkpoint holds the format version, package version, backbone name and
weights digest, ordered categories and names, head shape and state,
preprocessing, training settings and metrics. The frozen backbone's weights
are not copied in: they are rebuilt from the registry and checked by digest.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import sys
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import atomic_write
from .._text import first_line
from .._version import __version__
from ..errors import CheckpointError
from . import _torchfile

if TYPE_CHECKING:
    from ..backbones.spec import BackboneSpec

FORMAT = "flowerid-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "backbone", "preprocessing", "categories", "names", "head")

# Explicit, tested steps from each older version to the next: {from_version: step}.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def build_checkpoint(
    *,
    backbone: dict[str, Any],
    preprocessing: dict[str, Any],
    categories: list[str],
    names: list[str | None],
    head_config: dict[str, Any],
    head_state: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, Any],
    unknown: dict[str, Any] | None = None,
    class_stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A checkpoint dict in the layout `validate` checks (format fields are added by `save_checkpoint`).

    `backbone`: name, weights_digest, weights_path (None, or relative to the checkpoint's
    folder for a tuned backbone saved beside it) and num_features. `unknown`: the
    unknown-photo detector's state (model/unknown.py); a checkpoint without it names every photo.
    `class_stats`: per-category feature statistics (model/class_stats.py) that `flowerid add` needs.
    """
    return {
        "flowerid_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "backbone": backbone,
        "preprocessing": preprocessing,
        "categories": list(categories),
        "names": names,
        "class_to_idx": {c: i for i, c in enumerate(categories)},
        "head": {"config": head_config, "state_dict": head_state},
        "unknown": unknown,
        "class_stats": class_stats,
        "training": training,
        "metrics": metrics,
    }


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically: a crash leaves the old file or the new one, never half of one.

    Arrays become tensors, so a checkpoint read by the torch-free reader (numpy arrays) saves
    back into a file that `weights_only` loading accepts.
    """
    import numpy as np
    import torch

    def tensors(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.array(value))  # a writable copy
        if isinstance(value, dict):
            return {k: tensors(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(tensors(v) for v in value)
        return value

    ckpt = tensors({**ckpt, "format": FORMAT, "format_version": FORMAT_VERSION})
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()))


def _read(path: Path) -> Any:
    """torch.load(weights_only=True) when torch is already loaded; else the torch-free reader.

    Both refuse any global beyond tensors and plain data. The torch-free one keeps
    `predict` from paying two seconds to import torch; its tensors are numpy arrays.
    """
    if "torch" in sys.modules:
        import torch

        _torchfile.check_archive(str(path))  # torch would unpack a compression bomb too

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about odd pickle protocols: noise for users
            return torch.load(path, map_location="cpu", weights_only=True)
    return _torchfile.load(str(path))


_MAGIC = {  # what people give by mistake where a checkpoint goes, by its first bytes
    b"\xff\xd8\xff": "a JPEG image",
    b"\x89PNG": "a PNG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF",
}


def _not_a_checkpoint(path: Path) -> str | None:
    """What the file plainly is when it cannot be a checkpoint (a zip or a pickle), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None  # the reader says what is wrong
    if not head:
        return "an empty file"
    if head.startswith(b"PK") or head[0] == 0x80:  # torch's zip format, or a legacy pickle
        return None
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    if head[4:8] == b"ftyp" or head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "a HEIC or WebP photo, or a video"
    if len(head) > 2 and head[0] == 0x08 and head[2] == 0x12:  # protobuf: ir_version, then producer_name
        return "an ONNX model, as `flowerid export` writes"
    return None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a checkpoint without ever unpickling code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    if path.is_dir():
        hint = path / "checkpoint.pth"
        raise CheckpointError(f"{path} is a folder" + (f"; did you mean {hint}?" if hint.exists() else ""))
    kind = _not_a_checkpoint(path)
    if kind:
        raise CheckpointError(
            f"{path} is not a checkpoint ({kind}); "
            "give the checkpoint.pth that `flowerid train` or `flowerid add` wrote"
        )
    try:
        ckpt = _read(path)
    except pickle.UnpicklingError as exc:
        if isinstance(exc, _torchfile.UnsafeCheckpoint) or "weights_only" in str(exc) or "Weights only" in str(exc):
            raise CheckpointError(
                f"{path} needs full pickle to load, which can run arbitrary code; flowerid only "
                "loads plain-data checkpoints. Re-save it with flowerid, or do not trust it"
            ) from None
        raise CheckpointError(f"{path} is damaged or not a checkpoint ({first_line(exc)})") from None
    except Exception as exc:  # the unpickler and zip reader raise many kinds on damaged bytes
        raise CheckpointError(f"{path} is damaged or not a checkpoint ({first_line(exc)})") from None
    ckpt = validate(ckpt, str(path))
    weights = ckpt["backbone"].get("weights_path")
    if weights and not os.path.isabs(weights):
        # A tuned backbone lives beside its checkpoint (backbone.pth): the pair moves together.
        ckpt["backbone"]["weights_path"] = str(path.resolve().parent / weights)
    return ckpt


def validate(ckpt: Any, where: str = "checkpoint") -> dict[str, Any]:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{where} is not a flowerid checkpoint (a raw state dict or another tool's file?); "
            "train one with `flowerid train`"
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{where} has no format version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} is format version {version}, newer than this flowerid reads ({FORMAT_VERSION}); upgrade flowerid"
        )
    ckpt = migrate(ckpt, version, where)
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{where} lacks {', '.join(missing)}")
    cats, names, head = ckpt["categories"], ckpt["names"], ckpt["head"]
    if not isinstance(cats, list) or not cats or not all(isinstance(c, str) for c in cats):
        raise CheckpointError(f"{where} has no valid category list")
    if not isinstance(names, list) or len(names) != len(cats):
        raise CheckpointError(f"{where}: names do not match categories")
    if not isinstance(head, dict) or not isinstance(head.get("state_dict"), dict):
        raise CheckpointError(f"{where} has no head weights")
    if not all(n is None or isinstance(n, str) for n in names):
        raise CheckpointError(f"{where}: names must be text or null")
    if len(set(cats)) != len(cats):
        twice = sorted({c for c in cats if cats.count(c) > 1})
        raise CheckpointError(f"{where} lists a category twice ({', '.join(map(repr, twice[:3]))}); it is damaged")
    _check_records(ckpt, where)
    _check_backbone(ckpt["backbone"], where)
    _check_preprocessing(ckpt["preprocessing"], where)
    _check_head(head, len(cats), where)
    _check_features(ckpt, where)
    if ckpt.get("unknown") is not None:  # absent or None: from before flowerid could tell; it names every photo
        from .head import HeadConfig
        from .unknown import UnknownDetector

        cfg = HeadConfig.from_dict(head["config"])
        UnknownDetector.from_state(ckpt["unknown"], cfg.num_classes, cfg.in_features, where)
    if ckpt.get("class_stats") is not None:  # absent: trained before `flowerid add`; it predicts as ever
        from .class_stats import ClassStats
        from .head import HeadConfig

        cfg = HeadConfig.from_dict(head["config"])
        ClassStats.from_state(ckpt["class_stats"], cfg.num_classes, cfg.hidden_units or cfg.in_features, where)
    return ckpt


def migrate(ckpt: dict[str, Any], version: int, where: str = "checkpoint") -> dict[str, Any]:
    """Apply MIGRATIONS one version at a time up to FORMAT_VERSION.

    Each step must raise the version; a step that fails on a damaged file
    becomes a CheckpointError rather than a traceback.
    """
    while version < FORMAT_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise CheckpointError(f"{where} is format version {version}, which cannot be migrated")
        try:
            ckpt = step(dict(ckpt))
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{where}: migrating from format version {version} failed ({exc!r})") from None
        new = ckpt.get("format_version") if isinstance(ckpt, dict) else None
        if not isinstance(new, int) or new <= version:
            raise CheckpointError(f"{where}: the migration from format version {version} did not advance it")
        version = new
    return ckpt


def backbone_spec(ckpt: dict[str, Any]) -> BackboneSpec:
    """The registry's spec of the checkpoint's backbone; CheckpointError when it preprocesses photos otherwise."""
    from ..backbones import get_spec
    from ..data.preprocess import Preprocessing

    spec = get_spec(ckpt["backbone"]["name"])
    if spec.preprocessing != Preprocessing.from_dict(ckpt["preprocessing"]):
        raise CheckpointError(f"the checkpoint's preprocessing differs from backbone {spec.name}'s")
    return spec


def check_weights(ckpt: dict[str, Any], digest: str) -> None:
    """CheckpointError unless the backbone weights found here (their digest) are the ones it was trained on."""
    info = ckpt["backbone"]
    if digest != info["weights_digest"]:
        raise CheckpointError(
            f"the {info['name']} weights found here (sha256 {digest[:12]}…) are not the ones "
            f"this checkpoint was trained on ({str(info['weights_digest'])[:12]}…)"
        )


_BAD = (KeyError, TypeError, ValueError, OverflowError, AttributeError, IndexError)


def _check_backbone(info: Any, where: str) -> None:
    if (
        not isinstance(info, dict)
        or not isinstance(info.get("name"), str)
        or not isinstance(info.get("weights_digest"), str)
        or not isinstance(info.get("weights_path"), str | None)
    ):
        raise CheckpointError(f"{where} has no valid backbone record (name, weights_digest)")


def _check_preprocessing(d: Any, where: str) -> None:
    from ..data.preprocess import _RESAMPLE, Preprocessing

    try:
        prep = Preprocessing.from_dict(d)
        ok = (
            0 < prep.crop_size <= prep.resize_size <= 8192
            and prep.interpolation in _RESAMPLE
            and len(prep.mean) == len(prep.std) == 3
            and all(math.isfinite(v) for v in (*prep.mean, *prep.std))
            and all(v > 0 for v in prep.std)
        )
    except _BAD:
        ok = False
    if not ok:
        raise CheckpointError(f"{where} has no valid preprocessing record")


def _check_head(head: dict[str, Any], num_classes: int, where: str) -> None:
    """The head's weights must be exactly the tensors its recorded shape builds."""
    from .head import HeadConfig

    try:
        cfg = HeadConfig.from_dict(head["config"])
        if not (0 < cfg.in_features <= 1 << 20 and 0 <= cfg.hidden_units <= 1 << 20 and 0 <= cfg.dropout < 1):
            raise ValueError
        if cfg.num_classes != num_classes:
            raise CheckpointError(f"{where}: the head has {cfg.num_classes} outputs for {num_classes} categories")
        expected = cfg.state_shapes()
    except _BAD:
        raise CheckpointError(f"{where} has no valid head configuration") from None
    state = head["state_dict"]
    got = {k: tuple(v.shape) for k, v in state.items() if str(getattr(v, "dtype", "")).split(".")[-1] in _FLOATS}
    if got != expected or len(state) != len(expected):
        raise CheckpointError(f"{where}: the head weights do not match the head's recorded shape (float32)")
    if not all(_finite(v) for v in state.values()):
        raise CheckpointError(f"{where}: the head's weights hold NaN or infinite values; it is damaged")


def _check_features(ckpt: dict[str, Any], where: str) -> None:
    """The head takes as many features as its backbone gives (an unknown backbone is reported where it is built)."""
    from ..backbones.spec import get_spec
    from ..errors import BackboneError
    from .head import HeadConfig

    try:
        features = get_spec(ckpt["backbone"]["name"]).num_features
    except BackboneError:
        return
    taken = HeadConfig.from_dict(ckpt["head"]["config"]).in_features
    if taken != features:
        raise CheckpointError(
            f"{where}: its head takes {taken} features, but {ckpt['backbone']['name']} gives {features}"
        )


_FLOATS = ("float16", "float32", "float64")  # torch.float32 and numpy's float32 alike; not bfloat16


def _finite(value: Any) -> bool:
    """Every number of a head tensor is finite (a torch tensor or the torch-free reader's numpy array)."""
    import numpy as np

    return bool(np.isfinite(np.asarray(value)).all())


_RECORD_DEPTH = 16  # metrics, training and additions are a few levels of plain data


def _check_records(ckpt: dict[str, Any], where: str) -> None:
    """The free-form records (metrics, training, additions) as `info` and `add` read them: dicts and a list of
    dicts of plain data, not deeper than anything flowerid writes."""
    for key, kind in (("metrics", dict), ("training", dict), ("additions", list)):
        value = ckpt.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is list and not all(isinstance(v, dict) for v in value)):
            raise CheckpointError(f"{where}: its {key} record is not what flowerid writes; it is damaged")
        if _depth(value) > _RECORD_DEPTH:
            raise CheckpointError(f"{where}: its {key} record is nested deeper than flowerid writes; it is damaged")


def _depth(value: Any, level: int = 0) -> int:
    if level > _RECORD_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list | tuple):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level
