"""ops/distributed.py: launch planning from flags and environment, batch split, dead ranks."""

import logging
import os
import socket
import time

import pytest
import torch

from ops import distributed as du


def plan(env=None, **kw):
    defaults = dict(
        multiprocessing_distributed=False,
        world_size=-1,
        rank=-1,
        dist_url=None,
        dist_backend=None,
        available_gpus=None,
        cpu_procs=None,
        num_visible_gpus=0,
    )
    defaults.update(kw)
    return du.plan_launch(env=env or {}, **defaults)


def test_published_spawn_command_on_a_four_gpu_node():
    p = plan(
        multiprocessing_distributed=True,
        world_size=1,
        rank=0,
        dist_url="tcp://localhost:6666",
        dist_backend="nccl",
        available_gpus="0,1,2,3",
        num_visible_gpus=4,
    )
    assert (p.mode, p.nprocs, p.nodes, p.world_size, p.node_rank) == ("spawn", 4, 1, 4, 0)
    assert (p.backend, p.use_cuda, p.local_world_size) == ("nccl", True, 4)
    assert du.per_process_batch(16, p.local_world_size) == 4


def test_spawn_on_two_nodes_counts_nodes_and_ranks():
    p = plan(
        multiprocessing_distributed=True,
        world_size=2,
        rank=1,
        dist_url="tcp://node0:6666",
        available_gpus="0,1,2,3",
        num_visible_gpus=8,
    )
    assert (p.world_size, p.nodes, p.node_rank, p.nprocs) == (8, 2, 1, 4)


def test_spawn_without_gpus_needs_cpu_procs_and_uses_gloo():
    with pytest.raises(du.DistributedSetupError, match="--cpu_procs"):
        plan(multiprocessing_distributed=True, world_size=1, rank=0)
    p = plan(multiprocessing_distributed=True, cpu_procs=2)
    assert (p.mode, p.world_size, p.backend, p.use_cuda) == ("spawn", 2, "gloo", False)
    assert du.per_process_batch(8, p.local_world_size) == 4


def test_torchrun_environment():
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    p = plan(env=env, num_visible_gpus=4)
    assert (p.mode, p.world_size, p.nodes, p.local_world_size, p.node_rank) == ("env", 8, 2, 4, 1)
    assert (p.dist_url, p.backend) == ("env://", "nccl")
    cpu = plan(env={"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"})
    assert (cpu.backend, cpu.use_cuda, cpu.local_world_size) == ("gloo", False, 2)


