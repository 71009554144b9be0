"""Distributed set-up for main.py: who am I, how many of us, which device, how to talk.

Three ways to launch, found without editing code (torchvision's `init_distributed_mode` style):
- `--multiprocessing-distributed` (the published commands): this process spawns one worker per
  GPU in `--available_gpus` (or `--cpu_procs` workers on a machine without GPUs) with
  torch.multiprocessing; `--world-size` counts nodes and `--rank` is this node's rank.
- `torchrun`: RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE in the environment, `env://`.
- SLURM (`srun`): SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID / SLURM_NODEID (+ MASTER_ADDR
  / MASTER_PORT or a reachable `--dist-url`); with `--multiprocessing-distributed` and one SLURM task
  per node, each task spawns its node's workers. Only the tasks of an srun job step are ranks
  (`slurm_step_tasks`): a batch or salloc shell also has SLURM_PROCID=0 and the allocation's
  SLURM_NTASKS, and is one process whose flags decide the launch (with a warning).
The environment wins: under torchrun, or SLURM with more than one task, the published spawn
flags (`--multiprocessing-distributed`, `--world-size`, `--rank`, a localhost `--dist-url`) are
overridden with one warning (rank 0's) that names them, so `torchrun ... main.py <published
flags>` and `srun python main.py <published flags>` run as the launcher says. Settings that cannot
work (a localhost rendezvous across nodes or between hand-ranked processes, which are one per
node, or a localhost MASTER_ADDR across nodes; more processes on a node than GPUs, more
`--available_gpus` than the scheduler made visible) stop at once with `DistributedSetupError`, one
line that says what to change.

NCCL on GPUs, gloo on CPU. Every collective has a timeout (`--dist_timeout`): with gloo a rank
that dies or hangs makes the others stop with `RankFailureError`; with NCCL the watchdog ends
the process after the timeout (`TORCH_NCCL_ASYNC_ERROR_HANDLING`, set to 3 unless given).

`--batch_size` is per node (as published): each of a node's `local_world_size` processes gets
`batch_size // local_world_size` clips.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import socket
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from urllib.parse import urlparse

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
    warning: str | None = None  # launch flags the environment overrode (logged once, by rank 0)
    launcher: str = "flags"  # who gave the ranks: 'flags', 'torchrun' or 'slurm'


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


def _port_is_free(port: int) -> bool:
    # The rendezvous store listens on every interface, so test that (no SO_REUSEADDR: a port
    # that another process listens on must count as busy).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def is_local_url(url: str | None) -> bool:
    """True for a rendezvous URL on this machine only (tcp://localhost:6666, 127.x.x.x)."""
    if not url or "://" not in url:
        return False
    host = urlparse(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def local_rendezvous(url: str | None) -> str:
    """The rendezvous of a single-node spawn: `url` if its port is free, else a free port.

    Two runs on one node given the published `tcp://localhost:6666` would otherwise fight over
    the port; nobody outside this node needs to know it, so another one is as good (logged).
    """
    if url is None:
        return f"tcp://127.0.0.1:{free_port()}"
    if url.startswith("tcp://") and is_local_url(url):
        port = urlparse(url).port
        if port is None or not _port_is_free(port):
            new = f"tcp://127.0.0.1:{free_port()}"
            logger.info("--dist-url %s: port busy (another run on this node?), using %s", url, new)
            return new
    return url


def choose_gpus(available_gpus: str | None, env: MutableMapping[str, str]) -> str | None:
    """Apply `--available_gpus` (before CUDA starts): set CUDA_VISIBLE_DEVICES to it, unless a
    scheduler (or the user) has set CUDA_VISIBLE_DEVICES already. Then the scheduler's choice is
    kept, all its GPUs are used and --available_gpus is ignored with a warning; naming more GPUs
    than it made visible is an error. Returns the ids the launch plan should use (None: all
    visible)."""
    if available_gpus is None:
        return None
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        env["CUDA_VISIBLE_DEVICES"] = available_gpus
        return available_gpus
    wanted = [s for s in available_gpus.split(",") if s.strip()]
    have = [s for s in visible.split(",") if s.strip()]
    if len(wanted) > len(have):
        raise DistributedSetupError(
            f"--available_gpus {available_gpus} names {len(wanted)} GPUs but "
            f"CUDA_VISIBLE_DEVICES={visible} (set by the scheduler or the environment) makes "
            f"{len(have)} visible: drop --available_gpus, or ask the scheduler for more GPUs"
        )
    if wanted != have:
        logger.warning(
            "--available_gpus %s ignored: CUDA_VISIBLE_DEVICES=%s was already set (by the "
            "scheduler or the environment) and is kept; using its %d GPU(s)",
            available_gpus,
            visible,
            len(have),
        )
    return None


def _env_int(env: dict[str, str], key: str) -> int | None:
    if key not in env:
        return None
    try:
        return int(env[key])
    except ValueError:
        raise DistributedSetupError(
            f"{key}={env[key]!r} in the environment is not a number"
        ) from None


# Job step ids that are not srun's (slurm.h): the batch script's (0xfffffffb since Slurm 20.11,
# 0xfffffffe before), the extern step's (0xfffffffc), the pending step's (0xfffffffd) and salloc's
# interactive step's (0xfffffffa); srun numbers its steps from 0 up to SLURM_MAX_NORMAL_STEP_ID.
SLURM_MAX_NORMAL_STEP_ID = 0xFFFFFFF0


def slurm_step_tasks(env: MutableMapping[str, str]) -> int | None:
    """The number of tasks of the srun job step this process is one task of; None when it is
    not a task of one (no SLURM, or a batch / salloc shell).

    The rule: srun gives the tasks of a step SLURM_STEP_ID (a normal step number) and
    SLURM_STEP_NUM_TASKS (slurm's env_array_for_step). A batch script's shell (and salloc's)
    also has SLURM_PROCID=0 and the allocation's SLURM_NTASKS, but no step task count, and the
    batch step's slurmstepd sets no SLURM_STEP_ID or a special id; so SLURM_PROCID and
    SLURM_NTASKS alone never make a process a rank."""
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID"))
    if step is None or "SLURM_STEP_NUM_TASKS" not in env or "SLURM_PROCID" not in env:
        return None
    if not step.isdigit() or int(step) >= SLURM_MAX_NORMAL_STEP_ID:
        return None
    return _env_int(env, "SLURM_STEP_NUM_TASKS")


def _slurm_tasks_per_node(env: dict[str, str]) -> int | None:
    # SLURM_STEP_TASKS_PER_NODE is the step's layout, SLURM_NTASKS_PER_NODE is set only with
    # --ntasks-per-node; they and SLURM_TASKS_PER_NODE are like "4(x2)" (the first node's count
    # is this layout's).
    for key in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if key in env:
            head = env[key].split(",")[0].split("(")[0]
            if head.isdigit():
                return int(head)
    ntasks = slurm_step_tasks(env)
    nnodes = _env_int(env, "SLURM_STEP_NUM_NODES") or _env_int(env, "SLURM_NNODES")
    if ntasks and nnodes:
        return -(-ntasks // nnodes)
    return None


def env_rank(env: dict[str, str] | None = None) -> int | None:
    """This process's global rank as torchrun or an srun step set it (None: neither did)."""
    env = os.environ if env is None else env
    if "RANK" in env and env["RANK"].isdigit():
        return int(env["RANK"])
    if slurm_step_tasks(env) is not None and env["SLURM_PROCID"].isdigit():
        return int(env["SLURM_PROCID"])
    return None


def _check_gpus_per_node(local_ws: int, visible: int, bound_by_scheduler: bool) -> None:
    """Refuse to put two ranks on one GPU (NCCL fails with 'Duplicate GPU', or worse, shares)."""
    if local_ws <= visible or (visible == 1 and bound_by_scheduler):
        return
    raise DistributedSetupError(
        f"{local_ws} processes on this node but {visible} visible GPU(s): two ranks would share "
        f"a GPU; start at most {visible} per node (torchrun --nproc_per_node {visible}, srun "
        f"--ntasks-per-node {visible}) or give each SLURM task its own GPU (--gpus-per-task 1)"
    )


def _is_local_host(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _rendezvous_from_env(dist_url: str | None, env: dict[str, str], what: str, nodes: int) -> str:
    """The URL of a multi-process launch whose ranks come from the environment: a reachable
    --dist-url as given, else env:// with MASTER_ADDR / MASTER_PORT (not on this host only when
    the ranks span several nodes)."""
    if dist_url is not None and not is_local_url(dist_url):
        return dist_url
    if "MASTER_ADDR" in env and "MASTER_PORT" in env:
        if nodes > 1 and _is_local_host(env["MASTER_ADDR"]):
            raise DistributedSetupError(
                f"MASTER_ADDR={env['MASTER_ADDR']} cannot join ranks on {nodes} nodes (each node "
                "would wait for itself): set MASTER_ADDR to the first host of "
                "$SLURM_JOB_NODELIST, as README's sbatch example does"
            )
        return "env://"
    raise DistributedSetupError(
        f"{what} needs a rendezvous address every rank can reach: set MASTER_ADDR (the first "
        "host of $SLURM_JOB_NODELIST) and MASTER_PORT (a free port), as README's sbatch example "
        "does, or pass --dist-url tcp://<host of rank 0>:<port>"
    )


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
    or the number of `--available_gpus` ids for a dry run on a machine without them). Under
    torchrun, or SLURM with more than one task, the environment wins over the spawn flags; the
    flags it overrides are named in `plan.warning`, which is logged by rank 0 only.
    """
    env = dict(os.environ) if env is None else env
    gpu_ids = None
    if available_gpus is not None:
        gpu_ids = [int(s) for s in available_gpus.split(",") if s.strip()]
    backend = dist_backend
    if backend is not None and backend not in ("nccl", "gloo"):
        raise DistributedSetupError(f"--dist-backend must be nccl or gloo, got {backend!r}")
    use_cuda = num_visible_gpus > 0

    def auto_backend() -> str:
        return backend or ("nccl" if use_cuda else "gloo")

    # The published spawn flags as given (for the override warning).
    given = {
        "--multiprocessing-distributed": multiprocessing_distributed,
        f"--world-size {world_size}": world_size != -1,
        f"--rank {rank}": rank != -1,
        f"--dist-url {dist_url}": is_local_url(dist_url),
        f"--cpu_procs {cpu_procs}": cpu_procs is not None,
    }

    def one_rank_per_process(ws, local_ws, node_rank, url, warning, launcher) -> LaunchPlan:
        return LaunchPlan(
            mode="env",
            nprocs=1,
            nodes=max(ws // max(local_ws, 1), 1),
            world_size=ws,
            node_rank=node_rank,
            backend=auto_backend(),
            dist_url=url,
            use_cuda=use_cuda,
            local_world_size=local_ws,
            gpu_ids=gpu_ids,
            warning=warning,
            launcher=launcher,
        )

    def overridden(names: list[str], who: str, what: str) -> str | None:
        if not names:
            return None
        warning = f"{who} overrides {', '.join(names)}: {what}"
        if env_rank(env) in (None, 0):
            logger.warning("%s", warning)  # once: rank 0's
        return warning

    torchrun = all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    slurm_tasks = None if torchrun else slurm_step_tasks(env)
    slurm = slurm_tasks is not None and slurm_tasks > 1
    allocated = _env_int(env, "SLURM_NTASKS") if "SLURM_NTASKS" in env else None
    if not torchrun and slurm_tasks is None and allocated and allocated > 1:
        logger.warning(
            "SLURM_NTASKS=%d, but this process is not a task of an srun job step "
            "(SLURM_STEP_ID=%s: a batch or salloc shell), so it is no rank of %d: the flags "
            "decide the launch; start the command with srun to run one rank per SLURM task",
            allocated,
            env.get("SLURM_STEP_ID", "unset"),
            allocated,
        )

    if torchrun:
        ws, grank = _env_int(env, "WORLD_SIZE"), _env_int(env, "RANK")
        local_ws = _env_int(env, "LOCAL_WORLD_SIZE") or min(ws, max(num_visible_gpus, 1))
        node_rank = _env_int(env, "GROUP_RANK")
        node_rank = grank // max(local_ws, 1) if node_rank is None else node_rank
        names = [k for k, on in given.items() if on]
        if dist_url is not None and not is_local_url(dist_url):
            names.append(f"--dist-url {dist_url}")
        warning = overridden(names, "torchrun", f"its {ws} processes are the ranks (env://)")
        if use_cuda:
            _check_gpus_per_node(local_ws, num_visible_gpus, bound_by_scheduler=False)
        if ws == 1:
            single = dict(nprocs=1, nodes=1, world_size=1, node_rank=0, local_world_size=1)
            return LaunchPlan(
                "single", **single, backend=None, dist_url=None, use_cuda=use_cuda,
                gpu_ids=gpu_ids, warning=warning, launcher="torchrun",
            )  # fmt: skip
        return one_rank_per_process(ws, local_ws, node_rank, "env://", warning, "torchrun")

    if slurm:
        procid = _env_int(env, "SLURM_PROCID")
        per_node = _slurm_tasks_per_node(env)
        nodeid = _env_int(env, "SLURM_NODEID")
        # One task per node spawning its GPUs stays a spawn launch (nodes = tasks); with an
        # unknown layout the flags say which one is meant.
        one_per_node = per_node == 1 or (per_node is None and multiprocessing_distributed)
        if multiprocessing_distributed and one_per_node:
            nodes, node_rank = slurm_tasks, procid if nodeid is None else nodeid
            names = [f"--world-size {world_size}"] if world_size not in (-1, nodes) else []
            names += [f"--rank {rank}"] if rank not in (-1, node_rank) else []
            names += [f"--dist-url {dist_url}"] if is_local_url(dist_url) else []
            warning = overridden(
                names, "SLURM", f"its {nodes} tasks are the nodes, each spawning its workers"
            )
            what = f"spawning on {nodes} SLURM nodes"
            url = _rendezvous_from_env(dist_url, env, what, nodes)
            plan = _spawn_plan(nodes, node_rank, url, backend, gpu_ids, cpu_procs, num_visible_gpus)
            plan.warning, plan.launcher = warning, "slurm"
            return plan
        ws = slurm_tasks
        local_ws = per_node or min(ws, max(num_visible_gpus, 1))
        node_rank = procid // local_ws if nodeid is None else nodeid
        names = [k for k, on in given.items() if on]
        warning = overridden(names, "SLURM", f"its {ws} tasks are the ranks")
        nodes = max(ws // max(local_ws, 1), 1)
        url = _rendezvous_from_env(dist_url, env, f"{ws} SLURM tasks", nodes)
        if use_cuda:
            bound = "CUDA_VISIBLE_DEVICES" in env
            _check_gpus_per_node(local_ws, num_visible_gpus, bound_by_scheduler=bound)
        return one_rank_per_process(ws, local_ws, node_rank, url, warning, "slurm")

    if multiprocessing_distributed:
        if max(world_size, 1) > 1 and is_local_url(dist_url):
            raise DistributedSetupError(
                f"--dist-url {dist_url} cannot join {world_size} nodes (each would talk to "
                "itself): pass --dist-url tcp://<host of node 0>:<port>, the same on every node"
            )
        if max(world_size, 1) > 1 and dist_url is None:
            if "MASTER_ADDR" in env and "MASTER_PORT" in env:
                dist_url = "env://"
            else:
                raise DistributedSetupError(
                    f"{world_size} nodes need a rendezvous address reachable from all of them: "
                    "pass --dist-url tcp://<node0 host>:<port> (or set MASTER_ADDR/MASTER_PORT)"
                )
        return _spawn_plan(
            world_size, rank, dist_url, backend, gpu_ids, cpu_procs, num_visible_gpus
        )

    if world_size > 1:
        # The published code's non-spawn branch: one process per node, ranks given by hand.
        if rank < 0 or dist_url is None:
            raise DistributedSetupError(
                f"--world-size {world_size} without --multiprocessing-distributed needs --rank "
                "and --dist-url for this process (or launch with torchrun)"
            )
        if is_local_url(dist_url):
            raise DistributedSetupError(
                f"--dist-url {dist_url} cannot join --world-size {world_size} (without "
                "--multiprocessing-distributed each rank is a node, and each would wait for "
                "itself): pass --dist-url tcp://<host of rank 0>:<port>, the same on every node "
                "(on one machine: --multiprocessing-distributed, or torchrun --standalone)"
            )
        return LaunchPlan(
            mode="env",
            nprocs=1,
            nodes=world_size,
            world_size=world_size,
            node_rank=rank,
            backend=auto_backend(),
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


def _spawn_plan(
    world_size: int,
    rank: int,
    dist_url: str | None,
    backend: str | None,
    gpu_ids: list[int] | None,
    cpu_procs: int | None,
    num_visible_gpus: int,
) -> LaunchPlan:
    """--multiprocessing-distributed: one worker per GPU (or per --cpu_procs) on each node."""
    if num_visible_gpus > 0:
        nprocs, use_cuda = (len(gpu_ids) if gpu_ids else num_visible_gpus), True
        _check_gpus_per_node(nprocs, num_visible_gpus, bound_by_scheduler=False)
    elif cpu_procs:
        nprocs, use_cuda = cpu_procs, False
    else:
        raise DistributedSetupError(
            "--multiprocessing-distributed found no GPU on this machine: pass --cpu_procs N "
            "to spawn N CPU processes (gloo), or drop --multiprocessing-distributed"
        )
    nodes, node_rank = max(world_size, 1), max(rank, 0)
    return LaunchPlan(
        mode="spawn",
        nprocs=nprocs,
        nodes=nodes,
        world_size=nodes * nprocs,
        node_rank=node_rank,
        backend=backend or ("nccl" if use_cuda else "gloo"),
        dist_url=dist_url,
        use_cuda=use_cuda,
        local_world_size=nprocs,
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
    elif plan.launcher == "torchrun":
        rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", 0))
    elif plan.launcher == "slurm":
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
    if plan.backend == "nccl":
        # A failed or timed-out NCCL collective has no Python exception to raise: the watchdog
        # tears the process down (3: without the communicator clean-up, which can itself hang),
        # so the launcher sees the rank die and stops the others. 3 is the default of recent
        # torch; older ones defaulted to doing nothing, leaving the job hanging.
        env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
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


def average_gradients(params: list[torch.Tensor], ctx: DistContext) -> None:
    """Average the parameters' gradients over the ranks, in place, as DDP does (used when DDP
    did not: gradients accumulated under `no_sync` whose synchronising step was skipped)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not ctx.distributed or not grads:
        return
    for dtype in dict.fromkeys(g.dtype for g in grads):
        same = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in same]).div_(ctx.world_size)
        dist.all_reduce(flat)
        offset = 0
        for g in same:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def all_reduce_min(value: int, ctx: DistContext) -> int:
    """The smallest of every rank's `value` (the value itself when not distributed)."""
    return -int(all_reduce_max(-value, ctx))


