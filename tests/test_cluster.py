"""main.py run the way clusters run it: several processes (gloo on CPU), real DataLoader workers
(-j 2), real signals, and launchers as they are: torchrun, SLURM-style tasks (the environment a
`srun` step gives, set by the test for 2 local processes), and --multiprocessing-distributed.

Every interrupted run must say that it stopped and saved, and `--resume auto` must then end with
weights bit-identical to an uninterrupted run's (`reference`). Each run here starts processes
that import torch, so these tests take minutes on a loaded 2-core machine; the ones beyond the
main torchrun case are marked slow.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from argparse import Namespace

import pytest
import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

import main as train_main
from ops import distributed as du
from ops.checkpoint import load_checkpoint, save_checkpoint
from ops.engine.lr_scheduler import WarmupSchedule
from ops.engine.seeding import EpochSampler
from ops.engine.state import RunState, param_checksum, resume_checkpoint
from ops.engine.trainer import LoopSettings, TrainParts, train_one_epoch
from ops.synthetic import make_synthetic
from tests.test_faults import _wait_for
from tests.test_main import assert_same_state, tiny_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, "main.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
SPAWN = ["--multiprocessing-distributed", "--cpu_procs", "2"]
# The published spawn flags (their CPU form: --cpu_procs instead of --available_gpus 0,1,2,3).
PUBLISHED = ["--dist-url", "tcp://localhost:6666", "--multiprocessing-distributed"]
PUBLISHED += ["--world-size", "1", "--rank", "0", "--cpu_procs", "2"]
TIMEOUT = 900  # per process run; starting processes that import torch is slow on a busy machine
MID_EPOCH_2 = "Epoch: [2][2/8]"  # rank 0's progress line, iteration 2 of 8 of epoch 2


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_process():
    """torchrun gives its workers OMP_NUM_THREADS=1; every process of this module runs so, since
    another thread count sums in another order (not bit-identical)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    # 2 classes x 16 training videos: 8 iterations per epoch for 2 processes x 2 clips.
    root = tmp_path_factory.mktemp("cluster_data")
    make_synthetic(
        str(root),
        num_videos_per_class=16,
        num_val_per_class=1,
        num_frames=8,
        size=(40, 32),
        num_classes=2,
        seed=2,
    )
    return str(root)


def run_args(root, out, *extra):
    """2 epochs, 4 clips per node (2 per process), groups of 2 iterations, 2 loader workers."""
    base = ["--epochs", "2", "--batch_size", "4", "--batch_multiplier", "2", "--workers", "2"]
    return tiny_args(root, out, *base, *extra)


def ckpt_of(out) -> dict:
    name = train_main.run_name(train_main.parse_args(run_args("x", "x")))
    return load_checkpoint(os.path.join(out, "ckpt", name, "ckpt.pth.tar"))


@pytest.fixture(scope="module")
def reference(root, tmp_path_factory):
    """The uninterrupted 2-process run that every interrupted one must end equal to."""
    out = tmp_path_factory.mktemp("reference")
    train_main.main(run_args(root, str(out), *SPAWN))
    return ckpt_of(str(out))


def assert_same_run(ckpt: dict, reference: dict) -> None:
    assert ckpt["epoch"] == reference["epoch"] == 2 and ckpt["iteration"] == 0
    assert_same_state(ckpt["state_dict"], reference["state_dict"])
    for a, b in zip(ckpt["optimizer"]["state"].values(), reference["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert ckpt["best_prec1"] == reference["best_prec1"]


def start(cmd, cwd, env=None, output=subprocess.PIPE, **kwargs) -> subprocess.Popen:
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, text=True, **kwargs
    )


def wait_for(proc: subprocess.Popen, needle: str) -> str:
    """Read `proc`'s output until a line has `needle` (no fixed sleeps: machines differ)."""
    return "".join(_wait_for(proc, needle, TIMEOUT))


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=TIMEOUT)
    return out or ""


def children(pid: int) -> list[int]:
    got = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in got.split()]


