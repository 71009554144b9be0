"""Issue 19, training side: no silent wrong result, no lost run, one line for every bad input.

Each test runs main.py on the tiny synthetic dataset of tests/test_main.py (2 classes x 4 videos,
ResNet-18 TSM + RNL at 32 px): the NaN case and the run-name collision go through the real
command line in a subprocess, the others call ``main.main`` in-process (seconds each).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
import torch
import torchvision

import main as train_main
from ops.checkpoint import load_checkpoint, save_checkpoint
from ops.engine import run_logger
from ops.engine.run_folder import clear_run
from ops.synthetic import make_tiny
from tests.test_main import tiny_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_cli(argv: list[str], cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "main.py"), *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one-line error main.py ends with; the run must not print a traceback."""
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("main.py: error: "), proc.stderr[-2000:]
    return last


def one_line_exit(argv: list[str]) -> str:
    """Run main.main in-process; return its one-line SystemExit message."""
    with pytest.raises(SystemExit) as exc:
        train_main.main(argv)
    message = str(exc.value.code)
    assert "\n" not in message and "Traceback" not in message
    return message


def run_dir(out, argv) -> str:
    return os.path.join(out, "ckpt", train_main.run_name(train_main.parse_args(argv)))


# ---------------------------------------------------------------------------------------------
# silent wrong results
# ---------------------------------------------------------------------------------------------
def test_cli_huge_lr_ends_with_one_line_and_no_best_checkpoint(data_root, tmp_path):
    # One step (8 clips, batch 8) at lr 1e20 makes the weights ~1e18: validation's loss is NaN.
    # Today the run exits 0 with a "best" checkpoint of those weights.
    argv = tiny_args(data_root, str(tmp_path), "--epochs", "1", "--lr", "1e20", "--wd", "0")
    proc = run_cli([*argv, "-b", "8"], tmp_path)
    line = error_line(proc)
    assert "validation after epoch 1: the loss is nan" in line and "--lr" in line
    folder = run_dir(str(tmp_path), argv)
    assert not [f for f in os.listdir(folder) if f.startswith("ckpt")]


def test_cli_lr_nan_is_refused_at_once(data_root, tmp_path):
    proc = run_cli(tiny_args(data_root, str(tmp_path), "--lr", "nan"), tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("error: --lr must be a number in [0, 1e30), got nan")
    )
    assert not (tmp_path / "ckpt").exists()


