"""A stop is honoured in every pass that reads data (issue 24): SIGTERM sent to main.py's whole
process group (as torchrun and SLURM send it: loader workers included, `-j 2`) while precise BN,
the validation, the EMA validation or the demo's evaluation reads its batches ends the run
within a batch, with the trained epoch saved; `--resume auto` then runs the passes again and ends
with the uninterrupted run's weights, statistics and log (a pass's result does not depend on
how far a stopped one got). (A stop during training is
tests/test_faults.py's and tests/test_cluster.py's.)

The runs read every clip 2 s more slowly (tests/_slow_main.py), so that each pass lasts long
enough for the signal to arrive while it runs; the test sends it when the run logs that the pass
starts.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

import main as train_main
from ops.checkpoint import load_checkpoint
from tests.test_main import assert_same_state, tiny_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOW_S = 2.0  # extra seconds per clip read
OPTIONS = ["--epochs", "1", "--ema", "0.9", "--precise_bn", "2", "--workers", "2"]
# The log line that starts each pass, and one that only its end would write.
PASSES = {
    "precise BN": ("epoch 1: precise BN over", "epoch 1: validation"),
    "validation": ("epoch 1: validation", "Testing Results"),
    "EMA validation": ("epoch 1: validation of the EMA weights", "EMA weights: Prec@1"),
}


def start_slow(argv: list[str], cwd) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=REPO)
    script = os.path.join(REPO, "tests", "_slow_main.py")
    return subprocess.Popen(
        [sys.executable, script, str(SLOW_S), *argv], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def stop_when(proc: subprocess.Popen, needle: str) -> tuple[str, float]:
    """Send SIGTERM to the process group when `needle` is logged; (all output, seconds from the
    signal to the exit)."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            os.killpg(proc.pid, signal.SIGTERM)
            sent = time.monotonic()
            rest = proc.communicate(timeout=600)[0]
            return "".join(lines) + rest, time.monotonic() - sent
    proc.wait()
    raise AssertionError(f"{needle!r} was never logged:\n{''.join(lines[-40:])}")


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    summary = train_main.main(tiny_args(data_root, str(out), *OPTIONS))
    return out, summary


def _rows(log_dir) -> list[list[str]]:
    with open(os.path.join(log_dir, "log.csv")) as f:
        keys = ("epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "best_top1")
        return [[r[k] for k in keys] for r in csv.DictReader(f)]


@pytest.mark.parametrize(
    "name",
    [
        "precise BN",
        pytest.param("validation", marks=pytest.mark.slow),
        pytest.param("EMA validation", marks=pytest.mark.slow),
    ],
)
def test_sigterm_during_a_validation_pass_keeps_the_epoch(name, data_root, uninterrupted, tmp_path):
    starts, ends = PASSES[name]
    argv = tiny_args(data_root, str(tmp_path), *OPTIONS)
    out, seconds = stop_when(start_slow(argv, tmp_path), starts)
    assert "stopped by SIGTERM while validating epoch 1 (validated on resume)" in out, out[-3000:]
    assert ends not in out.split(starts, 1)[1], out[-3000:]  # the pass did not run to its end
    assert seconds < 60, out[-3000:]  # within a batch (2 clips of 2 s), not after the passes
    assert "Traceback" not in out  # the loader workers ignored the signal sent to the group
    run_dir = tmp_path / "ckpt" / train_main.run_name(train_main.parse_args(argv))
    ckpt = load_checkpoint(run_dir / "ckpt.pth.tar")  # the trained epoch, saved at the stop
    assert (ckpt["epoch"], ckpt["iteration"], ckpt["validation_pending"]) == (1, 0, True)
    assert not (run_dir / "ckpt.best.pth.tar").exists()

    resumed = train_main.main(argv + ["--resume", "auto"])  # runs the passes again
    full_dir, full = uninterrupted
    assert resumed["best_prec1"] == full["best_prec1"]
    assert resumed["ema_val_top1"] == full["ema_val_top1"]
    a = load_checkpoint(run_dir / "ckpt.pth.tar")
    b = load_checkpoint(os.path.join(full["model_dir"], "ckpt.pth.tar"))
    assert_same_state(a["state_dict"], b["state_dict"])  # precise BN's statistics included
    assert_same_state(a["ema"]["state_dict"], b["ema"]["state_dict"])
    log = tmp_path / "log" / resumed["run_name"]
    assert _rows(log) == _rows(full_dir / "log" / full["run_name"])


def test_sigterm_during_the_demo_evaluation_ends_it_and_keeps_the_run(data_root, tmp_path):
    # The demo (no --dataset) on the tiny dataset, one epoch; the signal comes while its final
    # evaluation reads the validation videos: no result is printed, the run stays saved, and
    # the demo run again evaluates it without training.
    argv = ["--data_root", data_root, "--epochs", "1", "--warmup_epochs", "0", "-b", "2"]
    argv += ["--num_segments", "4", "--workers", "2", "--root_model", str(tmp_path / "ckpt")]
    argv += ["--root_log", str(tmp_path / "log")]
    proc = start_slow(["--no-demo-data", *argv], tmp_path)
    out, seconds = stop_when(proc, "demo: evaluating the best checkpoint")
    assert proc.returncode == 0, out[-3000:]
    assert "demo evaluation stopped by SIGTERM" in out and "top-1" not in out, out[-3000:]
    assert seconds < 60 and "Traceback" not in out, out[-3000:]
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(train_main, "prepare_demo_data", lambda data_root: None)
    try:
        again = train_main.main(argv)
    finally:
        monkeypatch.undo()
    assert again["demo_eval"]["num_videos"] == 4 and again["best_prec1"] >= 0
