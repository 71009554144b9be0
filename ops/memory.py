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

That cost is high on a CPU training step: every activation and gradient is a fresh mapping, and
the kernel faults it in page by page (2 clips x 8 x 224: about 2 million faults, a third of the
step's time in the kernel). So a CPU training process does something else
(``return_memory_at``): glibc keeps its defaults (freed memory is reused, no faults), and the
heap's free pages are given back (``malloc_trim``) after each backbone stage's forward and after
its backward, the points where the next stage needs tensors of another size and the heap would
otherwise keep the last stage's blocks. The resident peak stays close to the live tensors (docs/
performance.md) at a few calls per step. ``pin_mmap_threshold`` stays for the processes where
activations do not live in host memory (a GPU's) and under ``torch.compile``.

glibc's defaults still serve every request above 32 MiB (the most its raising goes to) with its
own mapping, and give the heap's top back by themselves whenever more than the trim threshold is
free there. In the 2-clip step that is every tensor of layer1's full width and the stem's (49
MiB each, about 40 per step), each faulted in page by page every time, and blocks freed at the
heap's top between the trims. So the CPU training process also makes the heap serve every
request up to 1 GiB and leaves the giving back to the stage trims alone
(``keep_blocks_in_heap``: ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` at 1 GiB). Measured on
that step (docs/performance.md): a quarter fewer page faults, a third less kernel time, the same
resident peak. Settings the user made through glibc's environment variables
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``) are left alone. Like
the pinned threshold, the setting is inherited by forked DataLoader workers: a worker's heap then
keeps its own peak until the worker ends (a few clips' worth).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
# Requests of at least this many bytes get their own mapping. Small enough for every activation of
# a video network (a 16-frame 7x7x2048 map is 6 MiB), large enough to leave the many small
# allocations (shapes, BatchNorm statistics, Python objects) to the heap.
DEFAULT_THRESHOLD = 256 * 1024


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt parameters)
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def pin_mmap_threshold(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Make glibc give every request of at least `threshold` bytes its own mapping (returned to
    the system when freed), from now on, in this process and the processes it forks. Returns
    whether the setting was made (False: not glibc, or the user set glibc's malloc variables)."""
    libc = _glibc()
    if libc is None or _users_own_setting():
        return False
    mallopt = libc.mallopt
    done = mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1
    if done:
        logger.debug("glibc mmap threshold pinned at %d bytes", threshold)
    return done


# CPU training: requests up to this size come from the heap, which glibc does not shrink by itself.
HEAP_LIMIT = 1 << 30
# glibc before 2.35 or so refuses a threshold above half its per-thread heap size (32 MiB here)
OLD_GLIBC_MAX_THRESHOLD = 32 << 20


def _users_own_setting() -> bool:
    return any(
        name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def keep_blocks_in_heap(limit: int = HEAP_LIMIT) -> bool:
    """Make glibc serve every request up to ``limit`` bytes from its heap, where a freed block is
    reused without new page faults, and never give the heap's top back by itself: only
    ``trim_heap`` (the stage hooks) gives free pages back. From now on, in this process and the
    processes it forks. Returns whether the setting was made (False: not glibc, or the user set
    glibc's malloc variables)."""
    libc = _glibc()
    if libc is None or _users_own_setting():
        return False
    mallopt = libc.mallopt
    mmap_set = any(
        mallopt(M_MMAP_THRESHOLD, value) == 1 for value in (limit, OLD_GLIBC_MAX_THRESHOLD)
    )
    done = mmap_set and mallopt(M_TRIM_THRESHOLD, limit) == 1
    if done:
        logger.debug("glibc serves requests up to %d bytes from its heap, trimmed by hand", limit)
    return done


def trim_heap() -> bool:
    """Give the free pages of glibc's heaps back to the system (``malloc_trim(0)``: free chunks
    anywhere in the heap, not only at its top). False where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def return_memory_at(modules: Iterable[nn.Module]) -> list[RemovableHandle]:
    """While gradients are recorded, call ``trim_heap`` after each module's forward and after its
    backward (when the gradient of its input is computed). Meant for the backbone's stages on a
    CPU (``backbone_stages``); returns the hook handles (``.remove()`` undoes it). Does nothing
    without glibc. Nothing computed changes: only where freed memory goes."""
    if _glibc() is None:
        return []

    def after_backward(grad: torch.Tensor) -> None:
        trim_heap()

    def before(module: nn.Module, args: tuple) -> tuple | None:
        x = args[0] if args else None
        if torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad:
            x = x.view_as(x)  # a tensor of this step's graph: the hook goes with it (a leaf stays)
            x.register_hook(after_backward)
            return (x, *args[1:])
        return None

    def after(module: nn.Module, args: tuple, output) -> None:
        if torch.is_grad_enabled():
            trim_heap()

    handles = []
    for m in modules:
        handles += [m.register_forward_pre_hook(before), m.register_forward_hook(after)]
    return handles


def backbone_stages(model: nn.Module) -> list[nn.Module]:
    """The stages (``layer1`` .. ``layer4``) of a video model's ResNet backbone (TSN or I3D), in
    order; empty for a backbone without them (MobileNetV2)."""
    base = getattr(model, "base_model", model)
    return [getattr(base, f"layer{i}") for i in range(1, 5) if hasattr(base, f"layer{i}")]


def give_memory_back(model: nn.Module, device_type: str, compiled: bool) -> str:
    """Make this training process give freed activations back the way that suits it: on a CPU,
    eager, with a ResNet backbone, ``keep_blocks_in_heap`` and ``return_memory_at`` its stages;
    otherwise (a GPU, where activations are not in host memory, or ``torch.compile``, which plans
    its own buffers) ``pin_mmap_threshold``. Returns which: 'stage trims' or 'mmap threshold'."""
    stages = backbone_stages(model)
    if device_type == "cpu" and not compiled and stages:
        keep_blocks_in_heap()
        return_memory_at(stages)
        return "stage trims"
    pin_mmap_threshold()
    return "mmap threshold"
