"""What a run does when things go wrong: NaN loss, a failed checkpoint write, SIGTERM, a dead rank.

Each test first trains one epoch of a tiny TSM + RNL model (see tests/test_main.py) so that a
good checkpoint exists, then provokes the fault and checks that the good checkpoint survived and
that the message says what happened.
"""

import csv
import errno
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import main as train_main
from ops.checkpoint import load_checkpoint
from ops.synthetic import make_synthetic
from tests.test_main import assert_same_state, tiny_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def first_epoch(data_root, out):
    """Train epoch 1 of 2 and return (run dir, {file: sha256})."""
    summary = train_main.main(
        tiny_args(data_root, str(out), "--epochs", "2", "--stop_after_epochs", "1")
    )
    run_dir = out / "ckpt" / summary["run_name"]
    files = {f: sha(run_dir / f) for f in ("ckpt.pth.tar", "ckpt.best.pth.tar")}
    return run_dir, files


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(
    data_root, tmp_path, monkeypatch
):
    run_dir, before = first_epoch(data_root, tmp_path)
    real_forward = torch.nn.CrossEntropyLoss.forward
    calls = {"n": 0}

    def nan_on_third_call(self, input, target):
        calls["n"] += 1
        loss = real_forward(self, input, target)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", nan_on_third_call)
    with pytest.raises(SystemExit) as exc:
        train_main.main(tiny_args(data_root, str(tmp_path), "--epochs", "2", "--resume", "auto"))
    message = str(exc.value.code)
    # The resumed run starts at epoch 2; its third loss is iteration 3 of 4.
    assert "loss became NaN at epoch 2, iteration 3/4" in message and "\n" not in message
    assert {f: sha(run_dir / f) for f in before} == before
    assert sorted(os.listdir(run_dir)) == sorted([*before, "run_config.json"])


def test_failed_checkpoint_write_keeps_the_previous_one_and_says_so(
    data_root, tmp_path, monkeypatch
):
    run_dir, before = first_epoch(data_root, tmp_path)
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"half a checkpoint")  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(SystemExit) as exc:
        train_main.main(tiny_args(data_root, str(tmp_path), "--epochs", "2", "--resume", "auto"))
    monkeypatch.setattr(torch, "save", real_save)
    message = str(exc.value.code)
    assert "No space left on device" in message
    assert "the previous checkpoint there is intact" in message and "\n" not in message
    assert {f: sha(run_dir / f) for f in before} == before  # byte-identical, no temp files
    assert sorted(os.listdir(run_dir)) == sorted([*before, "run_config.json"])
    assert load_checkpoint(run_dir / "ckpt.pth.tar")["epoch"] == 1


def _start(args, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "main.py"), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _wait_for(proc, needle: str, timeout: float) -> list[str]:
    lines = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    proc.kill()
    raise AssertionError(f"{needle!r} not seen in time; output:\n{''.join(lines)}")


@pytest.fixture(scope="module")
def longer_root(tmp_path_factory):
    # 2 classes x 12 videos: 12 iterations of 2 clips per epoch, so a signal lands mid-epoch.
    root = tmp_path_factory.mktemp("data_long")
    make_synthetic(
        str(root),
        num_videos_per_class=12,
        num_val_per_class=1,
        num_frames=8,
        size=(40, 32),
        num_classes=2,
        seed=1,
    )
    return str(root)


def test_batch_too_small_for_the_channel_gate_is_a_clear_error(data_root, tmp_path):
    with pytest.raises(SystemExit) as exc:
        train_main.main(tiny_args(data_root, str(tmp_path), "--epochs", "1", "--batch_size", "1"))
    assert "raise --batch_size" in str(exc.value.code)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_resumable_checkpoint_that_continues_exactly(longer_root, tmp_path, sig):
    args = ["--epochs", "2", "--batch_multiplier", "2"]
    proc = _start(tiny_args(longer_root, str(tmp_path / "stopped"), *args), tmp_path)
    _wait_for(proc, "Epoch: [1][2/12]", timeout=120)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert f"stopped by {sig.name}" in out
    name = train_main.run_name(train_main.parse_args(tiny_args(longer_root, "x", *args)))
    ckpt = load_checkpoint(tmp_path / "stopped" / "ckpt" / name / "ckpt.pth.tar")
    # Stopped at an optimizer-step boundary (every 2 iterations) inside epoch 1.
    assert ckpt["epoch"] == 0 and 2 <= ckpt["iteration"] < 12 and ckpt["iteration"] % 2 == 0

    resumed = train_main.main(
        tiny_args(longer_root, str(tmp_path / "stopped"), *args, "--resume", "auto")
    )
    full = train_main.main(tiny_args(longer_root, str(tmp_path / "full"), *args))
    a = load_checkpoint(tmp_path / "stopped" / "ckpt" / resumed["run_name"] / "ckpt.pth.tar")
    b = load_checkpoint(tmp_path / "full" / "ckpt" / full["run_name"] / "ckpt.pth.tar")
    assert a["epoch"] == b["epoch"] == 2
    assert_same_state(a["state_dict"], b["state_dict"])


