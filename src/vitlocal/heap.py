"""Keep a long streaming job's memory flat: glibc's malloc, left to itself, does not.

glibc serves allocations above its mmap threshold (128 KiB) with ``mmap`` and
returns them on ``free``, but each such free of a larger block *raises* the
threshold (up to 32 MiB) and the heap-trim threshold with it. A job that
allocates the same ~10 MB token and cast buffers batch after batch then
serves them from a heap that fragments and is not trimmed: extraction's peak
RSS measured 1,757 / 2,030 / 2,343 / 2,646 MiB for 2 / 4 / 8 / 16 full-size
Cityscapes images, and a flat 1,782 MiB with the threshold fixed, at the same
speed (bench/RESULTS.md). Fixing it is one ``mallopt`` call; it changes where
memory comes from, never what is computed.
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger(__name__)

#: ``M_MMAP_THRESHOLD`` in glibc's malloc.h; setting it also stops the dynamic adjustment.
_M_MMAP_THRESHOLD = -3
#: Blocks from 1 MiB up get their own mapping, returned to the system when freed.
MMAP_THRESHOLD_BYTES = 1 << 20


@functools.cache
def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold for this process (once); False where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: the C library's, on Linux
    except (OSError, AttributeError, TypeError):  # macOS, Windows: no mallopt (musl's returns 0)
        return False
    done = bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    log.debug("malloc mmap threshold fixed at %d bytes: %s", threshold, done)
    return done
