"""Confirm the CUDA paths on a machine with a GPU: one script, one JSON report, exit 1 on a failure.

    python benchmarks/gpu_check.py                    # every check (sized for < 8 min on a GPU)
    python benchmarks/gpu_check.py --cpu-only         # the CPU checks only (what CI runs; --quick)
    python benchmarks/gpu_check.py --out report.json  # default: bench_out/gpu_check.json
    python benchmarks/gpu_check.py --only sdpa        # the checks whose name contains "sdpa"

Checks (the CUDA ones at the sizes of RNL-ResNet50 at 8 frames, 224 px, batch 2; the CPU ones at
reduced sizes, with the same head dims):

- ``sdpa <device> <layer> <dtype>``: the RNL attention (``ops/attention.py``, fused) forward and
  backward with each SDPA backend forced in turn by ``torch.nn.attention.sdpa_kernel`` (CUDA:
  flash, efficient, cudnn, math; CPU: flash, math): whether it runs, and if not PyTorch's
  reason; its error against the fp32 explicit computation (the published ``P x P`` affinity);
  peak memory (CUDA) and time, next to the explicit path in the same dtype; and the backend
  PyTorch picks when none is forced (``math`` materialises the ``P x P`` matrix as the explicit
  path does). layer2: head dim C' = 256, P = T*28*28; layer3: C' = 512, P = T*14*14.
- ``region conv <device> <layer>``: ``RegionConv3d`` depthwise and masked, fp32 and autocast,
  output and gradients against the published masked grouped convolution in float64 on the CPU;
  time of depthwise vs masked.
- ``shift+conv <device>``: ``TemporalShift`` around a 1x1 and a strided 3x3 conv, plain and
  memory-saving (``recompute``), fp32 and autocast, contiguous and channels-last, output and
  gradients against a float64 CPU reference written here (shift by concatenation).
- Both CPU checks run bf16 as training does: through ``ops/bf16_guard.py``, which routes a layer
  whose bf16 kernel is wrong on this CPU (torch 2.14.1 on AVX-512 CPUs: the region
  convs at T = 2; docs/bf16_cpu.md). The figures say which route was taken and the error of
  PyTorch's own bf16 kernel (called directly) at that shape; a route that this kernel's error
  does not explain (the kernel is right, so the module's own bf16 path is wrong) fails. The
  region convs are also checked at 4 frames, where the kernels are right, so that the fault at
  2 frames cannot hide a wrong bf16 path of the module.
- ``dataparallel autocast``: the dtype each DataParallel replica computes in under ``--amp
  bf16`` / ``fp16`` over 1..n GPUs, through ``ops.evaluation.inference_model`` as
  ``test_models.py`` builds it (and, for comparison, without the wrapper).
- ``main.py ...`` and ``test_models.py ...``: real runs (subprocesses, as users start them) on
  the synthetic dataset with a TSM+RNL ResNet-18 at 32 px and 4 frames: CPU training then
  ``--resume auto``; single GPU with ``--amp bf16 --channels_last``, ``--amp fp16``,
  ``--compile``; the published spawn command with nccl at world size 1, then ``--resume auto``;
  SIGTERM to torchrun (1 or 2 processes, ``-j 2``) in the middle of epoch 2, which must log
  "stopped by SIGTERM ... saved ...", then ``--resume auto`` to the end (each resumed run must
  start at the step after its checkpoint); ``test_models.py`` with
  3 crops in fp32 and ``--amp bf16`` on the CPU, and ``--amp bf16`` on all GPUs (DataParallel),
  both compared with the CPU fp32 scores.

- with two or more GPUs: DDP over 2 GPUs with NCCL against one process on the whole batch
  (gradient averaging, SyncBatchNorm with the recomputed backward: outputs, gradients, running
  statistics; ``ops.distributed.average_gradients``); the published spawn command on 2 GPUs
  with a micro-step skipped on one rank (replica checksums equal, the skip counted), then
  ``--resume auto``; ``--compile`` under DDP; ``test_models.py --gpus 0 1`` (DataParallel)
  against the CPU scores. On one GPU: ``--device_aug`` (nvjpeg decode against the CPU decode,
  and a training run), ``--ema`` with ``--precise_bn`` then ``--resume auto``; every CUDA
  training run's checkpoint must record ``cudnn.benchmark`` on in every rank and a fused
  attention kernel (flash, efficient or cudnn; not math) for every RNL shape.

A check fails when it crashes, times out or disagrees with its reference; a backend that refuses
an input is a figure (``runs: false`` and PyTorch's reason), not a failure. Asked for the GPU
checks where CUDA is absent, the script refuses with one line and exit status 2 (``--cpu-only``
runs the CPU checks and reports the CUDA ones as skipped); a check that needs two GPUs on a
machine with one is skipped with the reason. A subprocess that runs past its time is killed with
its whole process group (spawned ranks, torchrun's workers, loader workers).

The report: ``{"date", "machine", "torch", "cuda", "quick", "seconds", "summary": {"pass",
"fail", "skipped"}, "checks": [{"name", "status" (pass | fail | skipped), "seconds", "figures",
"error"}]}``; ``error`` is the failure in one line, or why the check was skipped. Errors are
``max |x - ref| / max |ref|``. The run's files (data, checkpoints, logs) go to a temporary folder,
kept and named in the report when a check failed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see main.py: spinning OpenMP threads

import argparse
import contextlib
import copy
import datetime
import json
import logging
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ops import bf16_guard, evaluation
from ops import distributed as du
from ops.attention import _positions_last, nonlocal_attention
from ops.checkpoint import load_checkpoint
from ops.device_augment import EncodedBatch, EncodedClip, EncodedFrame
from ops.distributed import free_port
from ops.engine.seeding import EpochSampler
from ops.models import TSN
from ops.region_conv import IMPLS, RegionConv3d
from ops.synthetic import make_synthetic, make_tiny
from ops.temporal_shift import TemporalShift
from ops.utils import autocast, setup_logging

REPO = Path(__file__).resolve().parent.parent  # main.py and test_models.py, run from the checkout
logger = logging.getLogger("gpu_check")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
AMP_OF = {"fp32": "off", "fp16": "fp16", "bf16": "bf16"}
# Largest accepted error (max |x - ref| / max |ref|) of a computation in each dtype; low
# precision is judged against its inputs' rounding, fp32 with TF32 off.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2, "tf32": 1e-2}  # tf32: CUDA's fp32 convs

# RNL blocks of RNL-ResNet50 at 224 px: head dim C' and the side of the feature map.
ATTENTION_LAYERS = {"layer2": (256, 28), "layer3": (512, 14)}
# Region convs: channels C', kernel (ops/rnl.py STAGE_KERNELS), side of the feature map.
REGION_LAYERS = {"layer2": (256, (3, 7, 7), 28), "layer3": (512, (3, 3, 3), 14)}
# Shifted convs: (in, out, kernel, stride, padding, side): ResNet-50 layer1 conv1 and the strided
# 3x3 conv1 of ResNet-18 layer2.0.
SHIFT_CONVS = {"1x1 256->64": (256, 64, 1, 1, 0, 56), "3x3/2 64->128": (64, 128, 3, 2, 1, 56)}


# --------------------------------------------------------------------------------------------
# Running checks and writing the report
# --------------------------------------------------------------------------------------------


class CheckFailed(Exception):
    """A check that ran and found something wrong; the message is the report's error line."""

    def __init__(self, message: str, figures: dict | None = None) -> None:
        super().__init__(message)
        self.figures = figures or {}