def assert_stopped_and_saved(text: str, sig: signal.Signals) -> None:
    assert f"stopped by {sig.name} at epoch 2, iteration" in text, text[-6000:]
    assert "saved" in text and "(--resume auto continues)" in text
    # the loader workers were not killed under the rank (the failure of issue 14)
    assert "DataLoader worker" not in text and "KeyboardInterrupt" not in text


def assert_mid_epoch_2(ckpt: dict) -> None:
    # Stopped at an optimizer-step boundary of epoch 2, 2 processes x 2 clips per iteration.
    assert ckpt["epoch"] == 1 and ckpt["iteration"] in (2, 4, 6) and ckpt["world_size"] == 2
    assert ckpt["samples_done"] == 4 * ckpt["iteration"]


# ---- torchrun -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchrun_stopped(root, tmp_path_factory):
    """torchrun --standalone --nproc_per_node 2 main.py <published spawn flags>, SIGTERM to the
    torchrun process in the middle of epoch 2 (it signals each rank's process group: the rank
    and its loader workers). Returns the run folder (untouched afterwards) and the output."""
    out = tmp_path_factory.mktemp("torchrun")
    proc = start([*TORCHRUN, MAIN, *run_args(root, ".", *PUBLISHED)], cwd=out)
    text = wait_for(proc, MID_EPOCH_2)
    workers = [c for rank in children(proc.pid) for c in children(rank)]
    assert len(workers) >= 4  # 2 ranks x 2 loader workers receive the signal too
    proc.send_signal(signal.SIGTERM)
    return out, text + finish(proc)


def test_sigterm_to_torchrun_saves_and_resume_auto_continues_bit_identically(
    torchrun_stopped, root, reference, tmp_path
):
    out, text = torchrun_stopped
    # The published spawn flags under torchrun: one warning, and world size 2 (not 2 x 2).
    overrides = [line for line in text.splitlines() if "torchrun overrides" in line]
    assert len(overrides) == 1 and "--multiprocessing-distributed" in overrides[0], text[-4000:]
    assert_stopped_and_saved(text, signal.SIGTERM)
    work = tmp_path / "run"
    shutil.copytree(out, work)
    assert_mid_epoch_2(ckpt_of(str(work)))

    cmd = [*TORCHRUN, MAIN, *run_args(root, ".", *PUBLISHED, "--resume", "auto")]
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]
    assert_same_run(ckpt_of(str(work)), reference)


def _lr(position: float, lr: float = 0.01, epochs: int = 2) -> float:
    # --lr_type cos without warmup (tiny_args), by the published formula
    import math

    return 0.5 * lr * (1 + math.cos(math.pi * position / epochs))


def test_resume_with_one_process_continues_at_the_same_sample(torchrun_stopped, root, tmp_path):
    # Stopped by 2 processes x 2 clips after k iterations of epoch 2 (4k samples of its 32);
    # resumed by 1 process x 2 clips, whose epoch has 16 iterations: the remaining 32 - 4k
    # samples are its last (32 - 4k) / 2 iterations, from iteration 2k, and the learning rate
    # continues at the fraction of the epoch already done.
    out, _ = torchrun_stopped
    work = tmp_path / "run"
    shutil.copytree(out, work)
    k = ckpt_of(str(work))["iteration"]
    args = run_args(root, str(work), "--batch_size", "2", "--workers", "0", "--resume", "auto")
    summary = train_main.main(args)
    log = (work / "log" / summary["run_name"] / "log.txt").read_text().splitlines()
    resumed = [line for line in log if line.startswith("Epoch: [2][") and "/16]" in line]
    assert resumed[0].startswith(f"Epoch: [2][{2 * k + 1}/16], lr: {_lr(1 + 2 * k / 16):.5f}")
    assert len(resumed) == 16 - 2 * k and resumed[-1].startswith("Epoch: [2][16/16]")
    final = ckpt_of(str(work))
    assert final["epoch"] == 2 and final["world_size"] == 1


