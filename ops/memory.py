"""Resident memory that follows the live tensors: glibc's mmap threshold pinned.

PyTorch's CPU tensors come from the C library's `malloc`. glibc serves a large request with its
own `mmap` (given back to the system when the tensor is freed) only above a threshold that it
raises, by default, to the size of every large block that is freed (up to 32 MiB). After the first
activation of a training step is freed, every later activation up to that size comes from the
heap, where freed blocks stay resident and the heap fragments: on the RNL-TSM-ResNet50 step (2
clips x 8 frames x 224 px) the process's resident peak grows by about 1.9x what PyTorch's
allocator holds at its peak. Pinning the threshold (`mallopt(M_MMAP_THRESHOLD, ...)`, which also
stops the raising) keeps large tensors in their own mappings, so the resident peak follows the
live tensors. Nothing computed changes (same tensors, same kernels, same bits); what it costs is
the kernel's page faults on fresh mappings, measured in docs/loader_and_step.md.

The setting is process-wide and inherited by forked DataLoader workers. A threshold the user
chose through glibc's own environment variable (`MALLOC_MMAP_THRESHOLD_`) is left as it is; on a
C library other than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
# Requests of at least this many bytes get their own mapping. Small enough for every activation of
# a video network (a 16-frame 7x7x2048 map is 6 MiB), large enough to leave the many small
# allocations (shapes, BatchNorm statistics, Python objects) to the heap.
DEFAULT_THRESHOLD = 256 * 1024


def pin_mmap_threshold(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Make glibc give every request of at least `threshold` bytes its own mapping (returned to
    the system when freed), from now on, in this process and the processes it forks. Returns
    whether the setting was made (False: not glibc, or `MALLOC_MMAP_THRESHOLD_` is set)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt parameters)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1
    if done:
        logger.debug("glibc mmap threshold pinned at %d bytes", threshold)
    return done