@dataclass
class Check:
    name: str
    needs_cuda: bool
    run: Callable[[Context], dict]
    gpus: int = 1  # GPUs it needs (with needs_cuda)


@dataclass
class Context:
    """What the checks share: CUDA on or off, the work folder, what earlier checks produced."""

    cuda: bool
    workdir: Path
    artifacts: dict = field(default_factory=dict)
    gpus: int = 0  # visible CUDA devices

    def data_root(self, name: str = "data", videos_per_class: int = 4) -> str:
        """A tiny synthetic dataset (2 classes, 2 validation videos each), written once."""
        root = self.workdir / name
        if not (root / "synthetic").is_dir():
            make_tiny(str(root), num_videos_per_class=videos_per_class)
        return str(root)


def run_checks(checks: list[Check], ctx: Context, skip_reason: str) -> list[dict]:
    """Run each check in turn; a progress line per check; never stops at a failure."""
    results = []
    for i, check in enumerate(checks, start=1):
        start = time.perf_counter()
        figures: dict = {}
        error = None
        if check.needs_cuda and not ctx.cuda:
            status, error = "skipped", skip_reason
        elif check.needs_cuda and ctx.gpus < check.gpus:
            status, error = "skipped", f"needs {check.gpus} GPUs; {ctx.gpus} visible"
        else:
            try:
                figures = check.run(ctx)
                status = "pass"
            except CheckFailed as exc:
                status, error, figures = "fail", str(exc), exc.figures
            except Exception as exc:  # a crash is a failure of that check, not of the script
                status, error = "fail", _one_line(exc)
                logger.warning("%s crashed:\n%s", check.name, traceback.format_exc())
            finally:
                if ctx.cuda:
                    torch.cuda.empty_cache()
        seconds = round(time.perf_counter() - start, 2)
        results.append(
            {
                "name": check.name,
                "status": status,
                "seconds": seconds,
                "figures": figures,
                "error": error,
            }
        )
        log = logger.warning if status == "fail" else logger.info
        log(
            "[%d/%d] %s: %s (%.1f s)%s",
            i,
            len(checks),
            check.name,
            status,
            seconds,
            f": {error}" if error else "",
        )
    return results


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref|, in float64 on the CPU (inf when x is not finite)."""
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(x).all():
        return float("inf")
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _sig(x: float) -> float:
    return float(f"{x:.3g}")


@contextlib.contextmanager
def _exact_fp32():
    """fp32 matmuls and convolutions without TF32, so fp32 results can be held to 1e-4."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _measure(work: Callable[[], object], device: torch.device, repeats: int) -> tuple:
    """``work()`` once for its result and peak memory (CUDA: max_memory_allocated above what was
    allocated before), then ``repeats`` times for the median time."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    out = work()
    cost: dict = {}
    if cuda:
        torch.cuda.synchronize()
        cost["peak_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    cost["ms"] = round(1000 * statistics.median(times), 3)
    return out, cost


# --------------------------------------------------------------------------------------------
# SDPA backends for the RNL attention
# --------------------------------------------------------------------------------------------


def _sdpa_backends(cuda: bool) -> dict:
    if cuda:
        return {
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "math": SDPBackend.MATH,
        }
    return {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}  # the CPU's kernels


def attention_inputs(channels: int, positions: int, batch: int = 2, seed: int = 0):
    """Region features r ``[N, C', P]`` (queries and keys, as in RNL), values and an output
    gradient. The features share a common component, as real ones do, so that the unscaled
    affinities spread over many sources instead of picking each position itself."""
    g = torch.Generator().manual_seed(seed)
    common = 0.5 * torch.randn(batch, channels, 1, generator=g)
    r = common + (3.0 / channels**0.5) * torch.randn(batch, channels, positions, generator=g)
    v = torch.randn(batch, channels, positions, generator=g)
    grad = torch.randn(batch, channels, positions, generator=g)
    return r, v, grad


def _attention_step(r, v, grad, fused: bool, backend=None) -> tuple:
    """Forward and backward of the RNL attention (q = k = r); returns (y, dr, dv)."""
    r = r.detach().requires_grad_(True)
    v = v.detach().requires_grad_(True)
    with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
        y, _ = nonlocal_attention(r, r, v, fused=fused)
        y.backward(grad)
    return y.detach(), r.grad, v.grad


def _default_backend(r: torch.Tensor, v: torch.Tensor) -> str:
    """The backend SDPA picks, unforced, for the tensors the RNL block passes it (private API:
    'unknown' where this PyTorch lacks it)."""
    q = _positions_last(r).requires_grad_(True)
    val = _positions_last(v).requires_grad_(True)
    try:
        choice = torch._fused_sdp_choice(q, q, val, None, 0.0, False, scale=1.0)
        name = SDPBackend(int(choice)).name
    except Exception:
        return "unknown"
    return {
        "FLASH_ATTENTION": "flash",
        "EFFICIENT_ATTENTION": "efficient",
        "CUDNN_ATTENTION": "cudnn",
        "MATH": "math",
    }.get(name, name.lower())


def _refusal(caught: list, exc: BaseException) -> str:
    """PyTorch's reasons for refusing a forced backend: its warnings, else the error."""
    reasons = []
    for w in caught:
        text = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
        if text and text not in reasons:
            reasons.append(text)
    return ("; ".join(reasons) or _one_line(exc))[:500]


def check_sdpa(ctx: Context, device: str, layer: str, dtype_name: str) -> dict:
    channels, side = ATTENTION_LAYERS[layer]
    cuda = device == "cuda"
    frames, side = (8, side) if cuda else (2, side // 2)
    positions = frames * side * side
    dev = torch.device(device)
    dtype = DTYPES[dtype_name]
    repeats = 5 if cuda else 1
    r, v, grad = (t.to(dev) for t in attention_inputs(channels, positions))
    with _exact_fp32():
        ref = _attention_step(r, v, grad, fused=False)
    low = [t.to(dtype) for t in (r, v, grad)]

    def judged(out) -> dict:
        errs = [_rel_err(a, b) for a, b in zip(out, ref)]
        return {"err_y": _sig(errs[0]), "err_grad_r": _sig(errs[1]), "err_grad_v": _sig(errs[2])}

    figures: dict = {
        "head_dim": channels,
        "positions": positions,
        "batch": 2,
        "default": _default_backend(low[0], low[1]),
    }
    with _exact_fp32():
        out, cost = _measure(partial(_attention_step, *low, fused=False), dev, repeats)
    figures["explicit"] = {**cost, **judged(out)}
    for name, backend in _sdpa_backends(cuda).items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with _exact_fp32():
                    work = partial(_attention_step, *low, fused=True, backend=backend)
                    out, cost = _measure(work, dev, repeats)
            except RuntimeError as exc:
                figures[name] = {"runs": False, "reason": _refusal(caught, exc)}
                continue
        figures[name] = {"runs": True, **cost, **judged(out)}
        base = figures["explicit"]
        figures[name]["time_vs_explicit"] = _sig(cost["ms"] / max(base["ms"], 1e-9))
        if cuda:
            figures[name]["mem_vs_explicit"] = _sig(cost["peak_mib"] / max(base["peak_mib"], 1e-9))

    problems = []
    math = figures["math"]
    if not math.get("runs"):
        problems.append(f"the math backend does not run: {math['reason']}")
    for name in _sdpa_backends(cuda):
        f = figures[name]
        if not f.get("runs"):
            continue
        # A fused kernel may be as far from fp32 as its inputs' rounding, which the math path
        # in the same dtype shows; never looser than the dtype's tolerance.
        worst = max(f["err_y"], f["err_grad_r"], f["err_grad_v"])
        tol = TOLERANCE[dtype_name]
        if name != "math" and math.get("runs"):
            tol = max(tol, 2 * max(math["err_y"], math["err_grad_r"], math["err_grad_v"]))
        f["tolerance"] = _sig(tol)
        if not worst <= tol:
            problems.append(f"{name}: error {worst:.3g} above {tol:.3g}")
    if figures["default"] == "math":
        logger.warning(
            "sdpa %s %s %s: PyTorch falls back to the math path (the P x P matrix is built)",
            device,
            layer,
            dtype_name,
        )
    if problems:
        raise CheckFailed("; ".join(problems), figures)
    return figures


# --------------------------------------------------------------------------------------------
# Region conv and shift + conv against float64 references on the CPU
# --------------------------------------------------------------------------------------------


def _region_reference(module: RegionConv3d, x: torch.Tensor, grad: torch.Tensor) -> tuple:
    """The published computation, in float64 on the CPU: a grouped convolution whose weight is
    multiplied by the fixed 0/1 mask; gradients by autograd through that product."""
    x = x.double().cpu().requires_grad_(True)
    weight = module.weight.detach().double().cpu().requires_grad_(True)
    mask = module.mask.detach().double().cpu()
    y = F.conv3d(x, weight * mask, None, 1, module.padding, 1, module.groups)
    y.backward(grad.double().cpu())
    return y.detach(), x.grad, weight.grad


def _region_step(module: RegionConv3d, x, grad, dtype_name: str) -> tuple:
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    with autocast(x.device, AMP_OF[dtype_name]):
        y = module(x)
    y.backward(grad.to(y.dtype))
    return y.detach(), x.grad, module.weight.grad


def _raw_kernel_error(conv: Callable, x: torch.Tensor, weight: torch.Tensor, grad) -> float:
    """Largest error of PyTorch's own bf16 convolution ``conv(x, weight)`` (output, both
    gradients) against float32 on the same bf16 numbers: whether a kernel is wrong at a shape,
    found without the module that routed it."""
    out = {}
    for dtype in (torch.bfloat16, torch.float32):
        xd = x.detach().to(dtype).requires_grad_(True)
        wd = weight.detach().to(dtype).requires_grad_(True)
        y = conv(xd, wd)
        y.backward(grad.to(dtype))
        out[dtype] = (y.detach(), xd.grad, wd.grad)
    return max(_rel_err(a, b) for a, b in zip(out[torch.bfloat16], out[torch.float32]))


def _guard(module: nn.Module, x: torch.Tensor, raw: Callable[[], float], row: dict) -> str:
    """Route ``module`` as a CPU bf16 run does (``ops/bf16_guard.py``) for input ``x``; record
    the route and the raw kernel's error in ``row``; a problem when the kernel is right but the
    module was routed anyway (its own bf16 path is then the wrong one)."""
    routed = bf16_guard.guard_bf16(module, tuple(x.shape), x.device, "bf16", warn=False)
    row["route"] = next(iter(routed.values()), None)
    if row["route"] is None:
        return ""
    row["raw_kernel_error"] = _sig(raw())
    if row["raw_kernel_error"] <= bf16_guard.TOLERANCE:
        return f"routed to {row['route']} though the bf16 kernel is right"
    return ""


def check_region_conv(ctx: Context, device: str, layer: str) -> dict:
    channels, kernel, side = REGION_LAYERS[layer]
    cuda = device == "cuda"
    frames, channels, side = (8, channels, side) if cuda else (2, channels // 4, side // 3)
    dev = torch.device(device)
    torch.manual_seed(0)
    source = RegionConv3d(channels, kernel)
    x = torch.randn(2, channels, frames, side, side)
    figures: dict = {"channels": channels, "kernel": list(kernel), "input": list(x.shape)}
    problems: list[str] = []
    _region_rows(source, x, dev, "", figures, problems)
    if not cuda:
        # Also at 4 frames, where the CPUs' bf16 kernels were measured right: a layer routed
        # there has a wrong bf16 path of its own, which the kernel fault at 2 frames could hide.
        x4 = torch.randn(2, channels, 4, side, side)
        figures["input 4 frames"] = list(x4.shape)
        _region_rows(source, x4, dev, " 4 frames", figures, problems)
    for dtype_name in ("fp32", "bf16"):
        masked, dw = figures[f"masked {dtype_name}"], figures[f"depthwise {dtype_name}"]
        figures[f"depthwise speed-up {dtype_name}"] = _sig(masked["ms"] / max(dw["ms"], 1e-9))
    if problems:
        raise CheckFailed("; ".join(problems), figures)
    return figures


def _region_rows(
    source: RegionConv3d, x: torch.Tensor, dev: torch.device, suffix: str, figures, problems
) -> None:
    """The rows ``'<impl> <dtype><suffix>'`` of ``check_region_conv`` for input ``x``."""
    cuda = dev.type == "cuda"
    repeats = 5 if cuda else 1
    grad = torch.randn_like(x)
    ref = _region_reference(source, x, grad)
    for impl in IMPLS:
        module = RegionConv3d(source.channels, source.kernel_size, impl=impl).to(dev)
        module.load_state_dict(source.state_dict())
        for dtype_name in ("fp32", "bf16", "fp16") if cuda else ("fp32", "bf16"):
            key = f"{impl} {dtype_name}{suffix}"
            routing = {}
            if not cuda and dtype_name == "bf16":
                routing = {"route": None}
                problem = _guard(module, x, partial(_raw_region_error, module, x, grad), routing)
                if problem:
                    problems.append(f"{key}: {problem}")
            with _exact_fp32():
                work = partial(_region_step, module, x.to(dev), grad.to(dev), dtype_name)
                out, cost = _measure(work, dev, repeats)
            errs = [_rel_err(a, b) for a, b in zip(out, ref)]
            row = {**cost, "err_y": _sig(errs[0]), "err_grad_x": _sig(errs[1])}
            row["err_grad_w"] = _sig(errs[2])
            figures[key] = {**row, **routing}
            if not max(errs) <= TOLERANCE[dtype_name]:
                problems.append(f"{key}: error {max(errs):.3g}")


def _raw_region_error(module: RegionConv3d, x: torch.Tensor, grad: torch.Tensor) -> float:
    """The raw bf16 kernel's error for ``module``'s convolution as it computes it on the CPU
    (depthwise: the gathered kernel on channels-last input; masked: the grouped convolution)."""
    if module.impl == "depthwise":
        weight, groups = module.depthwise_weight(), module.channels
        x = x.contiguous(memory_format=torch.channels_last_3d)
    else:
        weight, groups = module.weight * module.mask, module.groups
    conv = partial(F.conv3d, padding=module.padding, groups=groups)
    return _raw_kernel_error(conv, x, weight, grad)


def reference_shift(x: torch.Tensor, frames: int, fold_div: int = 8) -> torch.Tensor:
    """SPEC section 2, written independently of ops/temporal_shift.py: channels [0, fold) take
    t+1 (zero at the end), [fold, 2 fold) take t-1 (zero at the start), the rest stay."""
    nt, c, h, w = x.shape
    v = x.view(nt // frames, frames, c, h, w)
    fold = c // fold_div
    zero = torch.zeros_like(v[:, :1])
    ahead = torch.cat([v[:, 1:, :fold], zero[:, :, :fold]], dim=1)
    behind = torch.cat([zero[:, :, fold : 2 * fold], v[:, :-1, fold : 2 * fold]], dim=1)
    return torch.cat([ahead, behind, v[:, :, 2 * fold :]], dim=2).view(nt, c, h, w)


def _shift_step(module: TemporalShift, x, grad, dtype_name: str, channels_last: bool) -> tuple:
    module.zero_grad(set_to_none=True)
    x = x.detach()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    with autocast(x.device, AMP_OF[dtype_name]):
        y = module(x)
    y.backward(grad.to(y.dtype))
    return y.detach(), x.grad, module.net.weight.grad


def check_shift_conv(ctx: Context, device: str) -> dict:
    cuda = device == "cuda"
    dev = torch.device(device)
    batch, frames = (2, 8) if cuda else (1, 4)
    figures: dict = {}
    problems = []
    for conv_name, (cin, cout, k, stride, pad, side) in SHIFT_CONVS.items():
        if not cuda:
            cin, cout, side = cin // 4, cout // 4, side // 4
        torch.manual_seed(0)
        conv = nn.Conv2d(cin, cout, k, stride, pad, bias=False)
        x = torch.randn(batch * frames, cin, side, side)
        x64 = x.double().requires_grad_(True)
        w64 = conv.weight.detach().double().requires_grad_(True)
        y64 = F.conv2d(reference_shift(x64, frames), w64, None, stride, pad)
        grad = torch.randn_like(y64, dtype=torch.float32)
        y64.backward(grad.double())
        ref = (y64.detach(), x64.grad, w64.grad)
        for recompute in (False, True):
            for dtype_name in ("fp32", "bf16", "fp16") if cuda else ("fp32", "bf16"):
                for channels_last in (False, True):
                    module = TemporalShift(
                        copy.deepcopy(conv), n_segment=frames, n_div=8, recompute=recompute
                    ).to(dev)
                    routing = {}
                    if not cuda and dtype_name == "bf16":
                        routing = {"route": None}
                        fmt = torch.channels_last if channels_last else torch.contiguous_format
                        xg = x.contiguous(memory_format=fmt)
                        raw = partial(
                            _raw_kernel_error,
                            partial(F.conv2d, stride=stride, padding=pad),
                            reference_shift(xg, frames).contiguous(memory_format=fmt),
                            conv.weight,
                            grad,
                        )
                        problem = _guard(module, xg, raw, routing)
                        if problem:
                            problems.append(f"{conv_name} bf16: {problem}")
                    with _exact_fp32():
                        out = _shift_step(
                            module, x.to(dev), grad.to(dev), dtype_name, channels_last
                        )
                    errs = [_rel_err(a, b) for a, b in zip(out, ref)]
                    key = (
                        f"{conv_name} {'recompute' if recompute else 'plain'} {dtype_name}"
                        f"{' channels_last' if channels_last else ''}"
                    )
                    figures[key] = {
                        "err_y": _sig(errs[0]),
                        "err_grad_x": _sig(errs[1]),
                        "err_grad_w": _sig(errs[2]),
                        **routing,
                    }
                    if not max(errs) <= TOLERANCE[dtype_name]:
                        problems.append(f"{key}: error {max(errs):.3g}")
    if problems:
        raise CheckFailed("; ".join(problems), figures)
    return figures


# --------------------------------------------------------------------------------------------
# DataParallel replicas under autocast
# --------------------------------------------------------------------------------------------


class _DtypeProbe(nn.Module):
    """A linear layer that records (device index, dtype of its output) at every call."""

    def __init__(self, seen: list) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)
        self.seen = seen  # shared with DataParallel's replicas

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        self.seen.append((x.device.index, str(y.dtype).replace("torch.", "")))
        return y


def check_dataparallel_autocast(ctx: Context) -> dict:
    figures: dict = {}
    problems = []
    first = torch.device("cuda", 0)
    for k in range(1, torch.cuda.device_count() + 1):
        gpus = list(range(k))
        for amp in ("bf16", "fp16"):
            want = str(DTYPES[amp]).replace("torch.", "")
            seen: list = []
            model = evaluation.inference_model(_DtypeProbe(seen), first, amp, gpus)
            with torch.no_grad():
                model(torch.randn(4 * k, 16, device=first))
            replicas = sorted(set(seen))
            # The old way, for comparison: autocast around DataParallel, in the calling thread.
            plain_seen: list = []
            plain = _DtypeProbe(plain_seen).to(first)
            plain = nn.DataParallel(plain, device_ids=gpus) if k > 1 else plain
            with torch.no_grad(), autocast(first, amp):
                plain(torch.randn(4 * k, 16, device=first))
            figures[f"{k} GPU {amp}"] = {
                "replicas": [f"cuda:{d} {t}" for d, t in replicas],
                "without_wrapper": [f"cuda:{d} {t}" for d, t in sorted(set(plain_seen))],
            }
            if {t for _, t in replicas} != {want} or {d for d, _ in replicas} != set(gpus):
                problems.append(f"{k} GPU(s) --amp {amp}: replicas ran as {replicas}")
    if problems:
        raise CheckFailed("; ".join(problems), figures)
    return figures


# --------------------------------------------------------------------------------------------
# main.py and test_models.py as users run them
# --------------------------------------------------------------------------------------------


def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONUNBUFFERED"] = "1"  # progress lines arrive as they are written (SIGTERM check)
    return env


def _error_line(text: str) -> str:
    """The line of a log that best says what went wrong: the script's one-line error, else the
    last exception line (a rank's own before torchrun's account of it), else an error log line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    tiers = [
        [x for x in lines if re.search(r"(main|test_models)\.py: error:", x)],
        [x for x in lines if re.match(r"[\w.]*(Error|Exception)\b.*: ", x) and "elastic" not in x],
        [x for x in lines if re.match(r"[\w.]*(Error|Exception)\b", x)],
        [x for x in lines if re.search(r"\d\d:\d\d:\d\d [EW] ", x)],
        lines,
    ]
    picked = next((tier for tier in tiers if tier), ["(no output)"])
    return picked[-1][:400]


def _run(ctx: Context, tag: str, argv: list[str], timeout: float) -> str:
    """Run ``argv`` in the work folder; its output goes to ``<tag>.log`` and is returned.
    A non-zero exit or a timeout fails the check with the log's telling line."""
    log_path = ctx.workdir / f"{tag}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            argv,
            cwd=ctx.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_child_env(),
            start_new_session=True,  # its own process group: ended whole on a timeout
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise CheckFailed(f"{tag}: timed out after {timeout:.0f} s") from None
    text = log_path.read_text(errors="replace")
    if code != 0:
        raise CheckFailed(f"{tag}: exit code {code}: {_error_line(text)}")
    return text


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to `proc`'s whole process group (it leads one: start_new_session), so that what
    it started (spawned ranks, torchrun's workers, DataLoader workers) dies with it instead of
    keeping the GPU; then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _run_and_signal(
    ctx: Context, tag: str, argv: list[str], pattern: str, timeout: float
) -> tuple[int, str, bool]:
    """Start ``argv``; when ``pattern`` appears in its output send it SIGTERM (as a scheduler
    signals the launcher), then wait for it to exit. Returns (exit code, output, signalled)."""
    lines: list[str] = []
    seen = threading.Event()
    proc = subprocess.Popen(
        argv,
        cwd=ctx.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_child_env(),
        start_new_session=True,  # its own process group, so a hung run can be ended whole
    )

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if pattern in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not seen.is_set() and proc.poll() is None and time.monotonic() < deadline:
        seen.wait(0.05)
    signalled = seen.is_set() and proc.poll() is None
    if signalled:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=120)  # longer than a scheduler's usual grace period
        except subprocess.TimeoutExpired:
            kill_group(proc)
            code = proc.returncode
            lines.append("gpu_check: still running 120 s after SIGTERM; killed\n")
    else:
        if proc.poll() is None:
            kill_group(proc)
            lines.append(f"gpu_check: no {pattern!r} within {timeout:.0f} s; killed\n")
        code = proc.wait()
    reader.join(timeout=10)
    text = "".join(lines)
    (ctx.workdir / f"{tag}.log").write_text(text)
    return code, text, signalled


def _main_argv(data_root: str, out: Path, *extra: str, workers: int = 0) -> list[str]:
    """main.py on the synthetic dataset: TSM+RNL ResNet-18, 4 frames, 32 px, 2 clips a batch."""
    return [
        sys.executable,
        str(REPO / "main.py"),
        *("--dataset", "synthetic", "--data_root", data_root, "--arch", "resnet18"),
        *("--pretrain", "scratch", "--shift", "--non_local", "--npb", "--num_segments", "4"),
        *("--input_size", "32", "--batch_size", "2", "--lr", "0.01", "--wd", "1e-4", "--gd", "20"),
        *("--lr_type", "cos", "--workers", str(workers), "--print-freq", "1"),
        *("--root_model", str(out / "ckpt"), "--root_log", str(out / "log"), *extra),
    ]


def _checkpoint(out: Path) -> tuple[Path, dict]:
    """The run's ckpt.pth.tar (loaded with weights_only), checked for non-finite weights."""
    found = sorted((out / "ckpt").glob("*/ckpt.pth.tar"))
    if len(found) != 1:
        raise CheckFailed(f"expected one ckpt.pth.tar under {out / 'ckpt'}, found {len(found)}")
    ckpt = load_checkpoint(found[0])
    bad = [
        k
        for k, t in ckpt["state_dict"].items()
        if t.is_floating_point() and not torch.isfinite(t).all()
    ]
    if bad:
        raise CheckFailed(f"{found[0]}: non-finite weights in {bad[:3]}")
    return found[0], ckpt


def _first_step(text: str) -> tuple[int, int] | None:
    """(epoch, iteration) of a run's first progress line ``Epoch: [e][i/n]``, both from 1."""
    found = re.search(r"Epoch: \[(\d+)\]\[(\d+)/\d+\]", text)
    return (int(found.group(1)), int(found.group(2))) if found else None


def _expect_resumed_at(text: str, ckpt: dict) -> list[int]:
    """The resumed run's first step is the one after the checkpoint's position."""
    want = (int(ckpt.get("epoch", 0)) + 1, int(ckpt.get("iteration", 0)) + 1)
    got = _first_step(text)
    if got != want:
        raise CheckFailed(
            f"--resume auto started at (epoch, iteration) {got}, expected {want}: "
            f"{_error_line(text)}"
        )
    return list(got)


FUSED_KERNELS = ("flash", "efficient", "cudnn")


def expect_runtime(ckpt: dict, world_size: int, amp: str = "off") -> dict:
    """The checkpoint's record of what ran (ops/engine/runtime_report.py) on CUDA: every rank on
    its own GPU with cudnn.benchmark on, and a fused SDPA kernel for every RNL attention shape in
    the run's dtype (math would materialise the P x P matrix). Returns figures."""
    runtime = ckpt.get("runtime") or {}
    ranks = runtime.get("ranks") or []
    problems = []
    if runtime.get("world_size") != world_size or len(ranks) != world_size:
        problems.append(f"world size {runtime.get('world_size')} with {len(ranks)} rank records")
    devices = [r.get("device", "") for r in ranks]
    if not all(d.startswith("cuda") for d in devices) or len(set(devices)) != len(devices):
        problems.append(f"rank devices {devices}")
    if not (runtime.get("cudnn_benchmark") and all(r.get("cudnn_benchmark") for r in ranks)):
        problems.append("cudnn.benchmark off in " + ", ".join(
            f"rank {r.get('rank')}" for r in ranks if not r.get("cudnn_benchmark")
        ))  # fmt: skip
    attention = runtime.get("attention") or []
    want = {"off": "float32", "bf16": "bfloat16", "fp16": "float16"}[amp]
    if not attention:
        problems.append(f"no attention kernel recorded ({runtime.get('attention_error', '')})")
    for a in attention:
        if a.get("kernel") not in FUSED_KERNELS or a.get("dtype") != want:
            problems.append(
                f"attention P={a.get('positions')} C'={a.get('head_dim')}: {a.get('kernel')} "
                f"in {a.get('dtype')}"
            )
    if problems:
        raise CheckFailed("runtime record: " + "; ".join(problems))
    return {"devices": devices, "attention": sorted({a["kernel"] for a in attention})}


def _expect_epoch(ckpt: dict, epoch: int, what: str) -> None:
    if ckpt.get("epoch") != epoch:
        raise CheckFailed(f"{what}: checkpoint at epoch {ckpt.get('epoch')}, expected {epoch}")


def _train_then_resume(
    ctx: Context, tag: str, flags: Callable[[], list[str]], workers: int, data: str | None = None
):
    """``--epochs 2 --stop_after_epochs 1``, then ``--resume auto`` to epoch 2."""
    out = ctx.workdir / tag
    data = data or ctx.data_root()
    t0 = time.perf_counter()
    _run(
        ctx,
        tag,
        _main_argv(
            data, out, *flags(), "--epochs", "2", "--stop_after_epochs", "1", workers=workers
        ),
        timeout=600,
    )
    first = time.perf_counter() - t0
    _, stopped = _checkpoint(out)
    _expect_epoch(stopped, 1, "after --stop_after_epochs 1")
    t0 = time.perf_counter()
    text = _run(
        ctx,
        f"{tag}_resume",
        _main_argv(data, out, *flags(), "--epochs", "2", "--resume", "auto", workers=workers),
        timeout=600,
    )
    _expect_resumed_at(text, stopped)
    path, ckpt = _checkpoint(out)
    _expect_epoch(ckpt, 2, "after --resume auto")
    figures = {"first_run_s": round(first, 1), "resumed_run_s": round(time.perf_counter() - t0, 1)}
    figures["world_size"] = ckpt.get("world_size")
    return path, ckpt, figures


def check_main_cpu(ctx: Context) -> dict:
    path, _, figures = _train_then_resume(ctx, "main_cpu", lambda: [], workers=0)
    ctx.artifacts["checkpoint"] = str(path.parent / "ckpt.best.pth.tar")
    return figures


def check_main_cuda(ctx: Context, tag: str, flags: list[str]) -> dict:
    out = ctx.workdir / tag
    t0 = time.perf_counter()
    text = _run(
        ctx, tag, _main_argv(ctx.data_root(), out, *flags, "--epochs", "1", workers=2), timeout=420
    )
    if "--compile: torch.compile failed" in text:
        raise CheckFailed(f"fell back to eager mode: {_error_line(text)}")
    _, ckpt = _checkpoint(out)
    _expect_epoch(ckpt, 1, tag)
    figures = {"seconds": round(time.perf_counter() - t0, 1)}
    amp = flags[flags.index("--amp") + 1] if "--amp" in flags else "off"
    figures["runtime"] = expect_runtime(ckpt, world_size=1, amp=amp)
    if "--amp" in flags and flags[flags.index("--amp") + 1] == "fp16":
        scaler = ckpt.get("scaler") or {}
        if "scale" not in scaler:
            raise CheckFailed("--amp fp16: the checkpoint has no gradient scaler state")
        figures["grad_scale"] = float(scaler["scale"])
    return figures


def check_spawn_nccl(ctx: Context) -> dict:
    def flags() -> list[str]:
        return [
            *("--multiprocessing-distributed", "--available_gpus", "0", "--dist-backend", "nccl"),
            *("--world-size", "1", "--rank", "0", "--dist-url", f"tcp://localhost:{free_port()}"),
        ]

    _, ckpt, figures = _train_then_resume(ctx, "spawn_nccl", flags, workers=2)
    if ckpt.get("world_size") != 1:
        raise CheckFailed(f"world size {ckpt.get('world_size')} in the checkpoint, expected 1")
    figures["runtime"] = expect_runtime(ckpt, world_size=1)
    return figures


# --------------------------------------------------------------------------------------------
# One GPU: --device_aug (nvjpeg), EMA and precise BN
# --------------------------------------------------------------------------------------------


def check_nvjpeg(ctx: Context) -> dict:
    """The device path's batch decode (nvjpeg) against the same call on the CPU (libjpeg), on
    the synthetic dataset's JPEG frames, then a --device_aug training epoch."""
    data = ctx.data_root()
    jpegs = sorted(Path(data).glob("synthetic/frames/*/*.jpg"))[:16]
    frames = [EncodedFrame.from_file(str(p)) for p in jpegs]
    clip = EncodedClip(frames, list(range(len(frames))), [((0, 0, 1, 1), False)], (1, 1))
    batch = EncodedBatch([clip])
    cpu = [t.float() for t in batch.decode("cpu")[0]]
    gpu = [t.float().cpu() for t in batch.decode("cuda")[0]]
    diff = torch.cat([(a - b).abs().flatten() for a, b in zip(cpu, gpu)])
    figures = {"frames": len(frames), "mean_abs_grey": _sig(float(diff.mean()))}
    figures["max_abs_grey"] = float(diff.max())
    if [t.shape for t in cpu] != [t.shape for t in gpu] or not figures["mean_abs_grey"] <= 2.0:
        raise CheckFailed(f"nvjpeg decodes other pictures than the CPU: {figures}", figures)
    figures.update(check_main_cuda(ctx, "main_device_aug", ["--device_aug"]))
    return figures


def check_ema_precise_bn(ctx: Context) -> dict:
    flags = ["--ema", "0.99", "--precise_bn", "2"]
    path, ckpt, figures = _train_then_resume(ctx, "ema_pbn", lambda: flags, workers=2)
    if "ema" not in ckpt:
        raise CheckFailed("--ema: the checkpoint has no 'ema' state")
    ema_path = path.parent / "ckpt.ema.pth.tar"
    if not ema_path.is_file():
        raise CheckFailed(f"--ema: no {ema_path.name} next to {path.name}")
    text = (ctx.workdir / "ema_pbn_resume.log").read_text(errors="replace")
    if "EMA weights: Prec@1" not in text or (ckpt.get("args") or {}).get("precise_bn") != 2:
        raise CheckFailed("the resumed run validated no EMA weights, or not with --precise_bn 2")
    ema = load_checkpoint(ema_path)
    if not all(
        torch.isfinite(t).all() for t in ema["state_dict"].values() if t.is_floating_point()
    ):
        raise CheckFailed(f"{ema_path.name}: non-finite weights")
    figures["runtime"] = expect_runtime(ckpt, world_size=1)
    return figures


# --------------------------------------------------------------------------------------------
# Two or more GPUs: NCCL, SyncBN with recompute, skipped micro-steps, compile + DDP, DataParallel
# --------------------------------------------------------------------------------------------


def _ddp_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A TSM+RNL ResNet-18 (4 frames, 32 px, recomputed backward, no dropout: deterministic) and
    4 clips with labels, the same in every process."""
    torch.manual_seed(0)
    model = TSN(4, 4, "RGB", base_model="resnet18", pretrain="scratch", is_shift=True,
                non_local=True, dropout=0.0, partial_bn=False, input_size=32, recompute=True,
                print_spec=False)  # fmt: skip
    with torch.no_grad():  # non-local blocks that are not the zero-init identity
        for name, p in model.named_parameters():
            if name.endswith("W.1.weight"):
                p.fill_(0.7)
    g = torch.Generator().manual_seed(1)
    clips = torch.randn(4, 4 * 3, 32, 32, generator=g)
    labels = torch.randint(0, 4, (4,), generator=g)
    return model.train(), clips, labels


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank: SyncBatchNorm + DDP (NCCL) over its share of the clips, one forward and
    backward; and ops.distributed.average_gradients on gradients rank + 1. Saves what it got."""
    torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{port}", world_size=world, rank=rank
    )
    try:
        device = torch.device("cuda", rank)
        model, clips, labels = _ddp_case()
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)  # as main.py does
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[rank])
        share = len(clips) // world
        x = clips[rank * share : (rank + 1) * share].to(device)
        y = labels[rank * share : (rank + 1) * share].to(device)
        with _exact_fp32():
            out = ddp(x)
            F.cross_entropy(out, y).backward()
        param = nn.Parameter(torch.zeros(5, device=device))
        param.grad = torch.full((5,), float(rank + 1), device=device)
        ctx = du.DistContext(True, rank, world, rank, world, device, "nccl")
        du.average_gradients([param], ctx)
        torch.save(
            {
                "out": out.detach().cpu(),
                "grads": {
                    n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None
                },
                "buffers": {n: b.cpu() for n, b in model.named_buffers()},
                "averaged": param.grad.cpu(),
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def compare_ddp(ranks: list[dict], reference: dict, tol: float = 1e-3) -> dict:
    """The ranks' results against one process on the whole batch: outputs (concatenated in rank
    order), gradients (DDP's average), running statistics (SyncBatchNorm's, updated once) and
    the averaged test gradient (the mean of 1..world). Raises CheckFailed; returns figures."""
    world = len(ranks)
    out = torch.cat([r["out"] for r in ranks])
    err_out = _rel_err(out, reference["out"])
    # all gradients as one vector: a tensor whose gradient is zero in exact arithmetic (a bias
    # before a train-mode BN) carries only rounding noise, which a per-tensor ratio magnifies
    names = sorted(reference["grads"])
    missing = [n for n in names if n not in ranks[0]["grads"]]
    err_grad = float("inf")
    if not missing:
        got = torch.cat([ranks[0]["grads"][n].flatten() for n in names])
        err_grad = _rel_err(got, torch.cat([reference["grads"][n].flatten() for n in names]))
    same = all(
        torch.equal(r["grads"][n], ranks[0]["grads"][n]) for r in ranks for n in ranks[0]["grads"]
    )
    stats = [n for n in reference["buffers"] if n.endswith(("running_mean", "running_var"))]
    err_stats = _rel_err(
        torch.cat([ranks[0]["buffers"][n].flatten() for n in stats]),
        torch.cat([reference["buffers"][n].flatten() for n in stats]),
    )
    counts = [n for n in reference["buffers"] if n.endswith("num_batches_tracked")]
    twice = [n for n in counts if not torch.equal(ranks[0]["buffers"][n], reference["buffers"][n])]
    mean = (world + 1) / 2
    averaged = all(torch.equal(r["averaged"], torch.full((5,), mean)) for r in ranks)
    figures = {"err_out": _sig(err_out), "err_grad": _sig(err_grad)}
    figures.update(err_running_stats=_sig(err_stats), grads_equal_on_ranks=same)
    problems = []
    if not err_out <= tol:
        problems.append(f"outputs differ by {err_out:.3g}")
    if missing or not err_grad <= tol:
        problems.append(f"gradients differ by {err_grad:.3g} (missing {missing[:3]})")
    if not same:
        problems.append("the ranks' averaged gradients differ")
    if not err_stats <= tol or twice:
        problems.append(f"running statistics differ by {err_stats:.3g}, counts {twice[:3]}")
    if not averaged:
        problems.append(f"average_gradients did not give {mean} on every rank")
    if problems:
        raise CheckFailed("; ".join(problems), figures)
    return figures


def check_ddp_syncbn(ctx: Context) -> dict:
    world = 2
    out_dir = ctx.workdir / "ddp_syncbn"
    out_dir.mkdir(exist_ok=True)
    procs = torch.multiprocessing.spawn(
        _ddp_worker, args=(world, free_port(), str(out_dir)), nprocs=world, join=False
    )
    deadline = time.monotonic() + 300
    while not procs.join(timeout=5):  # raises when a rank failed
        if time.monotonic() > deadline:
            for proc in procs.processes:
                proc.kill()
            raise CheckFailed("the 2 ranks did not finish within 300 s (a hung collective?)")
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(world)]
    model, clips, labels = _ddp_case()  # the reference: plain BatchNorm, the whole batch
    model = model.cuda(0)
    with _exact_fp32():
        out = model(clips.cuda(0))
        F.cross_entropy(out, labels.cuda(0)).backward()
    reference = {
        "out": out.detach().cpu(),
        "grads": {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None},
        "buffers": {n: b.cpu() for n, b in model.named_buffers()},
    }
    return compare_ddp(ranks, reference)


def skip_one_micro_step(root: str) -> str:
    """A dataset of 16 training videos where rank 1's second iteration (of 2 processes x 2 clips,
    main.py's order for epoch 1 at seed 0) draws an unreadable video: that batch is too small
    for the channel gate and is skipped on every rank, inside a --batch_multiplier 2 group whose
    first gradients (under no_sync) differ per rank. Returns the data root."""
    make_synthetic(root, num_videos_per_class=8, num_val_per_class=1, num_frames=8,
                   size=(40, 32), num_classes=2, seed=3)  # fmt: skip
    index = list(EpochSampler(16, num_replicas=2, rank=1, seed=0))[2]
    lines = (Path(root) / "synthetic" / "train_videofolder.txt").read_text().splitlines()
    for jpg in (Path(root) / "synthetic" / "frames" / lines[index].split()[0]).iterdir():
        jpg.write_bytes(b"not a jpeg")
    return root


def _spawn_two_gpus() -> list[str]:
    return [
        *("--multiprocessing-distributed", "--available_gpus", "0,1", "--dist-backend", "nccl"),
        *("--world-size", "1", "--rank", "0", "--dist-url", f"tcp://localhost:{free_port()}"),
        *("--batch_size", "4", "--batch_multiplier", "2"),  # 2 clips per GPU, groups of 2
    ]


def check_spawn_two_gpus(ctx: Context) -> dict:
    data = skip_one_micro_step(str(ctx.workdir / "data_skip"))
    _, ckpt, figures = _train_then_resume(ctx, "spawn_2gpu", _spawn_two_gpus, workers=2, data=data)
    checksums = ckpt.get("replica_checksums") or []
    if ckpt.get("world_size") != 2 or len(checksums) != 2 or len(set(checksums)) != 1:
        raise CheckFailed(f"world size {ckpt.get('world_size')}, replica checksums {checksums}")
    log = sorted((ctx.workdir / "spawn_2gpu" / "log").glob("*/log.csv"))
    with open(log[0]) as f:
        skipped = [row.split(",")[10] for row in f.read().split()[1:]]
    if skipped[:1] != ["1"]:
        raise CheckFailed(f"skipped videos per epoch {skipped}, expected 1 in epoch 1")
    figures["runtime"] = expect_runtime(ckpt, world_size=2)
    return figures


def check_compile_ddp(ctx: Context) -> dict:
    out = ctx.workdir / "compile_ddp"
    argv = _main_argv(ctx.data_root(), out, *_spawn_two_gpus(), "--compile", "--epochs", "1",
                      workers=2)  # fmt: skip
    text = _run(ctx, "compile_ddp", argv, timeout=600)
    if "--compile: torch.compile failed" in text:
        raise CheckFailed(f"fell back to eager mode: {_error_line(text)}")
    _, ckpt = _checkpoint(out)
    compiled = (ckpt.get("runtime") or {}).get("compile", "")
    checksums = ckpt.get("replica_checksums") or []
    if not compiled.startswith("on") or len(set(checksums)) != 1:
        raise CheckFailed(f"compile {compiled!r}, replica checksums {checksums}")
    return {"compile": compiled, "runtime": expect_runtime(ckpt, world_size=2)}


def check_test_models_dataparallel(ctx: Context) -> dict:
    if "fp32 scores" not in ctx.artifacts:
        raise CheckFailed("needs the CPU fp32 scores of the 'test_models.py cpu' check")
    scores = ctx.workdir / "scores_cuda_dp_fp32.npz"
    argv = _test_models_argv(ctx, scores, "--batch_size", "4", "-j", "2", "--gpus", "0", "1")
    _run(ctx, "test_models_cuda_dp", argv, timeout=300)
    return compare_scores(ctx.artifacts["fp32 scores"], scores, "tf32")


def check_torchrun_sigterm(ctx: Context) -> dict:
    nproc = 2 if torch.cuda.device_count() >= 2 else 1
    data = ctx.data_root("data_long", videos_per_class=16)  # 32 videos: 16 / nproc steps/epoch
    out = ctx.workdir / "torchrun"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launch += ["--nproc_per_node", str(nproc)]
    args = _main_argv(data, out, "--epochs", "3", "--batch_size", str(2 * nproc), workers=2)[1:]
    code, text, signalled = _run_and_signal(ctx, "torchrun", [*launch, *args], "Epoch: [2][2/", 300)
    figures: dict = {"nproc": nproc, "torchrun_exit_code": code}
    if not signalled:
        raise CheckFailed(f"never reached epoch 2: {_error_line(text)}", figures)
    said = re.search(r"stopped by SIGTERM.*saved", text)
    if not said:
        raise CheckFailed(f"no 'stopped by SIGTERM ... saved': {_error_line(text)}", figures)
    _, stopped = _checkpoint(out)
    figures["stopped_at"] = {"epoch": stopped.get("epoch"), "iteration": stopped.get("iteration")}
    text = _run(ctx, "torchrun_resume", [*launch, *args, "--resume", "auto"], timeout=300)
    figures["resumed_at"] = _expect_resumed_at(text, stopped)
    _, ckpt = _checkpoint(out)
    _expect_epoch(ckpt, 3, "after --resume auto")
    return figures


def _test_models_argv(ctx: Context, scores: Path, *extra: str) -> list[str]:
    checkpoint = ctx.artifacts.get("checkpoint")
    if not checkpoint or not os.path.isfile(checkpoint):
        raise CheckFailed("needs the checkpoint of the 'main.py cpu' check, which did not pass")
    return [
        sys.executable,
        str(REPO / "test_models.py"),
        *("synthetic", "--weights", checkpoint, "--test_segments", "4", "--test_crops", "3"),
        *("--data_root", ctx.data_root(), "--save_scores", str(scores), *extra),
    ]


def compare_scores(reference: Path, other: Path, dtype_name: str) -> dict:
    """Scores of the same videos in the same order, as close as ``dtype_name`` allows, and not
    identical to fp32 for a low-precision run (autocast did run)."""
    a, b = np.load(reference), np.load(other)
    if not (
        np.array_equal(a["indices"], b["indices"]) and np.array_equal(a["labels"], b["labels"])
    ):
        raise CheckFailed(f"{other.name}: other videos or labels than {reference.name}")
    err = _rel_err(torch.from_numpy(b["scores"]), torch.from_numpy(a["scores"]))
    figures = {"videos": int(len(a["indices"])), "err_scores": _sig(err)}
    figures["top1_agree"] = float(np.mean(a["scores"].argmax(1) == b["scores"].argmax(1)))
    if not err <= TOLERANCE[dtype_name]:
        raise CheckFailed(f"{dtype_name} scores differ from fp32 by {err:.3g}", figures)
    if dtype_name in ("fp16", "bf16") and err == 0.0:
        raise CheckFailed(f"{dtype_name} scores are identical to fp32: autocast did not run")
    return figures


def check_test_models_cpu(ctx: Context) -> dict:
    fp32, bf16 = ctx.workdir / "scores_cpu_fp32.npz", ctx.workdir / "scores_cpu_bf16.npz"
    common = ("--batch_size", "2", "-j", "0", "--device", "cpu")
    _run(ctx, "test_models_cpu_fp32", _test_models_argv(ctx, fp32, *common), timeout=300)
    _run(
        ctx,
        "test_models_cpu_bf16",
        _test_models_argv(ctx, bf16, *common, "--amp", "bf16"),
        timeout=300,
    )
    figures = compare_scores(fp32, bf16, "bf16")
    ctx.artifacts["fp32 scores"] = fp32
    return figures


def check_test_models_cuda(ctx: Context) -> dict:
    if "fp32 scores" not in ctx.artifacts:
        raise CheckFailed("needs the CPU fp32 scores of the 'test_models.py cpu' check")
    scores = ctx.workdir / "scores_cuda_bf16.npz"
    argv = _test_models_argv(ctx, scores, "--batch_size", "4", "-j", "2", "--amp", "bf16")
    _run(ctx, "test_models_cuda_bf16", argv, timeout=300)
    figures = compare_scores(ctx.artifacts["fp32 scores"], scores, "bf16")
    figures["gpus"] = torch.cuda.device_count()
    return figures


# --------------------------------------------------------------------------------------------
# The list of checks and the entry point
# --------------------------------------------------------------------------------------------


def all_checks() -> list[Check]:
    """Every check in the order it runs: the CPU ones first (the CUDA test_models.py check
    compares with the CPU scores), then the CUDA ones."""
    checks = []
    for device in ("cpu", "cuda"):
        cuda = device == "cuda"
        for layer in ATTENTION_LAYERS:
            for dt in DTYPES:
                run = partial(check_sdpa, device=device, layer=layer, dtype_name=dt)
                checks.append(Check(f"sdpa {device} {layer} {dt}", cuda, run))
        for layer in REGION_LAYERS:
            run = partial(check_region_conv, device=device, layer=layer)
            checks.append(Check(f"region conv {device} {layer}", cuda, run))
        checks.append(Check(f"shift+conv {device}", cuda, partial(check_shift_conv, device=device)))
        if not cuda:
            checks.append(Check("main.py cpu, then --resume auto", False, check_main_cpu))
            name = "test_models.py cpu 3 crops, fp32 and --amp bf16"
            checks.append(Check(name, False, check_test_models_cpu))
    checks.append(Check("dataparallel autocast dtype", True, check_dataparallel_autocast))
    for name, tag, flags in (
        (
            "main.py cuda --amp bf16 --channels_last",
            "main_bf16",
            ["--amp", "bf16", "--channels_last"],
        ),
        ("main.py cuda --amp fp16", "main_fp16", ["--amp", "fp16"]),
        ("main.py cuda --compile", "main_compile", ["--compile"]),
    ):
        checks.append(Check(name, True, partial(check_main_cuda, tag=tag, flags=flags)))
    checks += [
        Check("main.py spawn nccl world size 1, then --resume auto", True, check_spawn_nccl),
        Check("torchrun SIGTERM mid-epoch, then --resume auto", True, check_torchrun_sigterm),
        Check("test_models.py cuda 3 crops --amp bf16", True, check_test_models_cuda),
        Check("--device_aug nvjpeg decode and main.py cuda --device_aug", True, check_nvjpeg),
        Check("main.py cuda --ema --precise_bn, then --resume auto", True, check_ema_precise_bn),
        Check(
            "ddp nccl 2 GPUs: gradient averaging, SyncBN with recompute",
            True,
            check_ddp_syncbn,
            gpus=2,
        ),  # fmt: skip
        Check(
            "main.py spawn nccl 2 GPUs, a skipped micro-step, then --resume auto",
            True,
            check_spawn_two_gpus,
            gpus=2,
        ),  # fmt: skip
        Check("main.py spawn nccl 2 GPUs --compile", True, check_compile_ddp, gpus=2),
        Check(
            "test_models.py --gpus 0 1 DataParallel fp32",
            True,
            check_test_models_dataparallel,
            gpus=2,
        ),  # fmt: skip
    ]
    return checks


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or platform.platform()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/gpu_check.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--cpu-only",
        "--quick",
        action="store_true",
        dest="cpu_only",
        help="the CPU checks only, the CUDA ones reported as skipped (CI); without it, a "
        "machine without CUDA is refused",
    )
    p.add_argument("--out", default=str(REPO / "bench_out" / "gpu_check.json"), help="report")
    p.add_argument("--only", default=None, help="run only the checks whose name contains this text")
    p.add_argument("--keep", action="store_true", help="keep the work folder even on success")
    args = p.parse_args(argv)
    setup_logging()
    checks = [c for c in all_checks() if args.only is None or args.only in c.name]
    if not args.cpu_only and not torch.cuda.is_available() and any(c.needs_cuda for c in checks):
        # exit 0 with "0 passed, 13 skipped" read as a GPU check that passed
        print(
            "gpu_check.py: error: the GPU checks need CUDA and no CUDA device is visible here: "
            "run on a machine with a GPU, or pass --cpu-only for the CPU checks (CI)",
            file=sys.stderr,
        )
        return 2
    cuda = torch.cuda.is_available() and not args.cpu_only
    skip_reason = "needs CUDA; --cpu-only (--quick) runs the CPU checks only"
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    gpus = torch.cuda.device_count() if cuda else 0
    ctx = Context(cuda=cuda, workdir=workdir, gpus=gpus)
    logger.info(
        "%d checks (%s); work folder %s",
        len(checks),
        "CUDA: "
        + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        if cuda
        else f"CUDA checks skipped: {skip_reason}",
        workdir,
    )
    start = time.perf_counter()
    results = run_checks(checks, ctx, skip_reason)
    summary = {s: sum(r["status"] == s for r in results) for s in ("pass", "fail", "skipped")}
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "torch": torch.__version__,
        "cuda": {
            "available": torch.cuda.is_available(),
            "version": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        },
        "quick": args.cpu_only,  # kept under its first name for readers of older reports
        "cpu_only": args.cpu_only,
        "seconds": round(time.perf_counter() - start, 1),
        "summary": summary,
        "checks": results,
    }
    if summary["fail"] or args.keep:
        report["workdir"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    logger.info(
        "%d passed, %d failed, %d skipped in %.0f s; report %s",
        summary["pass"],
        summary["fail"],
        summary["skipped"],
        report["seconds"],
        out,
    )
    return 1 if summary["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
