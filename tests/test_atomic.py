"""ops/atomic.py, the one atomic file write: contents as given, the previous file intact on any
failure (a full disk, a read-only folder, an exception, Ctrl-C, kill -9), no temporary file left
behind (but by kill -9, which ``clear_stale`` cleans), errors naming the file asked for."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ops import atomic
from ops.atomic import temp_files, write_atomically

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _umask(mask: int):
    class Umask:
        def __enter__(self):
            self.old = os.umask(mask)

        def __exit__(self, *exc):
            os.umask(self.old)

    return Umask()


def test_bytes_text_and_a_writing_function_give_those_bytes(tmp_path):
    write_atomically(tmp_path / "a.bin", b"\x00\xff\x10")
    write_atomically(tmp_path / "b.txt", "é\nline 2\r\n")  # UTF-8, newlines as given
    write_atomically(tmp_path / "c.txt", "é", encoding="latin-1")
    write_atomically(str(tmp_path / "d.bin"), lambda f: (f.write(b"ab"), f.write(b"cd")))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\xff\x10"
    assert (tmp_path / "b.txt").read_bytes() == b"\xc3\xa9\nline 2\r\n"
    assert (tmp_path / "c.txt").read_bytes() == b"\xe9"
    assert (tmp_path / "d.bin").read_bytes() == b"abcd"
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.txt", "c.txt", "d.bin"]
    with pytest.raises(TypeError, match="bytes, str or a function"):
        write_atomically(tmp_path / "e", 3)


def test_writers_that_need_a_file_object_round_trip(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3}
    write_atomically(tmp_path / "ckpt.pth.tar", lambda f: torch.save(state, f))
    back = torch.load(tmp_path / "ckpt.pth.tar", weights_only=True)
    assert back["epoch"] == 3 and torch.equal(back["w"], state["w"])
    write_atomically(tmp_path / "s.npz", lambda f: np.savez(f, scores=np.eye(2)))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth.tar", "s.npz"]  # no .npz appended
    np.testing.assert_array_equal(np.load(tmp_path / "s.npz")["scores"], np.eye(2))


def test_replaces_a_file_creates_the_folder_and_follows_the_umask(tmp_path):
    target = tmp_path / "new" / "deeper" / "out.json"
    with _umask(0o027):
        write_atomically(target, "1")
        write_atomically(target, "2")
    assert target.read_text() == "2"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640  # as open() creates it, not 0600
    assert os.listdir(target.parent) == ["out.json"]


def test_an_exception_while_writing_keeps_the_previous_file_and_is_raised_unchanged(tmp_path):
    target = tmp_path / "report.txt"
    target.write_bytes(b"previous")

    class WriterFailed(ValueError):
        pass

    def half_then_fail(f):
        f.write(b"half a report")
        raise WriterFailed("the writer's own error")

    with pytest.raises(WriterFailed, match="the writer's own error"):
        write_atomically(target, half_then_fail)
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["report.txt"]

    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, interrupted)
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["report.txt"]


def test_a_full_disk_names_the_file_asked_for(tmp_path):
    target = tmp_path / "scores.npz"
    target.write_bytes(b"previous")

    def full_disk(f):
        f.write(b"PK\x03\x04")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # no file name, as write() raises

    with pytest.raises(OSError) as info:
        write_atomically(target, full_disk)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert str(info.value) == f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}: '{target}'"
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["scores.npz"]


def test_an_error_that_names_the_temporary_file_names_the_file_asked_for(tmp_path, monkeypatch):
    # as mkstemp fails in a read-only folder: the error carries the temporary name it tried
    def read_only(prefix, suffix, dir):
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}x1y2z3{suffix}")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    target = tmp_path / "list.txt"
    with pytest.raises(PermissionError) as info:
        write_atomically(target, "x")
    assert info.value.filename == str(target) and ".tmp" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_names_the_file_asked_for(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "out.txt").write_text("previous")
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError) as info:
            write_atomically(folder / "out.txt", "new")
    finally:
        folder.chmod(0o755)
    assert info.value.filename == str(folder / "out.txt")
    assert (folder / "out.txt").read_text() == "previous" and os.listdir(folder) == ["out.txt"]


def test_a_folder_in_the_way_is_refused_naming_it(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        write_atomically(tmp_path / "out", "x")
    assert info.value.filename == str(tmp_path / "out")
    assert os.listdir(tmp_path) == ["out"] and os.listdir(tmp_path / "out") == []


def test_errors_of_other_files_and_without_errno_pass_unchanged(tmp_path):
    class DecodeError(OSError):  # like ops.video.VideoError: an OSError without errno
        pass

    def decoder_fails(f):
        raise DecodeError("frame 3 of in.mp4 does not decode")

    with pytest.raises(DecodeError, match="frame 3 of in.mp4"):
        write_atomically(tmp_path / "out.mp4", decoder_fails)

    def input_missing(f):
        open(tmp_path / "missing-input.txt", "rb")

    with pytest.raises(FileNotFoundError) as info:
        write_atomically(tmp_path / "out.mp4", input_missing)
    assert info.value.filename == str(tmp_path / "missing-input.txt")
    assert os.listdir(tmp_path) == []


def test_kill_9_keeps_the_previous_file_and_clear_stale_removes_what_it_left(tmp_path):
    target = tmp_path / "ckpt.pth.tar"
    target.write_bytes(b"epoch 1")
    (tmp_path / "notes.tmp").write_text("not ours")
    (tmp_path / "ckpt.pth.tar.json").write_text("not a temporary file")
    child = textwrap.dedent(f"""
        import sys, time
        from ops.atomic import write_atomically
        def slow(f):
            f.write(b"half of epoch 2")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
        write_atomically({str(target)!r}, slow)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", child], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert target.read_bytes() == b"epoch 1"
    (left,) = temp_files(target)
    assert os.path.basename(left).startswith("ckpt.pth.tar.") and left.endswith(".tmp")
    assert open(left, "rb").read() == b"half of epoch 2"
    write_atomically(target, b"epoch 2 again")  # without clear_stale: other writers' are kept
    assert os.path.exists(left)
    write_atomically(target, b"epoch 2", clear_stale=True)
    assert target.read_bytes() == b"epoch 2" and temp_files(target) == []
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth.tar", "ckpt.pth.tar.json", "notes.tmp"]


def test_temp_files_are_those_of_the_path_only(tmp_path):
    for name in ("a.txt.1.tmp", "a.txt.tmp", "b.txt.1.tmp", "a.txt.1.tmpx", "xa.txt.1.tmp"):
        (tmp_path / name).write_text("")
    assert [os.path.basename(p) for p in temp_files(tmp_path / "a.txt")] == ["a.txt.1.tmp"]
    # names with glob characters are taken literally
    (tmp_path / "[x].txt.2.tmp").write_text("")
    (tmp_path / "x.txt.2.tmp").write_text("")
    assert [os.path.basename(p) for p in temp_files(tmp_path / "[x].txt")] == ["[x].txt.2.tmp"]
