"""Fuzz: randomly mutated (seeded) list files and frame folders through tools/check_data.py and
one training epoch of main.py (issue 19). Every run ends with exit 0 and counted problems, or a
non-zero exit with one line and no traceback; nothing hangs.

The default run sends 200 mutations through check_data (in-process) and 6 through one tiny
training epoch (in-process, no DataLoader workers); the slow test sends 40 through main.py as
users run it (a subprocess with 2 DataLoader workers)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import pytest

import main as train_main
from tests import _fuzz_data as F
from tests._data_helpers import deadline
from tools import check_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = " problem(s) in 1 list(s), "


def data_flags(frames, lst) -> list[str]:
    return [
        "--train_list", str(lst), "--val_list", str(lst), "--root_path", str(frames),
        "--image_tmpl", F.TMPL, "--num_class", str(F.NUM_CLASS),
    ]  # fmt: skip


def assert_one_line_error(err: str, what: str, prefix: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, f"{what}: traceback\n{err[-3000:]}"
    errors = [line for line in lines if line.startswith(prefix)]
    assert len(errors) == 1, f"{what}: expected one '{prefix}' line, got\n{err[-3000:]}"
    assert len(errors[0]) < 2000, f"{what}: a {len(errors[0])}-character error line"


def check_mutations(tmp_path, seeds) -> None:
    for seed in seeds:
        root = tmp_path / str(seed)
        frames, lst, done = F.build(root, seed)
        what = f"seed {seed} {done}"
        out, err = io.StringIO(), io.StringIO()
        with deadline(30, what), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            argv = ["mydata", "--split", "train", *data_flags(frames, lst)]
            code = check_data.main(argv)
        if code == 2:
            assert_one_line_error(err.getvalue(), what, "error: ")
            continue
        summary = out.getvalue().splitlines()[-1]
        assert SUMMARY in summary, f"{what}: {summary}"
        count = int(summary.split()[0])
        assert code == (1 if count else 0), f"{what}: exit {code} with {count} problems"
        assert all(len(line) < 2000 for line in out.getvalue().splitlines()), what
        shutil_rmtree(root)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="the mutations include FIFOs")
def test_mutated_datasets_through_check_data(tmp_path):
    check_mutations(tmp_path, range(200))


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="the mutations include FIFOs")
def test_more_mutated_datasets_through_check_data(tmp_path):
    check_mutations(tmp_path, range(200, 2000))


def shutil_rmtree(root) -> None:
    import shutil

    shutil.rmtree(root, ignore_errors=True)


def train_argv(frames, lst, out, *extra) -> list[str]:
    return [
        "--dataset", "mydata", *data_flags(frames, lst), "--arch", "resnet18",
        "--pretrain", "scratch", "--shift", "--num_segments", "2", "--input_size", "32",
        "--batch_size", "2", "--lr", "0.01", "--epochs", "1", "--print-freq", "1",
        "--root_model", str(out / "ckpt"), "--root_log", str(out / "log"), *extra,
    ]  # fmt: skip


# Chosen to cover a FIFO frame, a 1x1 frame, frames of another size, RGBA, a 10^20 frame
# count, a missing folder and bad list lines (see tests/_fuzz_data.py for each seed's mutations).
TRAIN_SEEDS = [19, 23, 1002, 1015, 1026, 1035]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="the mutations include FIFOs")
@pytest.mark.parametrize("seed", TRAIN_SEEDS)
def test_mutated_dataset_through_one_training_epoch(tmp_path, seed, capsys):
    frames, lst, done = F.build(tmp_path / "data", seed)
    what = f"seed {seed} {done}"
    extra = ["--workers", "0"] + (["--skip_bad_lines"] if seed % 2 else [])
    with deadline(120, what):
        try:
            summary = train_main.main(train_argv(frames, lst, tmp_path, *extra))
        except SystemExit as exc:  # main.py's one-line user error
            message = str(exc.code)
            assert message.startswith("main.py: error: "), f"{what}: {message}"
            assert "\n" not in message and len(message) < 2000, f"{what}: {message[:3000]}"
            return
    assert isinstance(summary, dict), what


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="the mutations include FIFOs")
@pytest.mark.parametrize("seed", range(1000, 1040))
def test_mutated_dataset_through_main_py_with_workers(tmp_path, seed):
    frames, lst, done = F.build(tmp_path / "data", seed)
    what = f"seed {seed} {done}"
    argv = train_argv(frames, lst, tmp_path, "--workers", "2", "--skip_bad_lines")
    env = dict(os.environ, OMP_NUM_THREADS="1", RNL_READ_TIMEOUT="5")
    try:
        proc = subprocess.run(
            [sys.executable, "main.py", *argv], cwd=REPO, env=env, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}: main.py hung")
    if proc.returncode != 0:
        assert_one_line_error(proc.stderr, what, "main.py: error: ")
    else:
        assert "Traceback" not in proc.stderr, f"{what}: {proc.stderr[-3000:]}"
