"""ops/engine/run_lock.py: one live run per folder, held with flock by real processes.

The holder is a separate Python process (flock conflicts between open files, so a process of
its own is what a second run is); it is killed with SIGKILL, the way a run dies without
cleaning up. main.py's use of the lock (two real `python main.py` runs) is in
tests/test_run_safety.py.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from ops.engine import run_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from ops.engine import run_lock
    run_lock.hold(sys.argv[1])
    child = os.fork() if len(sys.argv) > 2 else None
    if child == 0:  # a forked worker (as a DataLoader's) that outlives its parent
        os.write(1, b"child\\n")  # running: the fork hooks are done (one write: no interleaving)
        time.sleep(120)
        os._exit(0)
    os.write(1, f"held {child}\\n".encode())
    time.sleep(120)
    """
)


@pytest.fixture(autouse=True)
def _release():
    yield
    run_lock.release_all()


def start_holder(folder, fork: bool = False) -> tuple[subprocess.Popen, int | None]:
    argv = [sys.executable, "-c", HOLDER, str(folder)] + (["fork"] if fork else [])
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
    lines = [proc.stdout.readline().split() for _ in range(2 if fork else 1)]
    held = [line for line in lines if line and line[0] == "held"]
    assert held and (not fork or ["child"] in lines), lines
    return proc, (int(held[0][1]) if fork else None)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_second_process_is_refused_naming_host_and_pid(tmp_path):
    holder, _ = start_holder(tmp_path / "run")
    try:
        start = time.monotonic()
        with pytest.raises(run_lock.RunLockedError) as exc:
            run_lock.hold(str(tmp_path / "run"))
        assert time.monotonic() - start < 5  # at once, no waiting for the holder
        message = str(exc.value)
        assert (
            f"{tmp_path / 'run'} is in use by a live run (host {socket.gethostname()}, " in message
        )
        assert f"pid {holder.pid}, started " in message and "--suffix NAME" in message
        with pytest.raises(run_lock.RunLockedError):  # the launcher's check says the same
            run_lock.check_free(str(tmp_path / "run"))
        with open(tmp_path / "run" / run_lock.LOCK_FILE) as f:
            assert json.load(f)["pid"] == holder.pid  # the refused process changed nothing
    finally:
        kill(holder)


def test_sigkill_of_the_holder_frees_the_folder_even_with_a_forked_child_alive(tmp_path):
    # The holder forked a child (as DataLoader workers are forked) that shares its open files:
    # without the fork hook the child's copy would keep the lock after the holder's death.
    holder, child = start_holder(tmp_path / "run", fork=True)
    try:
        kill(holder)
        os.kill(child, 0)  # still alive (raises if not)
        run_lock.hold(str(tmp_path / "run"))  # the stale lock file is taken over
        with open(tmp_path / "run" / run_lock.LOCK_FILE) as f:
            assert json.load(f)["pid"] == os.getpid()
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_clean_release_removes_the_lock_file_and_frees_the_folder(tmp_path):
    folder = tmp_path / "run"
    run_lock.hold(str(folder))
    run_lock.hold(str(folder))  # the same folder twice (e.g. --root_log = --root_model): once
    assert os.listdir(folder) == [run_lock.LOCK_FILE]
    run_lock.release_all()
    assert os.listdir(folder) == []
    holder, _ = start_holder(folder)  # another process can take it now
    kill(holder)


def test_a_lock_file_replaced_after_locking_is_not_held(tmp_path, monkeypatch):
    # A run that ended unlinks its lock file: a process that opened the old file before that
    # must not hold the folder through it. Here the file is swapped right after the first flock.
    folder = tmp_path / "run"
    folder.mkdir()
    path = folder / run_lock.LOCK_FILE
    path.write_text("")
    real_flock, calls = fcntl.flock, []

    def flock_then_swap(fd, op):
        real_flock(fd, op)
        calls.append(op)
        if len(calls) == 1:
            os.unlink(path)
            path.write_text("")  # another file under the same name

    monkeypatch.setattr(run_lock.fcntl, "flock", flock_then_swap)
    run_lock.hold(str(folder))
    assert len(calls) == 2  # locked again, the file the path names now
    fd, _ = run_lock._held[os.path.realpath(folder)]
    assert os.path.samestat(os.fstat(fd), os.stat(path))


def test_a_filesystem_without_flock_warns_and_runs_unlocked(tmp_path, monkeypatch, caplog):
    # NFS mounted without lockd (ENOLCK), Lustre mounted noflock (ENOSYS)
    def no_locks(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="ops.engine.run_lock"):
        run_lock.hold(str(tmp_path / "run"))
    assert "does not support flock" in caplog.text and "nothing stops a second run" in caplog.text
    assert run_lock._held == {}