def test_slurm_environment():
    env = {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "3",
        "SLURM_TASKS_PER_NODE": "4(x2)",
        "SLURM_NODEID": "0",
        "SLURM_STEP_ID": "0",  # srun's: a real job step
        "SLURM_STEP_NUM_TASKS": "8",
        "MASTER_ADDR": "node0",
        "MASTER_PORT": "29500",
    }
    p = plan(env=env, num_visible_gpus=4)
    assert (p.mode, p.world_size, p.local_world_size, p.nodes) == ("env", 8, 4, 2)
    no_master = {k: v for k, v in env.items() if not k.startswith("MASTER")}
    with pytest.raises(du.DistributedSetupError, match="MASTER_ADDR"):
        plan(env=no_master, num_visible_gpus=4)
    # One SLURM task per node spawning its GPUs: SLURM gives the node count and node rank.
    step = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2"}
    spawn = plan(
        env={"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "MASTER_ADDR": "n0", "MASTER_PORT": "1"}
        | step,
        multiprocessing_distributed=True,
        num_visible_gpus=4,
    )
    assert (spawn.nodes, spawn.node_rank, spawn.world_size, spawn.dist_url) == (2, 1, 8, "env://")


def test_single_process_and_single_task_slurm():
    assert plan().mode == "single"
    p = plan(env={"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_ID": "0",
                  "SLURM_STEP_NUM_TASKS": "1"})  # fmt: skip
    assert p.mode == "single" and p.world_size == 1


def test_bad_settings_say_what_to_do():
    with pytest.raises(du.DistributedSetupError, match="--rank"):
        plan(world_size=2)
    with pytest.raises(du.DistributedSetupError, match="nccl or gloo"):
        plan(dist_backend="mpi")
    with pytest.raises(du.DistributedSetupError, match="--batch_size"):
        du.per_process_batch(2, 4)


# ---- real process groups (gloo on CPU) ----------------------------------------------------


def _survivor_or_casualty(local_rank, port, behaviour, out_dir):
    p = du.LaunchPlan(
        mode="spawn",
        nprocs=2,
        nodes=1,
        world_size=2,
        node_rank=0,
        backend="gloo",
        dist_url=f"tcp://127.0.0.1:{port}",
        use_cuda=False,
        local_world_size=2,
    )
    ctx = du.init_worker(p, local_rank, timeout_minutes=0.1)  # 6 s
    got = du.all_reduce_sum(torch.tensor([float(ctx.rank + 1)], dtype=torch.float64), ctx)
    assert float(got[0]) == 3.0  # 1 + 2
    if ctx.rank == 1:
        if behaviour == "exit":
            os._exit(0)  # dies without leaving the group (code 0 so spawn lets rank 0 finish)
        # "Hang": stay alive without answering until rank 0 has given up (at most 30 s).
        deadline = time.time() + 30
        while time.time() < deadline and not os.path.exists(os.path.join(out_dir, "rank0.txt")):
            time.sleep(0.2)
        os._exit(0)
    start = time.perf_counter()
    try:
        du.all_reduce_sum(torch.ones(1, dtype=torch.float64), ctx)
        result = "no error"
    except RuntimeError as exc:
        result = f"{du.is_collective_failure(exc)} {time.perf_counter() - start:.1f}"
    with open(os.path.join(out_dir, "rank0.txt"), "w") as f:
        f.write(result)
    os._exit(0)


@pytest.mark.parametrize("behaviour, max_seconds", [("exit", 5.0), ("hang", 30.0)])
def test_dead_or_hung_rank_makes_the_other_fail_instead_of_waiting(
    tmp_path, behaviour, max_seconds
):
    port = du.free_port()
    start = time.perf_counter()
    du.spawn(_survivor_or_casualty, 2, (port, behaviour, str(tmp_path)), forward_signals=False)
    elapsed = time.perf_counter() - start
    verdict, seconds = (tmp_path / "rank0.txt").read_text().split()
    assert verdict == "True"  # recognised as a collective failure
    assert float(seconds) < max_seconds
    assert elapsed < 90


def _fail_in_worker(local_rank, how):
    if local_rank == 1:
        if how == "raise":
            raise ValueError("bad setting on worker 1")
        os._exit(1)
    time.sleep(600)  # terminated by spawn when worker 1 fails (else the test would take 10 min)


@pytest.mark.parametrize(
    "how, message",
    [
        ("raise", "worker 1 failed: ValueError: bad setting"),
        ("exit", "worker 1 exited with code 1"),
    ],
)
def test_spawn_stops_the_others_and_reports_a_failed_worker_in_one_line(how, message):
    start = time.perf_counter()
    with pytest.raises(du.RankFailureError, match=message) as exc:
        du.spawn(_fail_in_worker, 2, (how,), forward_signals=False)
    assert "\n" not in str(exc.value)
    # worker 0 was stopped, not waited for (generous bound: starting two processes that import
    # torch takes tens of seconds on a loaded 2-core machine)
    assert time.perf_counter() - start < 300


# ---- the environment wins over the published spawn flags; contradictions refused --------------

PUBLISHED = dict(
    multiprocessing_distributed=True,
    world_size=1,
    rank=0,
    dist_url="tcp://localhost:6666",
    dist_backend="nccl",
    available_gpus="0,1,2,3",
)


def _torchrun_env(rank, world=8, local=4):
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank % local),
        "LOCAL_WORLD_SIZE": str(local),
        "MASTER_ADDR": "node0",
        "MASTER_PORT": "29500",
    }


def _slurm_env(procid, ntasks=2, per_node=2, nodes=1, **extra):
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": str(procid),
        "SLURM_NTASKS": str(ntasks),
        "SLURM_LOCALID": str(procid % per_node),
        "SLURM_NODEID": str(procid // per_node),
        "SLURM_NNODES": str(nodes),
        "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})" if nodes > 1 else str(per_node),
        # what srun adds for the tasks of a job step (a batch or salloc shell has none of it)
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_TASKS": str(ntasks),
        "SLURM_STEP_NUM_NODES": str(nodes),
        "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{nodes})" if nodes > 1 else str(per_node),
    }
    env.update(extra)
    return env