def test_killed_rank_makes_the_run_exit_with_a_clear_error(data_root, tmp_path):
    args = tiny_args(
        data_root,
        str(tmp_path),
        "--epochs",
        "50",
        "--batch_size",
        "4",
        "--multiprocessing-distributed",
        "--cpu_procs",
        "2",
        "--dist_timeout",
        "0.5",
    )
    proc = _start(args, tmp_path)
    _wait_for(proc, "Epoch: [1][1/", timeout=180)
    children = subprocess.run(
        ["pgrep", "-P", str(proc.pid), "-f", "spawn_main"], capture_output=True, text=True
    ).stdout.split()
    assert len(children) == 2, children
    os.kill(int(children[-1]), signal.SIGKILL)
    start = time.time()
    out, _ = proc.communicate(timeout=120)
    assert time.time() - start < 60
    assert proc.returncode != 0
    errors = [line for line in out.splitlines() if line.startswith("main.py: error:")]
    assert len(errors) == 1, out
    assert "worker" in errors[0] and "killed by signal 9 (SIGKILL)" in errors[0]
    # The survivor's own "lost contact with another rank" line is raced by the parent terminating
    # it; tests/test_distributed.py checks that a survivor on its own fails instead of waiting.
    assert "Traceback" not in out


def test_a_stop_during_validation_keeps_the_epoch_and_validates_it_on_resume(
    data_root, tmp_path, monkeypatch
):
    # SIGTERM arrives as epoch 1's validation starts. That validation must stop within a batch
    # (not overrun the launcher's grace period), the checkpoint must keep the trained epoch
    # marked "validation pending", and the resumed run must validate epoch 1 first: the logs
    # and the weights end as those of an uninterrupted run.
    real_validate = train_main.validate
    calls = []

    def preempted_validate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the run's StopRequest
        return real_validate(*args, **kwargs)

    extra = ["--epochs", "2"]
    monkeypatch.setattr(train_main, "validate", preempted_validate)
    stopped = train_main.main(tiny_args(data_root, str(tmp_path / "parts"), *extra))
    monkeypatch.setattr(train_main, "validate", real_validate)
    run_dir = tmp_path / "parts" / "ckpt" / stopped["run_name"]
    ckpt = load_checkpoint(run_dir / "ckpt.pth.tar")
    assert (ckpt["epoch"], ckpt["iteration"], ckpt["validation_pending"]) == (1, 0, True)
    assert not (run_dir / "ckpt.best.pth.tar").exists()  # nothing validated yet
    log = tmp_path / "parts" / "log" / stopped["run_name"] / "log.csv"
    assert log.read_text().count("\n") == 1  # the header only: epoch 1's row comes on resume

    resumed = train_main.main(
        tiny_args(data_root, str(tmp_path / "parts"), *extra, "--resume", "auto")
    )
    full = train_main.main(tiny_args(data_root, str(tmp_path / "full"), *extra))
    assert resumed["best_prec1"] == full["best_prec1"]
    a = load_checkpoint(run_dir / "ckpt.pth.tar")
    b = load_checkpoint(tmp_path / "full" / "ckpt" / full["run_name"] / "ckpt.pth.tar")
    assert_same_state(a["state_dict"], b["state_dict"])
    for name in ("ckpt.pth.tar", "ckpt.best.pth.tar"):
        assert (run_dir / name).exists()
    with open(log) as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "full" / "log" / full["run_name"] / "log.csv") as f:
        expected = list(csv.DictReader(f))
    same = ("epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "best_top1")
    assert [[r[k] for k in same] for r in rows] == [[r[k] for k in same] for r in expected]
