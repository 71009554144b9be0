"""Distributed set-up for main.py: who am I, how many of us, which device, how to talk.

Three ways to launch, found without editing code (torchvision's `init_distributed_mode` style):
- `--multiprocessing-distributed` (the published commands): this process spawns one worker per
  GPU in `--available_gpus` (or `--cpu_procs` workers on a machine without GPUs) with
  torch.multiprocessing; `--world-size` counts nodes and `--rank` is this node's rank.
- `torchrun`: RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE in the environment, `env://`.
- SLURM (`srun`): SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (+ MASTER_ADDR / MASTER_PORT or
  `--dist-url`); with `--multiprocessing-distributed` one SLURM task per node spawns the workers.
NCCL on GPUs, gloo on CPU. Every collective has a timeout (`--dist_timeout`), so a rank that dies
or hangs makes the others stop with `RankFailureError` instead of waiting forever.

`--batch_size` is per node (as published): each of a node's `local_world_size` processes gets
`batch_size // local_world_size` clips.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

logger = logging.getLogger(__name__)


class DistributedSetupError(Exception):
    """Launch settings that cannot work; the message says what to change (one line)."""


class RankFailureError(Exception):
    """Another rank died or stopped answering; raised on the survivors (one-line message)."""


@dataclass
class LaunchPlan:
    """How this invocation runs, decided before any process group exists (also for --dry_run).

    mode: 'single' (one process), 'spawn' (this process spawns `nprocs` workers), or 'env'
    (this process is one worker started by torchrun / SLURM / by hand with --world-size).
    """

    mode: str
    nprocs: int  # processes this invocation runs on this node
    nodes: int
    world_size: int
    node_rank: int
    backend: str | None
    dist_url: str | None
    use_cuda: bool
    local_world_size: int  # processes per node sharing --batch_size
    gpu_ids: list[int] | None = None  # --available_gpus
    gpu: int | None = None  # --gpu: the one device of a single-process run


@dataclass
class DistContext:
    """What one running worker knows about itself."""

    distributed: bool
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_tasks_per_node(env: dict[str, str]) -> int | None:
    # SLURM_NTASKS_PER_NODE is set only with --ntasks-per-node; SLURM_TASKS_PER_NODE is like "4(x2)".
    for key in ("SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if key in env:
            head = env[key].split(",")[0].split("(")[0]
            if head.isdigit():
                return int(head)
    return None


def plan_launch(
    *,
    multiprocessing_distributed: bool,
    world_size: int,
    rank: int,
    dist_url: str | None,
    dist_backend: str | None,
    available_gpus: str | None,
    cpu_procs: int | None,
    num_visible_gpus: int,
    env: dict[str, str] | None = None,
) -> LaunchPlan:
    """Decide the launch mode from the flags and the environment, without touching any device.

    `num_visible_gpus` is what the machine has (the caller passes `torch.cuda.device_count()`,
    or the number of `--available_gpus` ids for a dry run on a machine without them).
    """
    env = dict(os.environ) if env is None else env
    gpu_ids = None
    if available_gpus is not None:
        gpu_ids = [int(s) for s in available_gpus.split(",") if s.strip()]
    backend = dist_backend
    if backend is not None and backend not in ("nccl", "gloo"):
        raise DistributedSetupError(f"--dist-backend must be nccl or gloo, got {backend!r}")

    torchrun = all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    slurm = "SLURM_PROCID" in env and "SLURM_NTASKS" in env and not torchrun

    if multiprocessing_distributed:
        if num_visible_gpus > 0:
            nprocs, use_cuda = (len(gpu_ids) if gpu_ids else num_visible_gpus), True
        elif cpu_procs:
            nprocs, use_cuda = cpu_procs, False
        else:
            raise DistributedSetupError(
                "--multiprocessing-distributed found no GPU on this machine: pass --cpu_procs N "
                "to spawn N CPU processes (gloo), or drop --multiprocessing-distributed"
            )
        nodes, node_rank = max(world_size, 1), max(rank, 0)
        if slurm and world_size == -1:
            nodes, node_rank = int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"])
        if nodes > 1 and (dist_url is None or dist_url.startswith("tcp://localhost")):
            if dist_url is None and "MASTER_ADDR" in env and "MASTER_PORT" in env:
                dist_url = "env://"
            elif dist_url is None:
                raise DistributedSetupError(
                    f"{nodes} nodes need a rendezvous address reachable from all of them: "
                    "pass --dist-url tcp://<node0 host>:<port> (or set MASTER_ADDR/MASTER_PORT)"
                )
        if backend is None:
            backend = "nccl" if use_cuda else "gloo"
        return LaunchPlan(
            mode="spawn",
            nprocs=nprocs,
            nodes=nodes,
            world_size=nodes * nprocs,
            node_rank=node_rank,
            backend=backend,
            dist_url=dist_url,
            use_cuda=use_cuda,
            local_world_size=nprocs,
            gpu_ids=gpu_ids,
        )

    use_cuda = num_visible_gpus > 0
    if torchrun or slurm:
        if torchrun:
            ws = int(env["WORLD_SIZE"])
            local_ws = int(env.get("LOCAL_WORLD_SIZE", min(ws, max(num_visible_gpus, 1))))
            node_rank = int(env.get("GROUP_RANK", int(env["RANK"]) // max(local_ws, 1)))
        else:
            ws = int(env["SLURM_NTASKS"])
            local_ws = _slurm_tasks_per_node(env) or min(ws, max(num_visible_gpus, 1))
            node_rank = int(env.get("SLURM_NODEID", int(env["SLURM_PROCID"]) // local_ws))
        if ws > 1:
            if dist_url is None:
                if slurm and not ("MASTER_ADDR" in env and "MASTER_PORT" in env):
                    raise DistributedSetupError(
                        "under SLURM set MASTER_ADDR and MASTER_PORT (e.g. the first host of "
                        "$SLURM_JOB_NODELIST and a free port) or pass --dist-url tcp://host:port"
                    )
                dist_url = "env://"
            return LaunchPlan(
                mode="env",
                nprocs=1,
                nodes=max(ws // max(local_ws, 1), 1),
                world_size=ws,
                node_rank=node_rank,
                backend=backend or ("nccl" if use_cuda else "gloo"),
                dist_url=dist_url,
                use_cuda=use_cuda,
                local_world_size=local_ws,
                gpu_ids=gpu_ids,
            )

    if world_size > 1:
        # The published code's non-spawn branch: one process per node, ranks given by hand.
        if rank < 0 or dist_url is None:
            raise DistributedSetupError(
                f"--world-size {world_size} without --multiprocessing-distributed needs --rank "
                "and --dist-url for this process (or launch with torchrun)"
            )
        return LaunchPlan(
            mode="env",
            nprocs=1,
            nodes=world_size,
            world_size=world_size,
            node_rank=rank,
            backend=backend or ("nccl" if use_cuda else "gloo"),
            dist_url=dist_url,
            use_cuda=use_cuda,
            local_world_size=1,
            gpu_ids=gpu_ids,
        )

    return LaunchPlan(
        mode="single",
        nprocs=1,
        nodes=1,
        world_size=1,
        node_rank=0,
        backend=None,
        dist_url=None,
        use_cuda=use_cuda,
        local_world_size=1,
        gpu_ids=gpu_ids,
    )


def per_process_batch(batch_size: int, local_world_size: int) -> int:
    """Clips per process per iteration: the node's --batch_size split over its processes."""
    if batch_size < local_world_size:
        raise DistributedSetupError(
            f"--batch_size {batch_size} is per node and smaller than its {local_world_size} "
            f"processes: use --batch_size >= {local_world_size}"
        )
    if batch_size % local_world_size:
        logger.warning(
            "--batch_size %d is not a multiple of the %d processes per node: each gets %d",
            batch_size,
            local_world_size,
            batch_size // local_world_size,
        )
    return batch_size // local_world_size


