"""Fuzz: randomly mutated (seeded) list files and frame folders through tools/check_data.py and
one training epoch of main.py (issue 19). Every run ends with exit 0 and counted problems, or a
non-zero exit with one line and no traceback; nothing hangs.

The default run sends 200 mutations through check_data (in-process) and 6 through one tiny
training epoch (in-process, no DataLoader workers); the slow test sends 40 through main.py as
users run it (a subprocess with 2 DataLoader workers).

Issue 25: 60 seeded output-path clashes (a tool and a random output named as a random input of
it, literally, respelled, or through a hard link, a symlink or a symlinked folder; or two outputs
that are one file) through predict, export, check_data, gen_lists, extract_frames,
visualize_attention, test_models.py and main.py: each ends with exit 2 and one line naming both,
and no file under its folder changes. And 8 seeded second runs on a folder that another process
holds (alive or killed with SIGKILL, with or without a forked child outliving it; the model or
the log folder; with --resume auto, --overwrite, other flags): refused naming its host and pid
while it lives, let through once it is dead.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import main as train_main
import test_models
from tests import _eval_helpers as H
from tests import _fuzz_data as F
from tests._data_helpers import deadline
from tests.test_main import tiny_args
from tests.test_run_lock import kill, start_holder
from tools import check_data, export, extract_frames, gen_lists, predict, visualize_attention

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


# ---------------------------------------------------------------------------------------------
# issue 25: seeded output-path clashes through every tool and main.py, and concurrent runs
# ---------------------------------------------------------------------------------------------
class PastTheLock(Exception):
    """Raised where main.py builds its model, i.e. once the run folder is held."""


@pytest.fixture(scope="module")
def clash_shared(tmp_path_factory, data_root):
    """What the clash cases share: test_models.py's dataset and a checkpoint of it, and the
    main.py command on the tiny dataset with its run folders."""
    eval_root = tmp_path_factory.mktemp("eval")
    H.write_synthetic_dataset(str(eval_root))
    weights = str(eval_root / PUBLISHED)
    H.save_published(weights, H.make_model(0, **H.small_model_config(num_segments=4)))

    def main_argv(out: str) -> list[str]:
        return train_argv_tiny(data_root, out)

    def run_dir(out: str) -> str:
        return os.path.join(out, "ckpt", train_main.run_name(train_main.parse_args(main_argv(out))))

    def log_dir(out: str) -> str:
        return os.path.join(out, "log", os.path.basename(run_dir(out)))

    shared = dict(eval_root=str(eval_root), eval_weights=weights, main_argv=main_argv)
    return dict(shared, run_dir=run_dir, log_dir=log_dir)


PUBLISHED = "TSM_synthetic_RGB_resnet18_shift8_blockres_avg_segment4_e50_cos_nl_lr0.01.pth.tar"


def train_argv_tiny(data_root: str, out: str, *extra: str) -> list[str]:
    return tiny_args(data_root, out, "--epochs", "1", *extra)


def run_clash(case: F.Clash, monkeypatch) -> tuple[int, str]:
    """Run the case's tool in-process; (exit status, its error lines)."""
    runners = {
        "predict": predict.main, "export": export.main, "check_data": check_data.main,
        "gen_lists": gen_lists.main, "extract_frames": extract_frames.main,
        "visualize_attention": visualize_attention.main, "test_models": test_models.cli,
    }  # fmt: skip
    for module in (predict, export, gen_lists, extract_frames, visualize_attention, test_models):
        monkeypatch.setattr(module, "setup_logging", lambda *a, **k: None)
    monkeypatch.setattr(train_main, "build_model", _past_the_lock)  # main: never gets there
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if case.tool == "main":
            with pytest.raises(SystemExit) as exc:
                train_main.main(case.argv)
            err.write(f"{exc.value.code}\n")
            code = 2
        else:
            code = runners[case.tool](case.argv)
    text = err.getvalue()
    assert "Traceback" not in text, f"{case.what}: {text[-3000:]}"
    return code, [line for line in text.splitlines() if "error: " in line]


def _past_the_lock(*args, **kwargs):
    raise PastTheLock


def check_clashes(tmp_path, seeds, shared, monkeypatch) -> None:
    before_shared = F.snapshot(Path(shared["eval_root"]))
    for seed in seeds:
        root = tmp_path / f"clash{seed}"
        case = F.clash_case(root, seed, shared)
        what = f"seed {seed}: {case.what}: {case.argv}"
        before = F.snapshot(root)
        with deadline(60, what):
            code, errors = run_clash(case, monkeypatch)
        assert code == 2 and len(errors) == 1, f"{what}: exit {code}, {errors}"
        for needle in case.needles:
            assert needle in errors[0], f"{what}: {needle!r} not in {errors[0]}"
        assert F.snapshot(root) == before, f"{what}: files changed"
        shutil_rmtree(root)
    assert F.snapshot(Path(shared["eval_root"])) == before_shared


def test_seeded_output_path_clashes_through_every_tool(tmp_path, clash_shared, monkeypatch):
    check_clashes(tmp_path, range(60), clash_shared, monkeypatch)


@pytest.mark.slow
def test_more_seeded_output_path_clashes(tmp_path, clash_shared, monkeypatch):
    check_clashes(tmp_path, range(60, 600), clash_shared, monkeypatch)


def check_concurrent(data_root, tmp_path, seed, monkeypatch) -> None:
    case = F.concurrent_case(seed)
    what = f"seed {seed}: {case}"
    argv = train_argv_tiny(data_root, str(tmp_path), *case["flags"])
    name = train_main.run_name(train_main.parse_args(argv))
    folders = {"model_dir": tmp_path / "ckpt" / name, "log_dir": tmp_path / "log" / name}
    if case["held"] == "log_dir":  # another --root_model, the same log folder
        argv += ["--root_model", str(tmp_path / "other")]
    folder = folders[case["held"]]
    holder, child = start_holder(folder, fork=case["child"])
    monkeypatch.setattr(train_main, "build_model", _past_the_lock)
    try:
        if case["holder"] == "killed":
            kill(holder)
            with pytest.raises(PastTheLock):  # the folder is free: the run goes on
                train_main.main(argv)
            return
        with pytest.raises(SystemExit) as exc:
            train_main.main(argv)
        message = str(exc.value.code)
        assert "\n" not in message, what
        assert (
            f"{folder} is in use by a live run (host {socket.gethostname()}, pid {holder.pid}"
            in message
        ), what
        assert os.listdir(folder) == ["run.lock"], what  # nothing written where the run lives
    finally:
        if holder.poll() is None:
            kill(holder)
        if child:
            os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("seed", range(8))
def test_seeded_concurrent_runs(data_root, tmp_path, seed, monkeypatch):
    check_concurrent(data_root, tmp_path, seed, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8, 60))
def test_more_seeded_concurrent_runs(data_root, tmp_path, seed, monkeypatch):
    check_concurrent(data_root, tmp_path, seed, monkeypatch)
