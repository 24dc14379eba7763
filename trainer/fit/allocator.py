"""Keep freed memory in the process instead of handing it back to the OS after every chunk.

The fused training kernel allocates and frees a few MB per chunk and per layer, in sizes that
vary with the group widths. glibc's malloc serves blocks above its mmap threshold with fresh
mmap'd pages and trims the heap top when it frees, so every chunk would pay page faults on
memory it had just released (most with the hierarchical representation, whose group widths
vary most). Raising the thresholds once keeps those blocks on malloc's free lists. A no-op
outside glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_DONE = False


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30,
                      top_pad: int = 64 << 20) -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True if applied."""
    global _DONE
    if _DONE:
        return True
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    applied = all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad)))
    _DONE = applied
    if not applied:
        log.debug("mallopt refused the allocator thresholds; training runs with the defaults")
    return applied
