"""What actually runs: the start-up report of main.py (rank 0 logs it once; every checkpoint
stores it as ``runtime``).

Flags say what was asked for; this says what the processes really got: the launcher and
backend, the world size and how it is spread over nodes, each rank's device (and whether
``cudnn.benchmark`` is on in that process: spawned workers start without the parent's setting),
AMP, channels-last, whether ``--compile`` is compiling or fell back to eager mode, the NCCL error
handling, and which scaled-dot-product-attention kernel the non-local blocks run at the training
input size and dtype. That last one is probed once per distinct attention shape: the model is
traced on the meta device to collect the shapes (nothing is computed), then
``ops.attention.sdpa_kernel_used`` asks which kernel runs them on this device. On CUDA, 'math'
means the ``P x P`` matrix is materialised, which is warned about.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
from collections import Counter
from typing import TYPE_CHECKING

import torch
from torch import nn

from ops import distributed as du
from ops import self_attention
from ops.attention import record_attention_shapes, sdpa_kernel_used

if TYPE_CHECKING:
    from ops.engine.config import LoopConfig

logger = logging.getLogger(__name__)

AMP_DTYPES = {"off": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _this_rank(ctx: du.DistContext) -> dict:
    device = ctx.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "rank": ctx.rank,
        "host": socket.gethostname(),
        "device": str(device),
        "device_name": name,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }


def attention_kernels(
    model: nn.Module, amp: str, device: torch.device, compiled: bool = False
) -> list[dict]:
    """For each distinct fused-attention shape of `model` on one training clip: positions P,
    source positions, head dimension C', dtype, how many blocks have it, the SDPA kernel that
    runs it on `device` (empty for a model without fused attention), and its backward:
    'symmetric' where the queries are the keys and ``ops/self_attention.py`` takes the backward
    (CPU, float32, eager), else 'kernel' (the kernel's own)."""
    channels = (3 if model.modality == "RGB" else 2) * model.new_length
    size = model.input_size
    clip = torch.empty(1, model.num_segments * channels, size, size, device="meta")
    shadow = copy.deepcopy(model).to("meta").eval()  # same shapes, no memory, no computation
    with torch.no_grad(), record_attention_shapes() as shapes:
        shadow(clip)
    dtype = AMP_DTYPES[amp]
    found = []
    for (q, k, v, queries_are_keys), count in Counter(shapes).items():
        kernel = sdpa_kernel_used(q, k, v, dtype, device, training=True)
        symmetric = not compiled and self_attention.applies_to(
            queries_are_keys, device.type, dtype, q[3], v[3]
        )
        found.append(
            {
                "positions": q[2],
                "source_positions": k[2],
                "head_dim": q[3],
                "dtype": str(dtype).replace("torch.", ""),
                "blocks": count,
                "kernel": kernel,
                "backward": "symmetric" if symmetric else "kernel",
            }
        )
    return found


def runs_compiled(train_model: nn.Module, loop: LoopConfig) -> bool:
    """Whether the training step runs compiled: asked for and not fallen back to eager mode."""
    return bool(loop.compile) and not getattr(train_model, "failure", None)


def compile_status(train_model: nn.Module, loop: LoopConfig) -> str:
    """'off', 'on (<backend>)', or why it fell back to eager mode."""
    if not loop.compile:
        return "off"
    if not runs_compiled(train_model, loop):
        return f"fell back to eager mode ({train_model.failure})"
    return f"on ({loop.compile_backend})"


def runtime_report(
    model: nn.Module,
    train_model: nn.Module,
    loop: LoopConfig,
    plan: du.LaunchPlan,
    ctx: du.DistContext,
) -> dict:
    """What this run really uses (every rank calls this; the probe runs on rank 0 only)."""
    ranks = du.all_gather_objects(_this_rank(ctx), ctx)
    report = {
        "launch": plan.mode if plan.mode != "env" else plan.launcher,
        "backend": ctx.backend or "none",
        "world_size": ctx.world_size,
        "local_world_size": ctx.local_world_size,
        "nodes": plan.nodes,
        "ranks": ranks,
        "cudnn_benchmark": all(r["cudnn_benchmark"] for r in ranks),
        "amp": loop.amp,
        "channels_last": bool(loop.channels_last),
        "compile": compile_status(train_model, loop),
        "nccl_async_error_handling": (
            os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING") if ctx.backend == "nccl" else None
        ),
        "torch": str(torch.__version__),
        "attention": [],
    }
    if ctx.is_main:
        try:
            report["attention"] = attention_kernels(
                model, loop.amp, ctx.device, runs_compiled(train_model, loop)
            )
        except Exception as exc:  # a module without meta support: say so, train anyway
            report["attention_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        for line in report_lines(report):
            logger.info(line)
        if ctx.device.type == "cuda" and any(a["kernel"] == "math" for a in report["attention"]):
            logger.warning(
                "fused attention falls back to the math kernel on this GPU for some blocks "
                "(see 'runtime: attention' above): their P x P matrix is materialised"
            )
    return report


def report_lines(report: dict) -> list[str]:
    """The report as the log lines rank 0 writes at start-up."""
    devices = ", ".join(
        f"rank {r['rank']} {r['device']}"
        + (f" ({r['device_name']})" if r["device_name"] != "cpu" else "")
        + f" on {r['host']}"
        for r in report["ranks"]
    )
    lines = [
        f"runtime: launch {report['launch']}, backend {report['backend']}, world size "
        f"{report['world_size']} ({report['local_world_size']} per node, {report['nodes']} "
        f"node(s)); cudnn.benchmark {'on' if report['cudnn_benchmark'] else 'OFF'} in every rank",
        f"runtime: devices: {devices}",
        f"runtime: amp {report['amp']}, channels_last {report['channels_last']}, compile "
        f"{report['compile']}"
        + (
            f", TORCH_NCCL_ASYNC_ERROR_HANDLING={report['nccl_async_error_handling']}"
            if report["nccl_async_error_handling"] is not None
            else ""
        ),
    ]
    for a in report["attention"]:
        lines.append(
            f"runtime: attention P={a['positions']} x {a['source_positions']}, C'={a['head_dim']}, "
            f"{a['dtype']} ({a['blocks']} block(s)): SDPA kernel {a['kernel']}"
            + (
                ", backward symmetric (queries are keys)"
                if a.get("backward") == "symmetric"
                else ""
            )
        )
    if "attention_error" in report:
        lines.append(f"runtime: attention kernels not probed ({report['attention_error']})")
    return lines
