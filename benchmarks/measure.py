"""Measuring a piece of work in a fresh process: time and peak memory growth.

Peak resident memory only ever grows within a process (Linux lets it be reset, which is done
before the measured run where allowed), so each configuration runs in a child process of its
own: the child builds its inputs, records its resident memory, runs the work once for the memory
figure (after a warm-up that loads kernels and thread pools, or compiles), then repeats it for
the time figure. On CUDA the figure is ``torch.cuda.max_memory_allocated`` instead.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from ops.atomic import write_atomically


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def limit_address_space(extra_gib: float) -> None:
    """Let this process map at most `extra_gib` GiB more than it has mapped now (RLIMIT_AS).

    An allocation past it fails with the allocator's "can't allocate memory" error, which the
    benchmark reports as "does not fit", instead of the machine swapping or the kernel's OOM
    killer picking a process. Address space is larger than resident memory (libraries, thread
    stacks), so the limit is counted from the current mapping, after imports.
    """
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = mapped + int(extra_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def available_gib() -> float:
    """MemAvailable from /proc/meminfo, in GiB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def peak_rss_mib() -> float:
    """The process's peak resident memory (VmHWM), since the last `reset_peak_rss`."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> None:
    """Start the peak over from the current resident memory (Linux: "5" into clear_refs), so a
    warm-up that needed more (a compilation) does not count; a no-op where it is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def measure(work: Callable[[], None], repeats: int = 3, device: str = "cpu") -> dict:
    """Run ``work`` once for memory and ``repeats`` times for time (median seconds)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
        work()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
    else:
        reset_peak_rss()
        base = current_rss_mib()
        work()
        peak = peak_rss_mib() - base
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"peak_mib": round(peak, 1), "seconds": statistics.median(times)}


def save_result(result: dict, path: str | None) -> dict:
    """Write a benchmark's result dict as JSON to ``path`` (if given) and return it."""
    if path:
        write_atomically(path, json.dumps(result, indent=2))
    return result


def run_child(module: str, args: list[str], timeout: float = 900) -> dict:
    """Run ``python -m module --child ...args`` and return the JSON dict it prints last."""
    cmd = [sys.executable, "-m", module, "--child", *args]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def saved_bytes_by_unit(
    run: Callable[[], None],
    units: dict[str, list[torch.nn.Module]],
    exclude: list[torch.Tensor],
    outside: str = "other",
) -> dict[str, int]:
    """Bytes autograd keeps for the backward while ``run()`` records a forward, by unit.

    Each distinct storage counts once, for the unit (a name mapped to the modules that make it
    up) whose forward was running when it was first saved, or ``outside``. The storages of
    ``exclude`` (parameters, the step's inputs) are not counted. Tensors kept by activation
    checkpointing are not seen: this counts what plain autograd keeps.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    kept: dict[int, tuple[str, int]] = {}
    stack = [outside]
    hooks = []
    for name, modules in units.items():
        for m in modules:
            hooks.append(
                m.register_forward_pre_hook(lambda mod, args, name=name: stack.append(name))
            )
            hooks.append(m.register_forward_hook(lambda mod, args, out: stack.pop() and None))

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr not in kept:
            kept[ptr] = (stack[-1], storage.nbytes())
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
    finally:
        for h in hooks:
            h.remove()
    totals = {name: 0 for name in units} | {outside: 0}
    for name, nbytes in kept.values():
        totals[name] += nbytes
    return totals


def allocated_peak_mib(work: Callable[[], None]) -> float:
    """Peak growth of the bytes held by PyTorch's CPU allocator while ``work()`` runs, from the
    profiler's allocation events (each carries the allocator's running total). Unlike resident
    memory it does not depend on how the C library reuses freed memory or on other processes;
    memory allocated outside PyTorch's allocator (oneDNN caches, the C library) is not in it."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    totals = []

    def walk(nodes) -> None:
        for node in nodes:
            if node.tag == _EventType.Allocation:
                f = node.extra_fields
                totals.append((node.start_time_ns, f.total_allocated, f.alloc_size))
            walk(node.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    if not totals:
        return 0.0
    totals.sort()
    _, first_total, first_size = totals[0]
    base = first_total - first_size  # held before the first allocation of the work
    return round((max(t for _, t, _ in totals) - base) / 2**20, 1)
