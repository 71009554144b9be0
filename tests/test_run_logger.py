"""ops/engine/run_logger.py: what the run's logs hold, and one line when the log disk is full.

A full log disk used to end a run with four tracebacks: tensorboardX's background thread, its
flush in `RunLogger.close()` (in main.py's `finally`, hiding the one-line error) and its atexit
hook each failed again on the same full disk.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys

import pytest
from tensorboardX import record_writer
from tensorboardX.proto import event_pb2

from ops.checkpoint import load_checkpoint
from ops.engine.run_logger import RunLogger
from tests.test_main import tiny_args
from tests.test_run_safety import one_line_exit, run_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_events(path) -> list[event_pb2.Event]:
    """The events of a TensorBoard event file, read record by record (8-byte length, its 4-byte
    CRC, the data, its 4-byte CRC): the file format, independently of the writer."""
    events = []
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        pos += 12
        events.append(event_pb2.Event.FromString(data[pos : pos + length]))
        pos += length + 4
    assert pos == len(data)  # no torn record at the end
    return events


def test_scalars_reach_the_event_file_in_order(tmp_path):
    log = RunLogger(str(tmp_path))
    log.scalar("loss/step", 2.5, 3)
    log.scalars({"acc/train_top1": 50.0, "lr": 0.25}, 1)  # exact in float32
    log.close()
    (path,) = [p for p in os.listdir(tmp_path) if p.startswith("events.out.tfevents.")]
    events = read_events(tmp_path / path)
    assert events[0].file_version == "brain.Event:2"
    got = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert got == [(3, "loss/step", 2.5), (1, "acc/train_top1", 50.0), (1, "lr", 0.25)]
    log.close()  # closing twice is harmless


class _FillingFile:
    """A file on a disk that is full after `room` bytes: writes are buffered, the flush fails
    with ENOSPC (as on a real full disk), and keeps failing."""

    def __init__(self, path: str, room: int) -> None:
        self._f = open(path, "wb")  # noqa: SIM115
        self.room = room
        self.pending = 0

    def write(self, data: bytes) -> int:
        self.pending += len(data)
        return len(data)

    def flush(self) -> None:
        if self.pending > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()
        self.flush()


def test_a_full_disk_under_the_event_file_ends_the_run_with_one_line(
    data_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(record_writer, "open", lambda p, mode: _FillingFile(p, 600), raising=False)
    argv = tiny_args(data_root, str(tmp_path), "--epochs", "3")
    message = one_line_exit(argv)
    assert "cannot write the run log" in message and "events.out.tfevents" in message
    assert "No space left on device" in message and "--resume auto" in message
    err = capsys.readouterr().err
    assert "Traceback" not in err and "handle is closed" not in err, err[-3000:]
    ckpt = load_checkpoint(os.path.join(run_dir(str(tmp_path), argv), "ckpt.pth.tar"))
    assert ckpt["epoch"] >= 1  # the epoch whose log could not be written is saved


@pytest.fixture
def tiny_disk(tmp_path):
    """A 32 KiB tmpfs (needs root; skipped elsewhere): a real full disk."""
    mount = tmp_path / "logdisk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()[:200]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_log_disk_is_one_line_and_no_traceback(data_root, tmp_path, tiny_disk):
    argv = tiny_args(data_root, str(tmp_path), "--epochs", "40", "--workers", "0")
    argv += ["--root_log", str(tiny_disk)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "main.py"), *argv],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Exception" not in proc.stderr, proc.stderr[-4000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("main.py: error: cannot write the run log"), last
    assert "No space left on device" in last
    folder = run_dir(str(tmp_path), argv)
    assert load_checkpoint(os.path.join(folder, "ckpt.pth.tar"))["epoch"] >= 1
