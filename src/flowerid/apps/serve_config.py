"""The server's limits and thresholds, apart from fastapi so the command line can show their defaults cheaply."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import UsageError

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: Top probability under which the page and API call a prediction unsure. On the
#: flowers102 valid split (default model, label smoothing 0.1) 12.7% of photos fall
#: under 0.4; predictions at or above it are right 99.0% of the time.
DEFAULT_UNSURE_BELOW = 0.4


def default_threads() -> int:
    """Photos named at once: one per core, 1-4. On 2 shared cores, 2 threads served 36-42 photos/s
    against 22 for one (decoding one photo overlaps the model on another)."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class ServeConfig:
    """Limits and thresholds of one server; the defaults suit a phone on a home network."""

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int | None = None  # None: FLOWERID_MAX_PIXELS or the library default
    inference_threads: int = field(default_factory=default_threads)
    unsure_below: float = DEFAULT_UNSURE_BELOW
    corrections: str | None = None  # folder the page's "Not right?" photos go to (NEWDATA layout); None: off

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1:
            raise UsageError("the upload limit must be at least 1 byte")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UsageError("the pixel limit must be at least 1")
        if self.inference_threads < 1:
            raise UsageError("inference threads must be at least 1")
        if not 0.0 <= self.unsure_below <= 1.0:
            raise UsageError("the unsure threshold is a probability between 0 and 1")
