"""Process-wide allocator tuning, called once by the entry points (the `stylize` / `evaluate` /
training commands, the TorchServe handler, the benchmark workers), never by library constructors."""
from __future__ import annotations

import ctypes
import os
import sys

ENV_REUSE_MEMORY = "INSTYLE_REUSE_FREED_MEMORY"


def reuse_freed_memory(mmap_threshold_mb: int = 128, keep_mb: int = 64) -> bool:
    """Let glibc serve allocations below `mmap_threshold_mb` from its heap and keep up to `keep_mb`
    of free heap mapped (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD), instead of a fresh mmap per tensor.

    Why: glibc serves every allocation over 32 MB with a fresh mmap and unmaps it on free, so each
    call of the generator (and each training step) page-faults its whole working set in again; on
    the 2-core VM of docs/benchmarks.md that was ~30 % of a 1080p forward and of a training step.
    The threshold is a trade: with *every* tensor on the heap (no mmap at all) a 1080p forward was
    ~15 % faster still, but heap fragmentation held ~3 GB; at 128 MB the 265 MB full-resolution
    1080p activations still get their own mapping (returned on free) and the peak stays ~1.9 GB.
    Process-wide and idempotent; Linux/glibc only (a no-op elsewhere);
    $INSTYLE_REUSE_FREED_MEMORY=0 turns it off. Returns whether it applied.
    """
    if os.environ.get(ENV_REUSE_MEMORY, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, mmap_threshold_mb * 2**20)) and bool(mallopt(m_trim_threshold, keep_mb * 2**20))