def all_reduce_max(value: int, ctx: DistContext) -> int:
    """The largest of every rank's `value` (the value itself when not distributed)."""
    if not ctx.distributed:
        return value
    buf = torch.tensor(
        [value], dtype=torch.int64, device=ctx.device if ctx.backend == "nccl" else "cpu"
    )
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return int(buf.item())


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


def broadcast_bytes(data: bytes | None, ctx: DistContext, src: int = 0) -> bytes:
    """Rank `src`'s `data` (e.g. a checkpoint file) on every rank, as one tensor: no pickling."""
    if not ctx.distributed:
        return data or b""
    size = int(broadcast_object(len(data) if ctx.rank == src else None, ctx, src))
    device = ctx.device if ctx.backend == "nccl" else "cpu"
    if ctx.rank == src:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    else:
        buf = torch.empty(size, dtype=torch.uint8, device=device)
    dist.broadcast(buf, src=src)
    return data if ctx.rank == src else buf.cpu().numpy().tobytes()


def spawn(
    fn: Callable[..., None], nprocs: int, args: tuple, *, forward_signals: bool = True
) -> None:
    """Run `fn(local_rank, *args)` in `nprocs` fresh processes and wait for all of them.

    SIGTERM / SIGINT / SIGUSR1 sent to this (parent) process are forwarded to the workers, so a
    cluster's preemption signal (or SLURM's early warning) reaches the training loop, which saves
    a checkpoint and exits. A terminal's Ctrl-C reaches the workers twice, directly (same process
    group) and forwarded; ops.engine.stop.StopRequest takes a repeat within a few seconds as the
    same request. If a worker fails, the others are terminated and RankFailureError is raised
    here with a one-line message (the worker has already logged its own error).
    """
    processes: list = []
    previous = {}

    def forward(signum, _frame):
        logger.warning(
            "received %s: forwarding it to the %d workers", signal.Signals(signum).name, nprocs
        )
        for p in processes:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)

    if forward_signals:  # before the workers start, so that no signal finds this process bare
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            previous[sig] = signal.signal(sig, forward)
    try:
        ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    except BaseException:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise
    processes.extend(ctx.processes)
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
