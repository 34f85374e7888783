"""Any torch module (NCHW float32 in, one tensor out) as an ONNX file with a dynamic batch axis.

The engine caches backbones this way (engines.py), and exports write whole models
with it (model/export.py). Importing this module imports torch.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from .._io import atomic_write

INPUT_NAME = "input"
DEFAULT_OPSET = 17


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Hide the exporters' deprecation and tracer chatter: the outputs are checked by tests instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        yield


def example_input(input_size: int | tuple[int, int], batch: int = 2) -> torch.Tensor:
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    return torch.zeros(batch, 3, h, w, dtype=torch.float32)


def contiguous(module: nn.Module) -> nn.Module:
    # A module moved to channels_last for the CPU engine exports the same, but plain layout is the norm.
    return module.eval().to(memory_format=torch.contiguous_format)


def export_onnx(
    module: nn.Module,
    path: str | os.PathLike,
    input_size: int | tuple[int, int],
    *,
    input_name: str = INPUT_NAME,
    output_name: str | Sequence[str] = "output",
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write `module` (NCHW float32 in; one tensor out, or one per name) as ONNX with a dynamic batch axis; atomic.

    Uses the TorchScript-based exporter (`dynamo=False`): it needs no `onnxscript`
    and exports timm and torchvision networks with outputs within 1e-5 of torch.
    """
    module = contiguous(module)
    example = example_input(input_size)
    names = [output_name] if isinstance(output_name, str) else list(output_name)
    buf = io.BytesIO()
    with quiet_export(), torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            input_names=[input_name],
            output_names=names,
            dynamic_axes={input_name: {0: "batch"}, **{n: {0: "batch"} for n in names}},
            opset_version=opset,
            do_constant_folding=True,
        )
    return atomic_write(path, lambda f: f.write(buf.getbuffer()))
