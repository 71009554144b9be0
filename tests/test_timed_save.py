"""--save_every (issue 25, item 6): a run killed without warning loses minutes, not an epoch.

In-process: the clock (rank 0's only), where in an epoch a due save lands (an optimizer-step
boundary past the epoch's first iteration, with the weights of the steps before it), and two
gloo processes that save at the same iterations although only rank 0's clock is due.
As users run it: `python main.py` with real loader workers (-j 2), 1 process and 2 spawned gloo
processes, SIGKILL to the whole process group at a random step, then `--resume auto`: the final
weights and optimizer state are those of the uninterrupted run, bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import main as train_main
from ops import distributed as du
from ops.checkpoint import load_checkpoint
from ops.engine.lr_scheduler import WarmupSchedule
from ops.engine.state import RunState
from ops.engine.timed_save import SaveClock
from ops.engine.trainer import LoopSettings, TrainParts, train_one_epoch
from ops.synthetic import make_synthetic
from tests.test_main import assert_same_state, tiny_args
from tests.test_trainer import _batch, _model  # the same tiny model and batches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = du.DistContext(False, 0, 1, 0, 1, torch.device("cpu"), None)


class FakeTime:
    """A clock that returns the given readings in turn (then keeps the last)."""

    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


def test_the_clock_is_due_after_its_minutes_counted_from_the_last_reset_on_rank_0_only():
    clock = SaveClock(0.5, is_main=True, now=FakeTime(100.0, 129.0, 130.0, 131.0, 150.0, 161.0))
    assert not clock.due()  # 29 s after it was made
    assert clock.due()  # 30 s
    clock.reset()  # at 131 s
    assert not clock.due()  # 19 s after the reset
    assert clock.due()  # 30 s after it
    assert not SaveClock(0.5, is_main=False, now=FakeTime(0.0, 1e9)).due()  # rank 1, 2, ...
    assert not SaveClock(0.0, is_main=True, now=FakeTime(0.0, 1e9)).due()  # --save_every 0: off


def test_a_due_save_lands_on_a_step_boundary_with_the_weights_of_the_steps_before_it():
    # 6 iterations in groups of 2 (--batch_multiplier 2), a clock due at every iteration: the
    # saves come before iterations 2 and 4 (not 0: the position already saved; not the odd
    # iterations: inside a group, not exactly resumable), each with the weights of the SGD
    # steps before it, computed here by hand.
    batches = [_batch(i) for i in range(6)]
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = WarmupSchedule(lr=0.1, epochs=1, lr_type="step", lr_steps=(10,))
    settings = LoopSettings(batch_multiplier=2, print_freq=100)
    clock = SaveClock(1e-9, is_main=True)
    parts = TrainParts(model, nn.CrossEntropyLoss(), optimizer, schedule, settings, CPU,
                       save_clock=clock)  # fmt: skip
    saved: dict[int, list[torch.Tensor]] = {}

    def save_at(i: int) -> None:
        saved[i] = [p.detach().clone() for p in model.parameters()]

    train_one_epoch(parts, batches, RunState(), iters_per_epoch=6, save_at=save_at)
    assert sorted(saved) == [2, 4]
    expected = _model()
    reference = torch.optim.SGD(expected.parameters(), lr=0.1, momentum=0.9)
    for group in range(2):
        reference.zero_grad()
        for x, y in batches[2 * group : 2 * group + 2]:
            (nn.functional.cross_entropy(expected(x), y) / 2).backward()
        reference.step()
        for a, b in zip(saved[2 * group + 2], expected.parameters()):
            torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)


def _two_ranks_save(local_rank: int, port: int, out_dir: str) -> None:
    plan = du.LaunchPlan(
        mode="spawn", nprocs=2, nodes=1, world_size=2, node_rank=0, backend="gloo",
        dist_url=f"tcp://127.0.0.1:{port}", use_cuda=False, local_world_size=2,
    )  # fmt: skip
    ctx = du.init_worker(plan, local_rank, timeout_minutes=1.0)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = WarmupSchedule(lr=0.1, epochs=1, lr_type="step", lr_steps=(10,))
    if ctx.rank == 0:  # due 10 s after it was made: before iteration 3; then 10 s after that
        readings = (0.0, 1.0, 2.0, 5.0, 10.0, 10.0, 12.0, 13.0, 14.0)
    else:  # rank 1's own clock would be due at once: it must not count
        readings = (0.0, 1e6)
    clock = SaveClock(10 / 60, is_main=ctx.is_main, now=FakeTime(*readings))
    parts = TrainParts(model, nn.CrossEntropyLoss(), optimizer, schedule,
                       LoopSettings(print_freq=100), ctx, save_clock=clock)  # fmt: skip
    saves: list[int] = []
    batches = [_batch(10 * ctx.rank + i) for i in range(6)]
    train_one_epoch(parts, batches, RunState(), iters_per_epoch=6, save_at=saves.append)
    with open(os.path.join(out_dir, f"rank{ctx.rank}.json"), "w") as f:
        json.dump(saves, f)
    du.cleanup(ctx)


def test_two_ranks_save_at_the_same_step_decided_by_rank_0s_clock(tmp_path):
    du.spawn(_two_ranks_save, 2, (du.free_port(), str(tmp_path)), forward_signals=False)
    saves = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert saves == [[3], [3]]


# ---------------------------------------------------------------------------------------------
# SIGKILL at a random step, then --resume auto
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root16(tmp_path_factory) -> str:
    """2 classes x 8 training videos: 4 iterations of 2 x 2 clips per epoch on two processes."""
    root = tmp_path_factory.mktemp("data16")
    make_synthetic(str(root), num_videos_per_class=8, num_val_per_class=1, num_frames=8,
                   size=(40, 32), num_classes=2, seed=3)  # fmt: skip
    return str(root)


def _start(argv: list[str], cwd) -> subprocess.Popen:
    # The same number of threads as the in-process runs it is compared with: another one sums
    # in another order, and the weights would differ in their last bits.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "main.py"), *argv], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _kill_at(proc: subprocess.Popen, needle: str, timeout: float = 300) -> str:
    """Read `proc`'s output until `needle`, then SIGKILL its whole process group (the ranks and
    their loader workers, as a dead node would)."""
    lines, deadline = [], time.time() + timeout
    for line in proc.stdout:
        lines.append(line)
        if needle in line or time.time() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    text = "".join(lines)
    assert needle in text, f"{needle!r} never came:\n{text[-3000:]}"
    return text


def killed_and_resumed_ends_as_uninterrupted(root: str, tmp_path, extra: list[str], n: int):
    """Train 2 epochs of `n` iterations uninterrupted, and again killed (SIGKILL) after a random
    step with --save_every 0.0001 (6 ms: a save before nearly every step), then --resume auto;
    both end with the same weights and optimizer state."""
    seed = random.randrange(1 << 30)
    k = random.Random(seed).randrange(2, 2 * n)  # the global step after which the kill comes
    epoch, it = (k - 1) // n + 1, (k - 1) % n + 1
    where = f"killed after step [{epoch}][{it}/{n}] (seed {seed})"
    args = ["--epochs", "2", "--workers", "2", "--save_every", "0.0001", *extra]
    killed = tiny_args(root, str(tmp_path / "killed"), *args)
    text = _kill_at(_start(killed, tmp_path), f"Epoch: [{epoch}][{it}/{n}]")
    run_dir = os.path.join(
        str(tmp_path / "killed"), "ckpt", train_main.run_name(train_main.parse_args(killed))
    )
    left = load_checkpoint(os.path.join(run_dir, "ckpt.pth.tar"))
    # The step before the one whose line came was saved (its save precedes that step): at most
    # one step is lost, where without --save_every the whole epoch would be.
    assert left["epoch"] * n + left["iteration"] >= k - 1, f"{where}: {text[-2000:]}"
    assert left["epoch"] * n + left["iteration"] < 2 * n, where  # the kill came before the end

    resumed = train_main.main([*killed, "--resume", "auto"])
    full = train_main.main(tiny_args(root, str(tmp_path / "full"), *args))
    a = load_checkpoint(os.path.join(full["model_dir"], "ckpt.pth.tar"))
    b = load_checkpoint(os.path.join(resumed["model_dir"], "ckpt.pth.tar"))
    assert a["epoch"] == b["epoch"] == 2 and a["iteration"] == b["iteration"] == 0, where
    assert_same_state(a["state_dict"], b["state_dict"])
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"]), where
    return left


def test_sigkill_at_a_random_step_loses_one_step_and_resume_auto_ends_exactly(data_root, tmp_path):
    killed_and_resumed_ends_as_uninterrupted(data_root, tmp_path, [], n=4)


@pytest.mark.slow
def test_sigkill_of_two_gloo_ranks_at_a_random_step_then_resume_auto_ends_exactly(
    root16, tmp_path
):
    spawn = ["--multiprocessing-distributed", "--cpu_procs", "2", "--dist-backend", "gloo"]
    left = killed_and_resumed_ends_as_uninterrupted(
        root16, tmp_path, [*spawn, "--batch_size", "4"], n=4
    )
    assert left["world_size"] == 2 and len(left["rng_states"]) == 2
