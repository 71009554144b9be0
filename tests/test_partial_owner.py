"""Who owns a temporary output (``tools/_common.owner_alive``): a crashed writer's leftovers are
removed by the next run, a live writer's are kept. A pid is not enough on its own: a killed
worker stays a zombie where nothing reaps orphans (a container whose pid 1 is not an init, as on
CI), and a pid is reused by later processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tools._common import owner_alive, partial_prefix

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def _partial(tmp_path, pid: int):
    name = "video01.zip"
    path = tmp_path / f"{partial_prefix(name)}{socket.gethostname()}-{pid}-k3j9x2"
    path.write_bytes(b"half")
    return path.name, name, str(path)


def test_a_zombie_writer_does_not_own_its_file(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # exits; not reaped until wait()
    try:
        deadline = time.monotonic() + 30
        while _state(child.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(child.pid) == "Z"
        os.kill(child.pid, 0)  # the kernel still answers for a zombie: the bug this guards
        assert owner_alive(*_partial(tmp_path, child.pid)) is False
    finally:
        child.wait()


def test_a_live_writer_owns_its_file_but_a_reused_pid_does_not(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        partial, name, path = _partial(tmp_path, child.pid)
        assert owner_alive(partial, name, path) is True  # written after the process started
        hour_ago = time.time() - 3600
        os.utime(path, (hour_ago, hour_ago))  # last written an hour before this process began
        assert owner_alive(partial, name, path) is False
        assert owner_alive(partial, name) is True  # without the file's time only the pid counts
    finally:
        child.kill()
        child.wait()


def test_a_dead_writer_does_not_own_its_file(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert owner_alive(*_partial(tmp_path, child.pid)) is False
