"""ops/distributed.py: launch planning from flags and environment, batch split, dead ranks."""

import os
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
        "MASTER_ADDR": "node0",
        "MASTER_PORT": "29500",
    }
    p = plan(env=env, num_visible_gpus=4)
    assert (p.mode, p.world_size, p.local_world_size, p.nodes) == ("env", 8, 4, 2)
    no_master = {k: v for k, v in env.items() if not k.startswith("MASTER")}
    with pytest.raises(du.DistributedSetupError, match="MASTER_ADDR"):
        plan(env=no_master, num_visible_gpus=4)
    # One SLURM task per node spawning its GPUs: SLURM gives the node count and node rank.
    spawn = plan(
        env={"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "MASTER_ADDR": "n0", "MASTER_PORT": "1"},
        multiprocessing_distributed=True,
        num_visible_gpus=4,
    )
    assert (spawn.nodes, spawn.node_rank, spawn.world_size, spawn.dist_url) == (2, 1, 8, "env://")


def test_single_process_and_single_task_slurm():
    assert plan().mode == "single"
    p = plan(env={"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
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