def test_weights_are_checked_finite_before_every_save(data_root, tmp_path, monkeypatch):
    # A NaN that the training loss does not see (a BatchNorm running variance: training uses
    # the batch's statistics) and no validation before the save (--eval-freq 2): only the
    # check before the save stands between it and the checkpoint.
    models = []
    real_build, real_step = train_main.build_model, torch.optim.SGD.step

    def build_and_keep(*args, **kwargs):
        models.append(real_build(*args, **kwargs))
        return models[0]

    def step_then_nan(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        models[0].base_model.bn1.running_var[3] = float("nan")
        return out

    monkeypatch.setattr(train_main, "build_model", build_and_keep)
    monkeypatch.setattr(torch.optim.SGD, "step", step_then_nan)
    argv = tiny_args(data_root, str(tmp_path), "--epochs", "2", "--eval-freq", "2", "-b", "8")
    message = one_line_exit([*argv, "--stop_after_epochs", "1"])
    assert "the weights are not finite after epoch 1" in message
    assert "1 NaN/Inf values, first in base_model.bn1.running_var" in message
    assert not [f for f in os.listdir(run_dir(str(tmp_path), argv)) if f.startswith("ckpt")]


@pytest.mark.parametrize("flag", [["--lr", "nan"], ["--lr", "inf"], ["--wd", "-1"]])
def test_nonfinite_or_negative_lr_and_wd_are_refused(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        train_main.parse_args(["--dataset", "synthetic", *flag])
    assert exc.value.code == 2 and f"{flag[0]} must be a number in [0, 1e30)" in (
        capsys.readouterr().err
    )


@pytest.fixture
def own_data(tmp_path):
    """A private copy of the tiny dataset (tests below delete or damage parts of it)."""
    root = tmp_path / "data"
    make_tiny(root)
    return root


def test_a_training_list_that_reads_nothing_is_an_error_before_the_first_step(own_data, tmp_path):
    shutil.rmtree(own_data / "synthetic" / "frames")  # every frame folder missing
    argv = tiny_args(str(own_data), str(tmp_path / "out"), "--epochs", "1")
    message = one_line_exit(argv)
    assert "--train_list" in message and "train_videofolder.txt" in message
    assert "none of its first 8 videos can be read" in message and "frame folder" in message
    assert not os.path.exists(os.path.join(run_dir(str(tmp_path / "out"), argv), "ckpt.pth.tar"))


def test_a_validation_list_whose_frames_are_all_missing_is_an_error_before_training(
    own_data, tmp_path, capsys
):
    # It was noticed only after the first epoch, whose weights were then not saved.
    with open(own_data / "synthetic" / "val_videofolder.txt") as f:
        for line in f:
            for jpg in (own_data / "synthetic" / "frames" / line.split()[0]).iterdir():
                jpg.unlink()  # the folders stay, every frame is missing
    argv = tiny_args(str(own_data), str(tmp_path / "out"), "--epochs", "1")
    message = one_line_exit(argv)
    assert "--val_list" in message and "val_videofolder.txt" in message
    assert "none of its first 4 videos can be read" in message
    assert "Epoch: [1]" not in capsys.readouterr().err  # no training step ran
    assert not os.path.exists(os.path.join(run_dir(str(tmp_path / "out"), argv), "ckpt.pth.tar"))


def test_a_validation_list_equal_to_the_training_list_is_warned(
    data_root, tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(train_main, "setup_logging", lambda rank=0: None)  # keep caplog's handler
    train_list = os.path.join(data_root, "synthetic", "train_videofolder.txt")
    argv = tiny_args(data_root, str(tmp_path / "out"), "--epochs", "1", "--val_list", train_list)
    with caplog.at_level(logging.WARNING):
        train_main.main(argv)
    warned = [r.getMessage() for r in caplog.records if "--val_list" in r.getMessage()]
    assert len(warned) == 1 and "the same file" in warned[0] and "training accuracy" in warned[0]


def test_validation_videos_that_are_also_training_videos_are_counted(
    own_data, tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(train_main, "setup_logging", lambda rank=0: None)  # keep caplog's handler
    lists = own_data / "synthetic"
    val = (lists / "val_videofolder.txt").read_text().splitlines()
    train = (lists / "train_videofolder.txt").read_text().splitlines()
    mixed = tmp_path / "val.txt"
    mixed.write_text("\n".join(val[:2] + train[:3]) + "\n")
    argv = tiny_args(str(own_data), str(tmp_path / "out"), "--epochs", "1", "--val_list", str(mixed))
    with caplog.at_level(logging.WARNING):
        train_main.main(argv)
    warned = [r.getMessage() for r in caplog.records if "also" in r.getMessage()]
    assert len(warned) == 1 and "3 of the 5 videos of --val_list" in warned[0]


@pytest.mark.parametrize("resume", [[], ["--resume", "auto"]])
def test_evaluate_without_a_checkpoint_is_an_error(data_root, tmp_path, resume):
    message = one_line_exit(tiny_args(data_root, str(tmp_path), "--evaluate", *resume))
    assert "--evaluate needs trained weights" in message
    assert ("found none in" in message) == bool(resume)


@pytest.mark.parametrize("div", ["0", "-4", "2", "100000"])
def test_shift_div_that_shifts_no_or_every_channel_is_refused(data_root, tmp_path, div, capsys):
    argv = tiny_args(data_root, str(tmp_path), "--shift_div", div, "--dry_run")
    with pytest.raises(SystemExit) as exc:
        train_main.main(argv)
    text = str(exc.value.code) + capsys.readouterr().err
    assert f"--shift_div {div}" in text and "must be >= 3" in text
    assert "Traceback" not in text and "ZeroDivisionError" not in text


@pytest.mark.parametrize(
    "flags", [["--nl_where", "layer2.0"], ["--nl_options", "{}"], ["--nl_type", "nl"]]
)
def test_non_local_settings_without_non_local_are_refused(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        train_main.parse_args(["--dataset", "synthetic", "--no-non_local", *flags])
    assert exc.value.code == 2
    assert f"{flags[0]} given without --non_local" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# lost work
# ---------------------------------------------------------------------------------------------
def test_cli_same_run_name_with_other_flags_does_not_overwrite(data_root, tmp_path):
    first = tiny_args(data_root, str(tmp_path), "--epochs", "1")
    train_main.main(first)
    folder = run_dir(str(tmp_path), first)
    before = {f: sha(os.path.join(folder, f)) for f in ("ckpt.pth.tar", "ckpt.best.pth.tar")}

    # Same run name (the seed is not part of it): refused, the first run's files untouched.
    proc = run_cli([*first, "--seed", "1"], tmp_path)
    line = error_line(proc)
    assert folder in line and "--seed 0 there vs 1 now" in line and "--overwrite" in line
    # The same flags without --resume: refused too (it would retrain over the finished run).
    line = error_line(run_cli(first, tmp_path))
    assert "already holds this run" in line and "--resume auto" in line
    assert {f: sha(os.path.join(folder, f)) for f in before} == before
    with open(os.path.join(folder, "run_config.json")) as f:
        assert json.load(f)["seed"] == 0

    # --overwrite replaces it and says so; the stored config is the new run's.
    proc = run_cli([*first, "--seed", "1", "--overwrite"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--overwrite: removed the previous run's files" in proc.stderr
    with open(os.path.join(folder, "run_config.json")) as f:
        assert json.load(f)["seed"] == 1
    with open(tmp_path / "log" / os.path.basename(folder) / "log.csv") as f:
        assert [r.split(",")[0] for r in f.read().split()] == ["epoch", "1"]


def test_a_full_log_disk_keeps_the_epochs_checkpoint(data_root, tmp_path, monkeypatch):
    real_open = open

    def full_disk(path, mode="r", *args, **kwargs):
        if str(path).endswith("log.csv") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(run_logger, "open", full_disk, raising=False)
    argv = tiny_args(data_root, str(tmp_path), "--epochs", "2")
    message = one_line_exit(argv)
    assert "cannot write the run log" in message and "log.csv" in message
    assert "No space left on device" in message and "--resume auto" in message
    ckpt = load_checkpoint(os.path.join(run_dir(str(tmp_path), argv), "ckpt.pth.tar"))
    assert ckpt["epoch"] == 1  # the epoch whose log row failed is saved


def test_resume_from_an_earlier_checkpoint_rewrites_its_log_rows(data_root, tmp_path):
    argv = tiny_args(data_root, str(tmp_path), "--epochs", "2")
    train_main.main([*argv, "--stop_after_epochs", "1"])
    folder = run_dir(str(tmp_path), argv)
    shutil.copy(os.path.join(folder, "ckpt.pth.tar"), tmp_path / "epoch1.pth.tar")
    train_main.main([*argv, "--resume", "auto"])  # epoch 2
    train_main.main([*argv, "--resume", str(tmp_path / "epoch1.pth.tar")])  # epoch 2 again
    with open(tmp_path / "log" / os.path.basename(folder) / "log.csv") as f:
        epochs = [row.split(",")[0] for row in f.read().split()]
    assert epochs == ["epoch", "1", "2"]


def test_save_removes_temp_files_of_a_killed_save_and_respects_the_umask(tmp_path):
    target = tmp_path / "ckpt.pth.tar"
    stale = tmp_path / "ckpt.pth.tar.k1ll3d9x.tmp"  # what save_checkpoint leaves when killed
    stale.write_bytes(b"x" * 1000)
    other = tmp_path / "notes.tmp"  # not ours: kept
    other.write_text("keep")
    old = os.umask(0o027)
    try:
        save_checkpoint({"state_dict": {"w": torch.ones(2)}}, target)
    finally:
        os.umask(old)
    assert not stale.exists() and other.exists()
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth.tar", "notes.tmp"]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640


# ---------------------------------------------------------------------------------------------
# one line instead of a traceback
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--root_model", "--root_log"])
def test_an_output_folder_that_is_a_file_is_one_line(data_root, tmp_path, flag):
    blocker = tmp_path / "in_the_way"
    blocker.write_text("a file where the output folder should go")
    argv = tiny_args(data_root, str(tmp_path), "--epochs", "1", flag, str(blocker))
    message = one_line_exit(argv)
    assert "cannot write" in message and str(blocker) in message and flag in message


def _bad_files(tmp_path) -> dict:
    readme = tmp_path / "README.md"
    readme.write_text("# not a checkpoint\n")
    payload = tmp_path / "payload.pth"

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(payload, "wb") as f:
        pickle.dump({"conv1.weight": Payload()}, f, protocol=2)
    shapes = tmp_path / "shapes.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, shapes)
    truncated = tmp_path / "truncated.pth"
    data = shapes.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    folder = tmp_path / "a_folder"
    folder.mkdir()
    integers = tmp_path / "integers.pth"  # the right keys and shapes, cast to integers
    model = train_main.TSN(2, 4, "RGB", base_model="resnet18", pretrain="scratch", is_shift=True,
                           non_local=True, print_spec=False)  # fmt: skip
    sd = {k: v.round().to(torch.int32) for k, v in model.state_dict().items()}
    # with a run's optimizer state, so that --resume gets as far as the weights (a weights-only
    # file is refused before, as one that cannot continue a run)
    optimizer = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    torch.save({"epoch": 1, "state_dict": sd, "optimizer": optimizer}, integers)
    backbone = tmp_path / "integer_backbone.pth"
    net = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({k: v.to(torch.int64) for k, v in net.items()}, backbone)
    return {"readme": readme, "payload": payload, "shapes": shapes, "truncated": truncated,
            "folder": folder, "integers": integers, "integer_backbone": backbone}  # fmt: skip


@pytest.mark.parametrize(
    "flag,kind,expected",
    [
        ("--pretrain", "readme", "is not a file written by torch.save"),
        ("--pretrain", "payload", "refused to load --pretrain file"),
        ("--pretrain", "shapes", "tensor(s) of other shapes"),
        ("--pretrain", "truncated", "incomplete or damaged"),
        ("--pretrain", "folder", "is a folder, not a file"),
        ("--tune_from", "readme", "is not a file written by torch.save"),
        ("--tune_from", "folder", "is a folder, not a file"),
        ("--resume", "folder", "is a folder, not a file"),
        ("--resume", "readme", "is not a file written by torch.save"),
        ("--tune_from", "integers", "are not floating point where the model's are"),
        ("--resume", "integers", "are not floating point where the model's are"),
        ("--pretrain", "integer_backbone", "are not floating point where the model's are"),
    ],
)
def test_bad_weight_files_are_one_line_naming_the_flag(data_root, tmp_path, flag, kind, expected):
    path = str(_bad_files(tmp_path)[kind])
    argv = tiny_args(data_root, str(tmp_path / "out"), "--epochs", "1")
    if flag == "--pretrain":
        argv = [a for a in argv if a not in ("--pretrain", "scratch")]
    argv += [flag, path]
    message = one_line_exit(argv)
    assert expected in message and flag in message and path in message
    assert "weights_only=False" not in message and "does not exist" not in message
    assert not (tmp_path / "pwned").exists()


def test_demo_run_again_continues_the_finished_run(data_root, tmp_path, monkeypatch, capsys):
    # The demo (no --dataset) on the tiny dataset, one epoch: the second identical command
    # resumes the finished run (trains nothing, keeps its checkpoint) and says so.
    monkeypatch.setattr(train_main, "prepare_demo_data", lambda args: None)
    argv = ["--data_root", data_root, "--epochs", "1", "--warmup_epochs", "0"]
    argv += ["--num_segments", "4", "-b", "2"]
    argv += ["--workers", "0", "--no_demo_eval", "--root_model", str(tmp_path / "ckpt")]
    argv += ["--root_log", str(tmp_path / "log")]
    first = train_main.main(argv)
    ckpt = os.path.join(first["model_dir"], "ckpt.pth.tar")
    before = sha(ckpt)
    capsys.readouterr()
    second = train_main.main(argv)
    said = capsys.readouterr().err
    assert f"continuing the run in {first['model_dir']} (--resume auto)" in said
    assert "is finished (1 of 1 epochs): nothing to train" in said
    assert sha(ckpt) == before and second["best_prec1"] == first["best_prec1"]
    third = train_main.main([*argv, "--overwrite"])
    assert "--overwrite: removed the previous run's files" in capsys.readouterr().err
    assert third["best_prec1"] == first["best_prec1"]  # trained again from the same seed


# ---------------------------------------------------------------------------------------------
# issue 25: one run per folder, no restart over a run's record, no output over an input
# ---------------------------------------------------------------------------------------------
def start_cli(argv: list[str], cwd) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "main.py"), *argv], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError(f"{needle!r} not seen in time:\n{''.join(seen)[-3000:]}")


def test_cli_one_live_run_per_folder_and_a_killed_run_leaves_no_lock(data_root, tmp_path):
    # Two real `python main.py` processes on the same folder, the second with --resume auto as
    # the "already holds this run" message says: refused at once, naming the live run's host and
    # pid. SIGKILL of the first (its 2 forked loader workers may outlive it a few seconds) frees
    # the folder: a third run continues there.
    argv = tiny_args(data_root, str(tmp_path), "--epochs", "50", "--workers", "2")
    first = start_cli(argv, tmp_path)
    try:
        wait_for(first, "Epoch: [1][1/", timeout=240)  # training, loader workers running
        folder = run_dir(str(tmp_path), argv)
        before = {f: sha(os.path.join(folder, f)) for f in ("run_config.json",)}
        start = time.time()
        proc = run_cli([*argv, "--resume", "auto"], tmp_path)
        line = error_line(proc)
        assert f"{folder} is in use by a live run (host {socket.gethostname()}, " in line
        assert f"pid {first.pid}, started " in line
        assert "continuing the run" not in proc.stderr  # refused before anything is decided
        assert time.time() - start < 120  # at once (a few seconds of start-up here)
        assert first.poll() is None  # the live run is untouched and still training
        assert {f: sha(os.path.join(folder, f)) for f in before} == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    ckpt = os.path.join(folder, "ckpt.pth.tar")  # the epochs the first run saved before its death
    done = load_checkpoint(ckpt)["epoch"] if os.path.exists(ckpt) else 0
    third = run_cli([*argv, "--resume", "auto", "--stop_after_epochs", str(done + 1)], tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert load_checkpoint(ckpt)["epoch"] == done + 1


def test_resume_auto_refuses_a_run_whose_training_state_was_deleted(data_root, tmp_path):
    # Issue 25: with ckpt.pth.tar deleted to save space, `--resume auto` (as scripts/demo.sh
    # passes it) started from scratch, overwrote ckpt.best.pth.tar at epoch 1 and cut log.csv.
    argv = tiny_args(data_root, str(tmp_path), "--epochs", "2")
    train_main.main([*argv, "--stop_after_epochs", "1"])
    folder = run_dir(str(tmp_path), argv)
    log = tmp_path / "log" / os.path.basename(folder) / "log.csv"
    os.remove(os.path.join(folder, "ckpt.pth.tar"))
    best = os.path.join(folder, "ckpt.best.pth.tar")
    before = (sha(best), log.read_text())
    message = one_line_exit([*argv, "--resume", "auto"])
    assert f"--resume auto: {folder} holds a run (ckpt.best.pth.tar, epochs in log.csv)" in message
    assert "without its training state ckpt.pth.tar" in message and "--overwrite" in message
    assert f"--resume {best} to continue from the best checkpoint" in message
    assert (sha(best), log.read_text()) == before
    # the choice it offers works: the best checkpoint (epoch 1) continues to epoch 2
    train_main.main([*argv, "--resume", best])
    assert load_checkpoint(os.path.join(folder, "ckpt.pth.tar"))["epoch"] == 2
    assert [row.split(",")[0] for row in log.read_text().split()] == ["epoch", "1", "2"]


def test_resume_auto_restarts_a_run_that_saved_nothing(data_root, tmp_path):
    # A run killed before its first checkpoint leaves only run_config.json (and an unlocked
    # run.lock): nothing to lose, so --resume auto (a requeued job) starts it afresh.
    argv = tiny_args(data_root, str(tmp_path), "--epochs", "1")
    train_main.main(argv)
    folder = run_dir(str(tmp_path), argv)
    for name in ("ckpt.pth.tar", "ckpt.best.pth.tar"):
        os.remove(os.path.join(folder, name))
    os.remove(tmp_path / "log" / os.path.basename(folder) / "log.csv")
    open(os.path.join(folder, "run.lock"), "w").close()
    assert train_main.main([*argv, "--resume", "auto"])["best_prec1"] >= 0
    assert load_checkpoint(os.path.join(folder, "ckpt.pth.tar"))["epoch"] == 1


@pytest.mark.parametrize("kind", ["export", "published", "ema"])
def test_resume_of_weights_without_training_state_is_refused(data_root, tmp_path, kind):
    # Issue 25: `--resume` of a slim export (epoch 0, no optimizer) said "resumed ... epoch 0"
    # and retrained every epoch over the trained weights with fresh momentum.
    argv = tiny_args(data_root, str(tmp_path), "--epochs", "2")
    train_main.main([*argv, "--stop_after_epochs", "1"])
    folder = run_dir(str(tmp_path), argv)
    ckpt = load_checkpoint(os.path.join(folder, "ckpt.pth.tar"))
    weights = {k: ckpt[k] for k in ("arch", "state_dict", "model_config", "dataset")}
    if kind == "export":  # what tools/export.py --format pth writes
        weights.update(epoch=0, best_prec1=0.0)
    elif kind == "published":  # TSM's published files: an empty optimizer state
        weights.update(epoch=100, optimizer={"state": {}, "param_groups": []})
    else:  # ckpt.ema.pth.tar
        weights.update(epoch=1, ema_of_weights={"decay": 0.999, "updates": 4})
    path = str(tmp_path / f"{kind}.pth.tar")
    save_checkpoint(weights, path)
    before = sha(os.path.join(folder, "ckpt.pth.tar"))
    message = one_line_exit([*argv, "--resume", path])
    assert message.startswith(f"main.py: error: --resume {path} holds ")
    assert (
        f"cannot continue a run: start a new run from its weights with --tune_from {path}"
        in message
    )
    assert sha(os.path.join(folder, "ckpt.pth.tar")) == before
    # --evaluate only needs the weights: still allowed
    assert train_main.main([*argv, "--resume", path, "--evaluate"])["val_top1"] >= 0


def test_tune_from_the_runs_own_checkpoint_with_overwrite_is_refused(data_root, tmp_path):
    # --overwrite removes the run's checkpoints before --tune_from reads them: the old run would
    # be lost and the new one fail. Refused before anything is removed (also through a link).
    argv = tiny_args(data_root, str(tmp_path), "--epochs", "1")
    train_main.main(argv)
    folder = run_dir(str(tmp_path), argv)
    best = os.path.join(folder, "ckpt.best.pth.tar")
    os.link(best, tmp_path / "linked.pth.tar")
    before = {f: sha(os.path.join(folder, f)) for f in os.listdir(folder)}
    for source in (best, str(tmp_path / "linked.pth.tar")):
        message = one_line_exit([*argv, "--overwrite", "--tune_from", source])
        assert (
            f"--root_model (ckpt.best.pth.tar) {best} is the input --tune_from {source}" in message
        )
    assert {f: sha(os.path.join(folder, f)) for f in os.listdir(folder)} == before


@pytest.mark.slow
def test_cli_spawned_rank_0_holds_the_folder_and_a_second_launch_is_refused_before_spawning(
    data_root, tmp_path
):
    # --multiprocessing-distributed: rank 0 is a spawned process; it holds the folder, and a
    # second launch of the same command is refused by its launching process before it spawns.
    spawn = ["--multiprocessing-distributed", "--cpu_procs", "2", "--batch_size", "4"]
    argv = tiny_args(data_root, str(tmp_path), "--epochs", "50", *spawn)
    first, ranks = start_cli(argv, tmp_path), []
    try:
        wait_for(first, "Epoch: [1][1/", timeout=300)
        ranks = subprocess.run(
            ["pgrep", "-P", str(first.pid), "-f", "spawn_main"], capture_output=True, text=True
        ).stdout.split()
        proc = run_cli([*argv, "--resume", "auto"], tmp_path)
        line = error_line(proc)
        holder = line.split(" pid ")[1].split(",")[0]
        assert "is in use by a live run" in line and holder in ranks, (line, ranks)
        assert "spawn_main" not in proc.stderr and first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        for pid in ranks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def test_overwrite_removes_the_previous_runs_ema_checkpoint_too(tmp_path):
    # --overwrite left ckpt.ema.pth.tar of the old run beside the new run's checkpoints, where
    # test_models.py / predict.py would take it for the new run's weight average.
    model_dir, log_dir = tmp_path / "ckpt", tmp_path / "log"
    for path in [model_dir / n for n in ("ckpt.pth.tar", "ckpt.best.pth.tar", "ckpt.ema.pth.tar",
                                         "run_config.json", "notes.txt")] + [log_dir / "log.csv"]:  # fmt: skip
        path.parent.mkdir(exist_ok=True)
        path.write_text("old run")
    clear_run(str(model_dir), str(log_dir))
    assert os.listdir(model_dir) == ["notes.txt"] and os.listdir(log_dir) == []  # not ours: kept
