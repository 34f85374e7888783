"""Process-level tuning that makes CPU inference much faster on Linux."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_done = False


def tune_malloc() -> None:
    """Stop glibc returning large activation buffers to the OS after every layer.

    By default each big tensor is mmap'd and munmap'd, and every reuse page-faults
    fresh zeroed pages: on a 2-core machine half the time went to the kernel. A high
    mmap threshold and no trimming keep the memory in the heap (measured: 45 to 104
    images/s for EfficientNet-Lite0, batch 16).
    """
    global _done
    if _done or not sys.platform.startswith("linux"):
        return
    _done = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's maximum through mallopt
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):  # not glibc (musl, say): nothing to tune
        pass