def test_torchrun_with_the_published_spawn_flags_is_one_rank_per_process(caplog):
    # torchrun --nproc_per_node 4 --nnodes 2 main.py <published flags>: the processes must not
    # spawn 4 workers each, nor use the published localhost URL across nodes.
    plans = []
    with caplog.at_level(logging.WARNING, logger="ops.distributed"):
        for rank in range(8):
            plans.append(plan(env=_torchrun_env(rank), num_visible_gpus=4, **PUBLISHED))
    assert {(p.mode, p.world_size, p.nprocs, p.dist_url) for p in plans} == {
        ("env", 8, 1, "env://")
    }
    assert [p.node_rank for p in plans] == [0, 0, 0, 0, 1, 1, 1, 1]
    # One warning (rank 0's), naming every overridden flag, on one line.
    warnings = [r.getMessage() for r in caplog.records if "overrides" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    for flag in ("--multiprocessing-distributed", "--world-size 1", "--rank 0", "localhost:6666"):
        assert flag in warnings[0]
    assert all(p.warning == plans[0].warning for p in plans)


def test_slurm_tasks_read_from_the_environment_and_the_spawn_flags_overridden(caplog):
    # srun --ntasks-per-node 2 on 2 nodes (4 tasks), with and without the published flags.
    for flags in (PUBLISHED, {}):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ops.distributed"):
            plans = [
                plan(env=_slurm_env(r, 4, 2, 2, MASTER_ADDR="n0", MASTER_PORT="1"),
                     num_visible_gpus=2, **flags)
                for r in range(4)
            ]  # fmt: skip
        assert [(p.mode, p.world_size, p.local_world_size, p.nodes) for p in plans] == [
            ("env", 4, 2, 2)
        ] * 4
        assert [p.node_rank for p in plans] == [0, 0, 1, 1]
        assert {(p.launcher, p.dist_url, p.backend) for p in plans} == {("slurm", "env://", "nccl")}
        overrides = [r for r in caplog.records if "overrides" in r.getMessage()]
        assert len(overrides) == (1 if flags else 0)


def test_one_slurm_task_per_node_spawns_its_gpus_and_slurm_gives_the_node_rank():
    # srun -N2 --ntasks-per-node=1 python main.py <published flags>: --world-size 1 --rank 0 on
    # both nodes would be two independent runs writing the same checkpoint.
    env = lambda r: _slurm_env(r, 2, 1, 2, MASTER_ADDR="n0", MASTER_PORT="29500")  # noqa: E731
    plans = [plan(env=env(r), num_visible_gpus=4, **PUBLISHED) for r in range(2)]
    assert [(p.mode, p.nodes, p.node_rank, p.world_size) for p in plans] == [
        ("spawn", 2, 0, 8),
        ("spawn", 2, 1, 8),
    ]
    assert plans[0].dist_url == "env://"  # not the published localhost URL
    assert "--world-size 1" in plans[1].warning and "--rank 0" in plans[1].warning


@pytest.mark.parametrize(
    "case, kwargs, env, fix",
    [
        (
            "spawn over 2 nodes with a localhost URL",
            dict(PUBLISHED, world_size=2, rank=1),
            {},
            "--dist-url tcp://<host of node 0>",
        ),
        (
            "SLURM on 2 nodes without a rendezvous address",
            PUBLISHED,
            _slurm_env(3, 4, 2, 2),
            "MASTER_ADDR",
        ),
        (
            "4 torchrun processes per node on 2 GPUs",
            {},
            _torchrun_env(1, 4, 4),
            "--nproc_per_node 2",
        ),
        (
            "4 SLURM tasks per node sharing 2 GPUs",
            {},
            _slurm_env(0, 4, 4, 1, MASTER_ADDR="n0", MASTER_PORT="1"),
            "--ntasks-per-node 2",
        ),
    ],
)
def test_contradictions_are_refused_in_one_line(case, kwargs, env, fix):
    with pytest.raises(du.DistributedSetupError) as exc:
        plan(env=env, num_visible_gpus=2, **kwargs)
    assert "\n" not in str(exc.value) and fix in str(exc.value), case


def test_one_gpu_per_slurm_task_bound_by_the_scheduler_is_not_a_contradiction():
    # --gpus-per-task 1: each task sees one GPU (its own) under CUDA_VISIBLE_DEVICES.
    env = _slurm_env(3, 4, 4, 1, MASTER_ADDR="n0", MASTER_PORT="1", CUDA_VISIBLE_DEVICES="3")
    assert plan(env=env, num_visible_gpus=1).world_size == 4


def test_available_gpus_keeps_the_schedulers_cuda_visible_devices(caplog):
    env = {}
    assert du.choose_gpus("0,1", env) == "0,1" and env["CUDA_VISIBLE_DEVICES"] == "0,1"
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    with caplog.at_level(logging.WARNING, logger="ops.distributed"):
        assert du.choose_gpus("0,1,2,3", env) is None  # all visible GPUs are used
    assert env["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    assert "--available_gpus 0,1,2,3 ignored" in caplog.text
    with pytest.raises(du.DistributedSetupError, match="makes 2 visible") as exc:
        du.choose_gpus("0,1,2,3", {"CUDA_VISIBLE_DEVICES": "2,3"})
    assert "\n" not in str(exc.value)


def test_a_busy_published_port_is_replaced_on_a_single_node():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        url = du.local_rendezvous(f"tcp://localhost:{port}")
        assert url.startswith("tcp://127.0.0.1:") and not url.endswith(f":{port}")
    free = du.free_port()
    assert du.local_rendezvous(f"tcp://localhost:{free}") == f"tcp://localhost:{free}"
    assert du.local_rendezvous("tcp://node0:6666") == "tcp://node0:6666"  # not ours to change


# ---- issue 25: a batch or salloc shell is not a SLURM job step; localhost needs one node ----


def _batch_shell_env(**extra) -> dict:
    """`sbatch --nodes 2 --ntasks-per-node 4` (or salloc): the shell that runs the script has
    the allocation's task count and SLURM_PROCID=0, but it is no task of an srun step."""
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "8",
        "SLURM_NPROCS": "8",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_TASKS_PER_NODE": "4(x2)",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "MASTER_ADDR": "node0",
        "MASTER_PORT": "29500",
    }
    env.update(extra)
    return env


@pytest.mark.parametrize(
    "step",
    [
        {},  # the batch step: slurmstepd sets no SLURM_STEP_ID for it
        {"SLURM_STEP_ID": "4294967291"},  # the batch script's id (Slurm >= 20.11)
        {"SLURM_STEP_ID": "4294967294"},  # ... and before 20.11
        {"SLURM_STEP_ID": "4294967290", "SLURM_STEP_NUM_TASKS": "1"},  # salloc's interactive step
    ],
)
def test_a_batch_or_salloc_shell_is_not_taken_for_rank_0_of_the_allocation(step, caplog):
    # The published command typed in the batch script (no srun) was planned as rank 0 of 8 and
    # waited --dist_timeout minutes for 7 ranks nobody starts.
    with caplog.at_level(logging.WARNING, logger="ops.distributed"):
        p = plan(env=_batch_shell_env(**step), num_visible_gpus=4, **PUBLISHED)
    assert (p.mode, p.world_size, p.nprocs, p.launcher) == ("spawn", 4, 4, "flags")
    warned = [r.getMessage() for r in caplog.records if "SLURM_NTASKS=8" in r.getMessage()]
    assert len(warned) == 1 and "srun" in warned[0] and "\n" not in warned[0]
    # without the spawn flags: one process, not rank 0 of 8
    assert plan(env=_batch_shell_env(**step), num_visible_gpus=4).mode == "single"


def test_the_ranks_are_the_steps_tasks_not_the_allocations():
    # sbatch --ntasks 8, then `srun --ntasks 4 --preserve-env ...`: SLURM_NTASKS keeps the
    # allocation's 8, the step has 4 tasks.
    env = _slurm_env(1, 4, 4, 1, MASTER_ADDR="n0", MASTER_PORT="1", SLURM_NTASKS="8")
    p = plan(env=env, num_visible_gpus=4)
    assert (p.mode, p.world_size, p.local_world_size, p.nodes) == ("env", 4, 4, 1)


@pytest.mark.parametrize("url", ["tcp://localhost:6666", "tcp://127.0.0.1:6666"])
def test_a_localhost_url_is_refused_for_hand_ranked_processes(url):
    # --world-size 2 --rank r without --multiprocessing-distributed: one process per node, as
    # published; localhost would make each node wait for itself.
    with pytest.raises(du.DistributedSetupError) as exc:
        plan(world_size=2, rank=1, dist_url=url)
    message = str(exc.value)
    assert "\n" not in message and url in message and "--dist-url tcp://<host" in message
    p = plan(world_size=2, rank=1, dist_url="tcp://node0:6666")  # a reachable host is fine
    assert (p.mode, p.world_size, p.node_rank) == ("env", 2, 1)


def test_a_localhost_master_addr_is_refused_across_nodes():
    env = _slurm_env(5, 8, 4, 2, MASTER_ADDR="localhost", MASTER_PORT="29500")
    with pytest.raises(du.DistributedSetupError, match="MASTER_ADDR=localhost"):
        plan(env=env, num_visible_gpus=4)
    one_node = _slurm_env(1, 4, 4, 1, MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    assert plan(env=one_node, num_visible_gpus=4).world_size == 4  # one node: fine


def test_the_published_command_in_a_batch_shell_as_users_run_it(tmp_path):
    # `sbatch` script without srun: main.py's own process, the batch step's environment.
    import shlex
    import subprocess
    import sys

    from tests.test_opts import SOMETHING

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD"))}
    env.update(_batch_shell_env(SLURM_STEP_ID="4294967291"))
    proc = subprocess.run(
        [sys.executable, os.path.join(repo, "main.py"), *shlex.split(SOMETHING), "--dry_run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SLURM_NTASKS=8, but this process is not a task of an srun job step" in proc.stderr
    assert "world size 4" in proc.stdout, proc.stdout  # this node's 4 GPUs, not 8 ranks