def init_worker(plan: LaunchPlan, local_rank: int, timeout_minutes: float) -> DistContext:
    """Join the process group (when distributed) and pick this worker's device.

    `local_rank` is the spawn index for mode 'spawn', and read from the environment for 'env'.
    """
    if plan.mode == "single":
        device = torch.device("cuda", plan.gpu or 0) if plan.use_cuda else torch.device("cpu")
        if plan.use_cuda:
            torch.cuda.set_device(device)
        return DistContext(False, 0, 1, 0, 1, device, None)

    env = os.environ
    if plan.mode == "spawn":
        rank = plan.node_rank * plan.nprocs + local_rank
    elif "RANK" in env and "WORLD_SIZE" in env:
        rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in env:
        rank, local_rank = int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0))
    else:  # one process per node, --rank given by hand
        rank, local_rank = plan.node_rank, 0

    if plan.backend == "nccl" and not torch.cuda.is_available():
        raise DistributedSetupError(
            "--dist-backend nccl needs GPUs and none is visible: use --dist-backend gloo on CPU"
        )
    if plan.use_cuda:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if plan.dist_url == "env://" and "MASTER_ADDR" not in env and "SLURM_PROCID" in env:
        raise DistributedSetupError("set MASTER_ADDR and MASTER_PORT for env:// under SLURM")
    dist.init_process_group(
        backend=plan.backend,
        init_method=plan.dist_url,
        world_size=plan.world_size,
        rank=rank,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    return DistContext(
        True, rank, plan.world_size, local_rank, plan.local_world_size, device, plan.backend
    )


def cleanup(ctx: DistContext) -> None:
    """Leave the process group (normal exit only: after a rank failure, exit the process)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def is_collective_failure(exc: BaseException) -> bool:
    """True for the errors torch raises when a peer rank died or a collective timed out."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    markers = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out")
    markers += ("NCCL", "gloo", "Broken pipe", "Socket Timeout")
    return isinstance(exc, RuntimeError) and any(m in text for m in markers)


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a small float64 vector over ranks (identity when not distributed)."""
    if not ctx.distributed:
        return values
    buf = values.to(ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(buf)
    return buf.cpu()


def all_gather_objects(obj: object, ctx: DistContext) -> list:
    """Every rank's `obj`, in rank order (a one-element list when not distributed)."""
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, ctx: DistContext, src: int = 0) -> object:
    """Rank `src`'s `obj` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def spawn(
    fn: Callable[..., None], nprocs: int, args: tuple, *, forward_signals: bool = True
) -> None:
    """Run `fn(local_rank, *args)` in `nprocs` fresh processes and wait for all of them.

    SIGTERM / SIGINT sent to this (parent) process are forwarded to the workers, so a cluster's
    preemption signal reaches the training loop, which saves a checkpoint and exits. If a worker
    fails, the others are terminated and DistributedSetupError / RankFailureError is raised here
    with a one-line message (the worker has already logged its own error).
    """
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    previous = {}

    def forward(signum, _frame):
        logger.warning("received signal %d: forwarding it to the %d workers", signum, nprocs)
        for p in ctx.processes:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)

    if forward_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, forward)
    try:
        while not ctx.join():
            pass
    except mp.ProcessExitedException as exc:
        if exc.exit_code < 0:
            how = f"was killed by signal {-exc.exit_code} ({signal.Signals(-exc.exit_code).name})"
        else:
            how = f"exited with code {exc.exit_code} (its log line above says why)"
        raise RankFailureError(
            f"worker {exc.error_index} {how}; the other workers were stopped"
        ) from None
    except mp.ProcessRaisedException as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise RankFailureError(f"worker {exc.error_index} failed: {last}") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