def test_checkpoints_say_what_ran(reference):
    # Written by rank 0 of the spawned run: the facts of every rank, not the parent's.
    runtime = reference["runtime"]
    assert (runtime["launch"], runtime["backend"], runtime["world_size"]) == ("spawn", "gloo", 2)
    assert [r["rank"] for r in runtime["ranks"]] == [0, 1]
    assert all(r["cudnn_benchmark"] for r in runtime["ranks"])  # set in each spawned worker
    assert runtime["compile"] == "off" and runtime["amp"] == "off"
    # ResNet-18 RNL at 32 px, 4 frames: layer2 (128 channels, C' = 64) at 4 x 4 x 4 positions,
    # layer3 (256, C' = 128) at 4 x 2 x 2; contiguous fp32 on CPU runs the CPU flash kernel
    # forward and, RNL's queries being its keys, ops/self_attention.py's backward.
    shapes = {
        (a["positions"], a["head_dim"], a["dtype"], a["kernel"], a["backward"])
        for a in runtime["attention"]
    }
    assert shapes == {
        (64, 64, "float32", "flash", "symmetric"),
        (16, 128, "float32", "flash", "symmetric"),
    }


# ---- SLURM: every process of the job step is signalled ----------------------------------------


def slurm_env(rank: int, port: int, bin_dir: str, log: str) -> dict:
    """What `srun --ntasks=2` on one node gives task `rank` (plus the sbatch example's
    MASTER_ADDR / MASTER_PORT), and a fake `scontrol` that records its arguments."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD"))}
    env.update(
        SLURM_JOB_ID="4242",
        SLURM_NTASKS="2",
        SLURM_NNODES="1",
        SLURM_TASKS_PER_NODE="2",
        SLURM_PROCID=str(rank),
        SLURM_LOCALID=str(rank),
        SLURM_NODEID="0",
        SLURM_STEP_ID="0",  # srun's: the tasks of a job step
        SLURM_STEP_NUM_TASKS="2",
        SLURM_STEP_NUM_NODES="1",
        SLURM_STEP_TASKS_PER_NODE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        PATH=bin_dir + os.pathsep + env.get("PATH", ""),
        SCONTROL_LOG=log,
    )
    return env


def slurm_run(root, nodes, bin_dir, log, *extra) -> list[subprocess.Popen]:
    """Tasks 0 and 1, each in its own folder (`--root_model` is relative): no shared disk."""
    port = du.free_port()
    procs = []
    for rank in (0, 1):
        output = subprocess.PIPE if rank == 0 else open(nodes[rank] / "task.log", "a")  # noqa: SIM115
        cmd = [sys.executable, MAIN, *run_args(root, ".", *PUBLISHED, *extra)]
        procs.append(start(cmd, nodes[rank], slurm_env(rank, port, bin_dir, log), output))
    return procs


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_slurm_signal_to_every_process_saves_requeues_and_resumes(root, reference, tmp_path, sig):
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    bin_dir, log = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    (bin_dir / "scontrol").chmod(0o755)

    procs = slurm_run(root, nodes, str(bin_dir), str(log))
    text = wait_for(procs[0], MID_EPOCH_2)
    workers = [c for p in procs for c in children(p.pid)]
    assert len(workers) >= 4
    for pid in [p.pid for p in procs] + workers:  # SLURM's way: every process of the step
        os.kill(pid, sig)
    text += finish(procs[0])
    procs[1].wait(timeout=TIMEOUT)
    assert [p.returncode for p in procs] == [0, 0], text[-4000:]
    assert_stopped_and_saved(text, sig)
    assert sum("SLURM overrides" in line for line in text.splitlines()) == 1
    assert_mid_epoch_2(ckpt_of(str(nodes[0])))
    assert not (nodes[1] / "ckpt").exists()  # rank 1's "node" never had the checkpoint
    # SIGUSR1 is SLURM's early warning: rank 0 requeues the job after saving; SIGTERM is not.
    requeued = log.read_text() if log.exists() else ""
    assert requeued == ("requeue 4242\n" if sig == signal.SIGUSR1 else "")

    # The requeued job: rank 0 finds the checkpoint and sends it to rank 1.
    procs = slurm_run(root, nodes, str(bin_dir), str(log), "--resume", "auto")
    text = finish(procs[0])
    procs[1].wait(timeout=TIMEOUT)
    assert [p.returncode for p in procs] == [0, 0], text[-4000:]
    assert_same_run(ckpt_of(str(nodes[0])), reference)


# ---- Ctrl-C in spawn mode ----------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_in_spawn_mode_saves_once_and_resumes(root, reference, tmp_path):
    # A terminal's Ctrl-C: SIGINT to the whole foreground process group (the parent, both ranks
    # and their loader workers); the parent forwards it to the ranks as well.
    proc = start([sys.executable, MAIN, *run_args(root, ".", *SPAWN)], tmp_path, None,
                 start_new_session=True)  # fmt: skip
    text = wait_for(proc, MID_EPOCH_2)
    os.killpg(proc.pid, signal.SIGINT)
    text += finish(proc)
    assert proc.returncode == 0, text[-4000:]
    assert_stopped_and_saved(text, signal.SIGINT)
    assert "Traceback" not in text
    assert_mid_epoch_2(ckpt_of(str(tmp_path)))
    train_main.main(run_args(root, str(tmp_path), *SPAWN, "--resume", "auto"))
    assert_same_run(ckpt_of(str(tmp_path)), reference)


# ---- resume with more processes ----------------------------------------------------------------


@pytest.mark.slow
def test_resume_with_two_processes_continues_at_the_same_sample(root, tmp_path, monkeypatch):
    # One process x 2 clips (16 iterations per epoch) stops after 6 iterations (12 samples);
    # two processes x 2 clips (8 iterations) continue with the remaining 20 samples: their last
    # 5 iterations, from iteration 3 (= 12/32 of the epoch).
    real = nn.CrossEntropyLoss.forward
    calls = []

    def preempt_at_the_fifth_loss(self, *args):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # stops at the next step boundary: 6
        return real(self, *args)

    single = ["--batch_size", "2", "--workers", "0"]
    monkeypatch.setattr(nn.CrossEntropyLoss, "forward", preempt_at_the_fifth_loss)
    summary = train_main.main(run_args(root, str(tmp_path), *single))
    monkeypatch.setattr(nn.CrossEntropyLoss, "forward", real)
    ckpt = ckpt_of(str(tmp_path))
    assert (ckpt["epoch"], ckpt["iteration"], ckpt["samples_done"]) == (0, 6, 12)

    train_main.main(run_args(root, str(tmp_path), *SPAWN, "--resume", "auto"))
    log = (tmp_path / "log" / summary["run_name"] / "log.txt").read_text().splitlines()
    resumed = [line for line in log if line.startswith("Epoch: [1][") and "/8]" in line]
    assert resumed[0].startswith(f"Epoch: [1][4/8], lr: {_lr(3 / 8):.5f}")
    assert len(resumed) == 5
    final = ckpt_of(str(tmp_path))
    assert final["epoch"] == 2 and final["world_size"] == 2
    assert len(set(final["replica_checksums"])) == 1


# ---- gradient accumulation around a skipped iteration --------------------------------------------


def test_a_skipped_last_iteration_on_one_rank_keeps_the_replicas_identical(tmp_path):
    # 2 processes x 2 clips, groups of 2 iterations: rank 1's second iteration (the last of the
    # first group, which would all-reduce the group's gradients) draws an unreadable video, so
    # that batch has 1 clip, too few for the channel gate's BatchNorm1d, and is skipped on all
    # ranks. The first iteration's gradients, accumulated under no_sync, differ per rank.
    root = tmp_path / "data"
    make_synthetic(str(root), num_videos_per_class=8, num_val_per_class=1, num_frames=8,
                   size=(40, 32), num_classes=2, seed=3)  # fmt: skip
    sampler = EpochSampler(16, num_replicas=2, rank=1, seed=0)  # main.py's order for epoch 1
    index = list(sampler)[2]  # rank 1, iteration 2 (0-based 1), first clip
    lines = (root / "synthetic" / "train_videofolder.txt").read_text().splitlines()
    folder = root / "synthetic" / "frames" / lines[index].split()[0]
    for jpg in folder.iterdir():
        jpg.write_bytes(b"not a jpeg")
    args = ["--epochs", "1", "--batch_size", "4", "--batch_multiplier", "2", *SPAWN]
    summary = train_main.main(tiny_args(str(root), str(tmp_path / "out"), *args))
    ckpt = load_checkpoint(tmp_path / "out" / "ckpt" / summary["run_name"] / "ckpt.pth.tar")
    assert len(ckpt["replica_checksums"]) == 2
    assert ckpt["replica_checksums"][0] == ckpt["replica_checksums"][1]
    with open(tmp_path / "out" / "log" / summary["run_name"] / "log.csv") as f:
        assert [row["skipped_videos"] for row in csv.DictReader(f)] == ["1"]  # the planted one


# ---- --compile keeps DDP's no_sync -----------------------------------------------------------------


def _gloo_pair(local_rank: int, port: int) -> du.DistContext:
    plan = du.LaunchPlan(
        mode="spawn", nprocs=2, nodes=1, world_size=2, node_rank=0, backend="gloo",
        dist_url=f"tcp://127.0.0.1:{port}", use_cuda=False, local_world_size=2,
    )  # fmt: skip
    return du.init_worker(plan, local_rank, timeout_minutes=5)


def _count_all_reduces(local_rank: int, port: int, out_dir: str) -> None:
    ctx = _gloo_pair(local_rank, port)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 4),
    )  # fmt: skip
    args = Namespace(compile=True, compile_backend="aot_eager")
    wrapped = train_main.training_model(model, args, ctx)  # DDP inside the compile wrapper
    calls = []

    def counting_hook(state, bucket):
        calls.append(bucket.index())
        return default_hooks.allreduce_hook(state, bucket)

    wrapped.module.register_comm_hook(None, counting_hook)
    g = torch.Generator().manual_seed(10 + ctx.rank)  # each rank its own data
    batches = [(torch.randn(2, 3, 8, 8, generator=g), torch.randint(0, 4, (2,), generator=g))]
    batches *= 8
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = WarmupSchedule(lr=0.1, epochs=1, lr_type="step", lr_steps=(10,))
    settings = LoopSettings(batch_multiplier=4, print_freq=100)
    parts = TrainParts(wrapped, nn.CrossEntropyLoss(), optimizer, schedule, settings, ctx)
    train_one_epoch(parts, batches, RunState(), iters_per_epoch=8)  # 2 optimizer steps
    during_training = len(calls)
    calls.clear()
    nn.functional.cross_entropy(wrapped(batches[0][0]), batches[0][1]).backward()
    per_sync = len(calls)  # buckets all-reduced by one synchronised backward
    result = dict(training=during_training, per_sync=per_sync, compiled=wrapped.compiled)
    result["checksum"] = param_checksum(model)
    with open(os.path.join(out_dir, f"rank{ctx.rank}.json"), "w") as f:
        json.dump(result, f)
    du.cleanup(ctx)


def test_compiled_ddp_all_reduces_once_per_optimizer_step(tmp_path):
    # --compile --compile_backend aot_eager with --batch_multiplier 4: DDP's no_sync must reach
    # through the compile wrapper, else every iteration all-reduces (4x the traffic).
    du.spawn(_count_all_reduces, 2, (du.free_port(), str(tmp_path)), forward_signals=False)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in results:
        assert r["compiled"] and r["per_sync"] >= 1
        assert r["training"] == 2 * r["per_sync"]  # 2 optimizer steps, one all-reduce each
    assert results[0]["checksum"] == results[1]["checksum"]


# ---- resume decided once, without a shared filesystem ----------------------------------------------


def _resume_in_own_folder(local_rank: int, port: int, nodes: list[str], out_dir: str) -> None:
    ctx = _gloo_pair(local_rank, port)
    os.chdir(nodes[ctx.rank])  # each rank's "node": its own disk, the same relative paths
    path, ckpt = resume_checkpoint("auto", os.path.join("ckpt", "run"), ctx)
    got = {"path": path, "epoch": ckpt["epoch"], "w": ckpt["state_dict"]["w"].tolist()}
    with open(os.path.join(out_dir, f"rank{ctx.rank}.json"), "w") as f:
        json.dump(got, f)
    du.cleanup(ctx)


def test_resume_auto_is_rank_0s_choice_and_its_file_reaches_ranks_without_it(tmp_path):
    # Rank 0's disk has the run's checkpoint (epoch 3); rank 1's has an old copy at the same
    # path (epoch 1), as when nodes do not share a filesystem. Both must resume from rank 0's.
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node, (epoch, w) in zip(nodes, [(3, [1.0, 2.0]), (1, [9.0])]):
        state = {"epoch": epoch, "state_dict": {"w": torch.tensor(w)}}
        save_checkpoint(state, node / "ckpt" / "run" / "ckpt.pth.tar")
    du.spawn(
        _resume_in_own_folder,
        2,
        (du.free_port(), [str(n) for n in nodes], str(tmp_path)),
        forward_signals=False,
    )
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(g["epoch"], g["w"]) for g in got] == [(3, [1.0, 2.0])] * 2
    # the rank's view of its disk is untouched: it only read rank 0's bytes
    assert torch.load(nodes[1] / "ckpt" / "run" / "ckpt.pth.tar")["epoch"] == 1


# ---- loader workers ignore stop signals whatever the start method --------------------------------

_WORKER_START = """
import json, os, signal, sys, threading, time
from torch.utils.data import DataLoader, Dataset
from ops.engine.stop import StopRequest, loader_worker_init, stop_signals_blocked

