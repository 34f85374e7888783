"""Typed errors: each says what went wrong and how to fix it.

The library raises these; only the CLI turns them into messages and exit codes.
"""

from __future__ import annotations


class FlowerIdError(Exception):
    """Base class of every error flowerid raises on purpose."""

    exit_code = 1


class UsageError(FlowerIdError):
    """A setting or argument that cannot work.

    `setting` names it as Python callers spell it (`epochs`); the CLI shows its flag (`--epochs`) instead.
    """

    exit_code = 2

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        self.setting = setting
        super().__init__(message)


class DataError(FlowerIdError):
    """A data folder that cannot be trained or evaluated on as it is."""


class ImageError(FlowerIdError):
    """An image that cannot be read."""

    def __init__(self, source: object, reason: str) -> None:
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


class NotAnImageError(ImageError):
    """Bytes that no image format recognises (a text file, an HTML page...)."""


class DecompressionBombError(ImageError):
    """An image whose pixel count is over the limit, refused before decoding."""


class BackboneError(FlowerIdError):
    """An unknown backbone name or weights that cannot be had."""


class UnknownBackboneError(BackboneError, UsageError):
    """A backbone name the user gave (`--arch`) that no backbone has: a bad argument, exit 2."""


class WeightsUnavailableError(BackboneError):
    """Pretrained weights that need a network (or a file) this machine lacks."""


class CheckpointError(FlowerIdError):
    """A checkpoint that is missing, damaged, unsafe or of an unknown format."""


class OutputError(FlowerIdError):
    """A file that cannot be written: its folder cannot be made or written to, or the disk is full."""


class DeviceError(FlowerIdError):
    """A device that was asked for but is not there."""


class ResultsFileError(DataError):
    """An existing `--out` file that flowerid cannot resume: not its results, or damaged by a hand edit.

    Refused rather than overwritten or cut, so rows whose photos are gone are never lost.
    """
