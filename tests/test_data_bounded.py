"""Work per video is bounded by what is on disk, a read that blocks is bounded by a timeout, a
huge list line is not printed in full, and tools/check_data.py reports what training would
silently fix or mangle (issue 19)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading

import numpy as np
import pytest
from PIL import Image

import ops.frames
from ops.data_problems import DataError
from ops.dataset import TSNDataSet
from ops.lists import parse_list_file
from tests._data_helpers import deadline
from tools.check_data import VIDEO_PROBLEM_KINDS, check

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs and alarms")


def write_frames(folder, numbers, size=(16, 12)) -> None:
    """Frame k is a solid grey image of value 10*k (so a frame says which one it is)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in numbers:
        Image.new("RGB", size, (10 * k,) * 3).save(folder / f"img_{k:05d}.png")


def dataset(root, lst, segments=8) -> TSNDataSet:
    return TSNDataSet(
        str(root), str(lst), num_segments=segments, image_tmpl="img_{:05d}.png",
        random_shift=False, test_mode=True,
    )  # fmt: skip


def frame_ids(images) -> list[int]:
    return [int(np.asarray(im)[0, 0, 0]) // 10 for im in images]


class TooMuchWork(BaseException):
    """Not an Exception: the loader's own error handling must not swallow it."""


# --------------------------------------------------------------------------- bounded by disk
def test_list_claiming_1e8_frames_reads_only_what_is_on_disk(tmp_path, monkeypatch):
    write_frames(tmp_path / "frames" / "v", range(1, 13))
    lst = tmp_path / "list.txt"
    lst.write_text("v 100000000 0\n")
    ds = dataset(tmp_path / "frames", lst)
    real, calls = ops.frames.read_frame, []

    def counted(paths, modality):
        calls.append(paths[0])
        if len(calls) > 100:
            raise TooMuchWork(f"{len(calls)} frame reads for a 12-frame folder")
        return real(paths, modality)

    monkeypatch.setattr(ops.frames, "read_frame", counted)
    with deadline(20):
        images = ds.load(ds.video_list[0])
    # All 8 sampled frames (around 6e6 ... 9.4e7) are missing: the nearest on disk is 12.
    assert frame_ids(images) == [12] * 8
    assert ds.bad_data_counts()["frames_missing"] == 8
    assert len(calls) <= 8 + 12


def test_check_data_is_linear_in_files_and_bounded_by_disk(tmp_path):
    frames = tmp_path / "frames"
    write_frames(frames / "short", [1, 2, 3])
    write_frames(frames / "gaps", [1, 2, 4, 6, 7])
    lst = tmp_path / "list.txt"
    lst.write_text("short 1000000 0\ngaps 7 0\nhuge 100000000 0\n")
    write_frames(frames / "huge", [1])
    with deadline(30):
        problems, scanned = check([str(lst)], str(frames), "img_{:05d}.png", "RGB", 1)
    text = "\n".join(problems)
    assert scanned == 3
    assert "list.txt:1: [frames_beyond_disk] video 'short': the list says 1000000 frames but " \
        "frames 4-1000000 are not on disk (3 found" in text  # fmt: skip
    assert "list.txt:2: [missing_frames] video 'gaps': frames 3, 5 are missing" in text
    assert "frames 2-100000000 are not on disk (1 found" in text
    assert len(problems) == 3


def test_frame_count_beyond_any_video_is_a_bad_line(tmp_path):
    # Sampling such a count overflowed numpy's integers (a traceback in the first epoch).
    lst = tmp_path / "list.txt"
    lst.write_text("v 12 0\nw 99999999999999999999 0\n")
    records, problems = parse_list_file(str(lst), num_class=1)
    assert [r.path for r in records] == ["v"]
    assert [(p.line, p.kind) for p in problems] == [(2, "bad_frame_count")]


# --------------------------------------------------------------------------- reads that block
def test_fifo_frame_is_unreadable_not_a_hang(tmp_path):
    folder = tmp_path / "frames" / "v"
    write_frames(folder, [1, 3, 4])
    os.mkfifo(folder / "img_00002.png")  # nothing ever writes to it
    lst = tmp_path / "list.txt"
    lst.write_text("v 4 0\n")
    ds = dataset(tmp_path / "frames", lst, segments=4)
    # In a thread: an alarm would interrupt a blocked open() with an exception the loader counts.
    got = []
    loader = threading.Thread(target=lambda: got.append(ds.load(ds.video_list[0])), daemon=True)
    loader.start()
    loader.join(20)
    hung = loader.is_alive()
    with contextlib.suppress(OSError):  # release a reader blocked in open()
        os.close(os.open(folder / "img_00002.png", os.O_WRONLY | os.O_NONBLOCK))
    assert not hung, "reading a FIFO frame blocked"
    images = got[0]
    assert frame_ids(images) == [1, 1, 3, 4]  # frame 2 -> the nearest readable, earlier on a tie
    assert ds.bad_data_counts()["frames_unreadable"] == 1


def test_read_that_blocks_gives_up_after_the_timeout(tmp_path, monkeypatch):
    folder = tmp_path / "frames" / "v"
    write_frames(folder, [1, 3])
    fifo = folder / "img_00002.png"
    os.mkfifo(fifo)
    # A hung network filesystem: a "regular file" whose read never returns.
    monkeypatch.setattr(ops.frames.stat, "S_ISREG", lambda mode: True)
    monkeypatch.setenv("RNL_READ_TIMEOUT", "0.5")
    lst = tmp_path / "list.txt"
    lst.write_text("v 3 0\n")
    ds = dataset(tmp_path / "frames", lst, segments=3)
    try:
        with deadline(20):
            images = ds.load(ds.video_list[0])
        assert frame_ids(images) == [1, 1, 3]
        assert ds.bad_data_counts()["frames_timed_out"] == 1
        assert "timed out" in ds.bad_data_report()
    finally:  # release the reader thread still blocked in open()
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    assert threading.active_count() < 20


# --------------------------------------------------------------------------- huge lines
def test_huge_list_line_is_not_printed_in_full(tmp_path):
    lst = tmp_path / "list.txt"
    huge = "x" * 3_000_000
    lst.write_text(f"v 3 0\n{huge} 3\n{huge[:100]} {huge} 0\n")
    _, problems = parse_list_file(str(lst), num_class=1)
    assert [p.kind for p in problems] == ["wrong_fields", "bad_frame_count"]
    assert all(len(str(p)) < 1000 for p in problems)
    assert "3000004 characters" in str(problems[0])  # says how long it was
    with pytest.raises(DataError) as info:
        dataset(tmp_path, lst)
    assert len(str(info.value)) < 1000


# --------------------------------------------------------------------------- what training mangles
def test_check_data_reports_what_training_would_fix_or_mangle(tmp_path):
    frames = tmp_path / "frames"
    write_frames(frames / "clean", [1, 2, 3])
    write_frames(frames / "mixed", [1, 3])
    write_frames(frames / "mixed", [2], size=(20, 12))
    (frames / "deep").mkdir()
    for k in (1, 2):
        Image.fromarray(np.full((12, 16), 40000, dtype=np.uint16)).save(
            frames / "deep" / f"img_{k:05d}.png"
        )
    write_frames(frames / "alpha", [1])
    Image.new("RGBA", (16, 12), (1, 2, 3, 4)).save(frames / "alpha" / "img_00002.png")
    write_frames(tmp_path / "elsewhere", [1])
    lst = tmp_path / "list.txt"
    lst.write_text(
        "clean 3 0\nmixed 3 0\ndeep 2 0\nalpha 2 0\nclean 3 0\n"
        f"../elsewhere 1 0\n{tmp_path / 'elsewhere'} 1 0\n"
    )
    problems, _ = check([str(lst)], str(frames), "img_{:05d}.png", "RGB", 1)
    kinds = sorted(
        (int(m[1]), m[2]) for m in (re.match(r".+:(\d+): \[(\w+)\] ", p) for p in problems)
    )
    assert kinds == [
        (2, "mixed_sizes"),
        (3, "lossy_mode"),
        (4, "lossy_mode"),
        (5, "duplicate"),
        (6, "outside_root"),
        (7, "outside_root"),
    ]
    assert all(k in VIDEO_PROBLEM_KINDS for _, k in kinds)
    text = "\n".join(problems)
    assert "first frame is 16x12 but 20x12: frames 2" in text
    assert "frames 1-2 are I;16" in text or "frames 1-2 are I" in text
    assert "alpha channel is dropped" in text
    assert "also listed at " + f"{lst}:1" in text


# --------------------------------------------------------------------------- a stop request
HUNG_FS_MAIN = """
import runpy, sys
import ops.frames
ops.frames.stat.S_ISREG = lambda mode: True  # FIFOs play files on a hung network filesystem
sys.argv = ["main.py"] + sys.argv[1:]
runpy.run_path("main.py", run_name="__main__")
"""


@pytest.mark.slow
def test_sigterm_is_honoured_while_frame_reads_hang(tmp_path):
    """main.py with 2 DataLoader workers on frames whose reads never return: each read gives up
    after RNL_READ_TIMEOUT, so the epoch goes on and SIGTERM stops the run with a checkpoint."""
    import queue
    import subprocess
    import sys
    import time

    frames = tmp_path / "frames"
    for v in range(4):
        write_frames(frames / f"v{v}", [1, 3, 4], size=(40, 32))
        os.mkfifo(frames / f"v{v}" / "img_00002.png")
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"v{v} 4 {v % 2}\n" for v in range(4)))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [
        "--dataset", "mydata", "--train_list", str(lst), "--val_list", str(lst),
        "--root_path", str(frames), "--image_tmpl", "img_{:05d}.png", "--num_class", "2",
        "--arch", "resnet18", "--pretrain", "scratch", "--num_segments", "4",
        "--input_size", "32", "--batch_size", "2", "--epochs", "50", "--workers", "2",
        "--print-freq", "1", "--root_model", str(tmp_path / "ckpt"),
        "--root_log", str(tmp_path / "log"),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1", RNL_READ_TIMEOUT="2", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", HUNG_FS_MAIN, *argv], cwd=repo, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    seen: list[str] = []

    def wait_for(needle: str, seconds: float) -> bool:
        end = time.time() + seconds
        while time.time() < end:
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
            if needle in seen[-1]:
                return True
        return False

    try:
        assert wait_for("Epoch: [1][1/", 180), "no iteration finished:\n" + "".join(seen)
        proc.send_signal(signal.SIGTERM)
        assert wait_for("stopped by SIGTERM", 90), "SIGTERM not honoured:\n" + "".join(seen)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for v in range(4):  # release readers still blocked in open()
            with contextlib.suppress(OSError):
                os.close(os.open(frames / f"v{v}" / "img_00002.png", os.O_WRONLY | os.O_NONBLOCK))
    assert any("timed out" in line or "took more than" in line for line in seen), "".join(seen)