class Slow(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        time.sleep(0.05)
        return i

if __name__ == "__main__":
    method, delay = sys.argv[1], float(sys.argv[2])
    stop = StopRequest().install()
    loader = DataLoader(Slow(), batch_size=2, num_workers=2, multiprocessing_context=method,
                        worker_init_fn=loader_worker_init())
    timer = threading.Timer(delay, os.killpg, (0, signal.SIGTERM))
    if delay > 0:  # while the workers still start (spawn / forkserver workers import torch)
        timer.start()
    with stop_signals_blocked(loader):  # as the training loop starts its workers
        batches = iter(loader)
        if delay == 0:
            os.killpg(0, signal.SIGTERM)  # a scheduler's SIGTERM to the whole process group
    got = [b.tolist() for b in batches]
    if delay > 0:  # forked workers may deliver every batch before the timer fires
        timer.join()
        time.sleep(0.2)  # the handler runs in this thread at its next instruction
    print(json.dumps(dict(got=got, requested=stop.requested, by=stop.signal_name)))
"""


@pytest.mark.parametrize("delay", [0.0, 0.3])
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_sigterm_while_loader_workers_start_reaches_only_the_training_process(
    tmp_path, method, delay
):
    # Workers ignored the stop signals only because fork copies the blocked signal mask: with
    # forkserver (Python 3.14's default) or spawn, a SIGTERM to the group during their start-up
    # killed them ("DataLoader worker exited unexpectedly").
    script = tmp_path / "workers.py"
    script.write_text(_WORKER_START)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(script), method, str(delay)], env=env,
        capture_output=True, text=True, timeout=300, start_new_session=True,  # its own group
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["got"] == [[0, 1], [2, 3], [4, 5], [6, 7]]  # every batch, from live workers
    assert result["requested"] and result["by"] == "SIGTERM"  # the training process saw it
