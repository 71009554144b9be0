"""Conformance of ops/video.py's VideoReader: frame k is the k-th frame of a plain decode loop.

The reference is the loop a user would write, `for f in container.decode(video=0)`, with each
frame converted by `frame.to_image()`; frame k (1-based, as the dataset numbers frames) is its
k-th output. Every case below is a small video encoded here with an encoder that PyAV ships, in a
stream structure that makes seeking go wrong somewhere: B-frames (decode order differs from
display order), open GOPs (frames decoded after a key frame but shown before it, which do not
decode after a seek to that key frame), hidden frames (VP9 alt-ref frames in superframes, AV1
frames shown later by a packet of their own), AVI and raw streams (no presentation timestamps
stored: FFmpeg guesses them), variable frame rate, a first timestamp that is not zero, odd frame
sizes; then MPEG-4 as DivX and xvid write it (packed B-frames, not-coded frames: rewritten from
FFmpeg's output), and bad files (an index that calls every frame a key frame, truncated files,
no frames). Each case asserts that its video really has the structure it is named after, then
reads every frame alone (forwards, then backwards: a seek back each time) and in clips (the
dataset's samplings, repeated frames, clips that go backwards) and compares each image with the
plain loop's, pixel for pixel, and asserts which numbering model the reader ended with (a failed
check moves a file to a slower model, so the expected model also proves no check failed).

Cost: the videos are 64x48 or 65x49, 30-36 frames, so the module takes seconds (the default
suite runs it).

An encoder missing from the installed PyAV fails the test that needs it (never a skip): all of
them are in the PyAV wheels' FFmpeg build this project installs.
"""

from __future__ import annotations

import dataclasses
import shutil
import struct
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
import pytest

from ops.video import VideoError, VideoReader

X264 = "keyint=8:min-keyint=8:scenecut=0:bframes=3:b-pyramid=normal"
X265 = "keyint=8:min-keyint=8:scenecut=0:bframes=3:open-gop=1:log-level=error"
# libvpx 1.16 makes alt-ref frames in one pass only in realtime mode with a target bitrate and a
# look-ahead (its `use_altref_onepass` speed feature); "good" mode makes none without two passes.
VP9 = {
    "g": "12",
    "auto-alt-ref": "1",
    "lag-in-frames": "16",
    "deadline": "realtime",
    "cpu-used": "8",
    "b": "200k",
}
MS = Fraction(1, 1000)


@dataclass(frozen=True)
class Case:
    """One conformance video: how it is encoded, what its structure must show, and how the
    reader must number its frames (the model; "sequential" would mean no seeking at all)."""

    file: str
    codec: str
    model: str  # VideoReader.model expected after all the reads (no check ever failed)
    options: dict = field(default_factory=dict)
    size: tuple[int, int] = (64, 48)
    frames: int = 30
    pix_fmt: str = "yuv420p"
    gop: int | None = None  # codec_context.gop_size (encoders without a keyint option)
    bframes: int | None = None  # codec_context.max_b_frames
    steps_ms: tuple[int, ...] | None = None  # variable frame rate: cycle of frame durations
    start_ms: int = 0  # timestamp of the first frame
    # structure the encoded file must show (checked before reading)
    reordered: bool = False  # B-frames: display order != decode order
    leading: bool = False  # open GOP: frames decoded after a later key frame, shown before it
    hidden: bool = False  # packets with frames decoded but not shown (VP9 alt-ref, AV1)
    threads: int = 1


H264 = {"x264-params": X264}
H264_OPEN = {"x264-params": X264 + ":open-gop=1"}
HEVC = {"x265-params": X265}
AV1 = {"g": "8", "preset": "12"}
ODD = (65, 49)
VFR = (40, 40, 80, 20, 120)  # ms between frames, cycled
# MPEG-4 part 2 / MPEG-2 with B-frames; without the scene-cut threshold FFmpeg's encoders take
# every anchor of this drifting picture for a scene cut and make it an I-frame (no P-frames)
MPEG = dict(options={"sc_threshold": "1000000000"}, gop=8, bframes=2, reordered=True)

CASES = [
    # H.264
    Case("h264_bframes.mp4", "libx264", "grid", H264, reordered=True),
    Case("h264_open_gop.mp4", "libx264", "grid", H264_OPEN, leading=True),
    Case("h264_open_gop_threads.mp4", "libx264", "grid", H264_OPEN, leading=True, threads=2),
    Case("h264_open_gop.mkv", "libx264", "timestamps", H264_OPEN, leading=True),
    Case("h264_open_gop.ts", "libx264", "timestamps", H264_OPEN, leading=True),
    Case("h264_open_gop.flv", "libx264", "timestamps", H264_OPEN, leading=True),
    Case("h264_bframes.mov", "libx264", "grid", H264, reordered=True),
    Case("h264_bframes.avi", "libx264", "decoded", H264, reordered=True),
    Case("h264_bframes.h264", "libx264", "decoded", H264, reordered=True),  # raw: no container
    Case("h264_odd_size.mp4", "libx264", "grid", H264, ODD, pix_fmt="yuv444p"),
    # HEVC (open GOPs: CRA pictures with leading pictures)
    Case("hevc_open_gop.mp4", "libx265", "grid", HEVC, leading=True),
    Case("hevc_open_gop.mkv", "libx265", "timestamps", HEVC, leading=True),
    # VP9 with alt-ref frames, AV1
    Case("vp9_altref.webm", "libvpx-vp9", "timestamps", VP9, frames=36, hidden=True),
    Case("vp9_altref_odd_size.webm", "libvpx-vp9", "timestamps", VP9, ODD, 36, hidden=True),
    Case("av1.mp4", "libsvtav1", "grid", AV1, hidden=True),
    Case("av1_odd_size.mkv", "libsvtav1", "timestamps", AV1, ODD, hidden=True),
    # MPEG-4 part 2 (what xvid / DivX write) and MPEG-2, with B-frames
    Case("mpeg4_bframes.avi", "mpeg4", "timestamps", **MPEG),
    Case("mpeg4_bframes_odd_size.avi", "mpeg4", "timestamps", size=ODD, **MPEG),
    Case("mpeg4_bframes.mp4", "mpeg4", "grid", **MPEG),
    Case("mpeg4_bframes.mkv", "mpeg4", "timestamps", **MPEG),
    # MPEG program streams give no positions for most frames: read from the start (exact, slow)
    Case("mpeg2_bframes.mpg", "mpeg2video", "sequential", **MPEG),
    Case("mpeg2_bframes.ts", "mpeg2video", "timestamps", **MPEG),
    # intra only
    Case("mjpeg.avi", "mjpeg", "timestamps", pix_fmt="yuvj420p"),
    Case("mjpeg_odd_size.mkv", "mjpeg", "timestamps", size=ODD, pix_fmt="yuvj420p"),
    # variable frame rate; AVI fills its timestamp gaps with nothing, so two frames can get
    # the same guessed timestamp: numbered by decoding
    Case("h264_vfr.mp4", "libx264", "timestamps", H264, steps_ms=VFR, reordered=True),
    Case("h264_vfr.mkv", "libx264", "timestamps", H264, steps_ms=VFR, reordered=True),
    Case("mpeg4_vfr.avi", "mpeg4", "decoded", steps_ms=VFR, **MPEG),
    # the first frame at 2 s
    Case("h264_start_2s.mp4", "libx264", "grid", H264, start_ms=2000, reordered=True),
    Case("h264_start_2s.mkv", "libx264", "timestamps", H264, start_ms=2000, reordered=True),
    Case(
        "vp9_start_2s.webm", "libvpx-vp9", "timestamps", VP9, frames=36, start_ms=2000, hidden=True
    ),
]
ENCODERS = sorted({case.codec for case in CASES})


def has_encoder(name: str) -> bool:
    try:  # av.codecs_available lists decoders too
        return av.codec.Codec(name, "w").is_encoder
    except (av.FFmpegError, ValueError):
        return False


def encode(path: str, case: Case) -> None:
    """Frames of a textured picture that drifts and brightens, so that P- and B-frames predict
    well (no scene cuts) and every frame differs from every other."""
    if not has_encoder(case.codec):
        pytest.fail(f"encoder {case.codec} is not in this PyAV build ({av.__version__})")
    w, h = case.size
    texture = np.random.RandomState(0).randint(0, 160, (h + 64, w + 64, 3)).astype(np.uint8)
    timed = case.steps_ms is not None or case.start_ms
    with av.open(path, "w") as container:
        stream = container.add_stream(case.codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, case.pix_fmt
        stream.options = dict(case.options)
        if case.gop is not None:
            stream.codec_context.gop_size = case.gop
        if case.bframes is not None:
            stream.codec_context.max_b_frames = case.bframes
        if timed:
            stream.codec_context.time_base = MS
        t = case.start_ms
        for i in range(case.frames):
            y, x = i % 64, (2 * i) % 64  # every frame of a case (<= 40) differs
            arr = texture[y : y + h, x : x + w] + np.uint8(2 * i % 256)
            arr[(3 * i) % h, :, 1] = 255  # a line that moves down
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            if timed:
                frame.pts, frame.time_base = t, MS
                t += case.steps_ms[i % len(case.steps_ms)] if case.steps_ms else 40
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def plain_loop(path: str) -> list[np.ndarray]:
    """The reference: every frame the plain decode loop outputs, as `to_image()` converts it."""
    with av.open(path) as container:
        return [np.asarray(frame.to_image()) for frame in container.decode(video=0)]


def packets(path: str) -> list[av.Packet]:
    with av.open(path) as container:
        return [p for p in container.demux(video=0) if p.size]


def decoded_types(path: str) -> list[str]:
    with av.open(path) as container:
        return [av.video.frame.PictureType(frame.pict_type).name for frame in container.decode(0)]


def superframe_count(data: bytes) -> int:
    """Frames in a VP9 packet: a superframe ends with an index whose marker byte (0b110xxxxx)
    also opens it; without one the packet is a single frame."""
    marker = data[-1]
    if marker & 0xE0 != 0xC0:
        return 1
    frames, size_bytes = (marker & 7) + 1, ((marker >> 3) & 3) + 1
    index = 2 + size_bytes * frames
    return frames if len(data) >= index and data[-index] == marker else 1


def av1_frames(data: bytes) -> list[str]:
    """The frames of an AV1 temporal unit (one packet): "shown", "hidden" (decoded, shown later
    by a "shown again" unit: show_existing_frame), from the frame (header) OBUs' first bits."""
    out, i = [], 0
    while i < len(data):
        header = data[i]
        kind, extension, has_size = (header >> 3) & 15, (header >> 2) & 1, (header >> 1) & 1
        i += 1 + extension
        size, shift = len(data) - i, 0
        if has_size:  # leb128
            size = 0
            while True:
                byte = data[i]
                i += 1
                size |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
        if kind in (3, 6):  # frame header, frame
            first = data[i]
            out.append("shown again" if first >> 7 else ("shown" if first >> 4 & 1 else "hidden"))
        i += size
    return out


def check_structure(path: str, case: Case, expected: list) -> None:
    """The video has the structure the case is about (else the test would prove nothing)."""
    assert len(expected) == case.frames
    assert expected[0].shape == (case.size[1], case.size[0], 3)
    pkts = packets(path)
    assert len(pkts) == case.frames, "one packet per shown frame"
    keys = [i for i, p in enumerate(pkts) if p.is_keyframe]
    assert len(keys) >= 2, "several key frames, so that reading seeks"
    if case.reordered:
        assert {"P", "B"} <= set(decoded_types(path)), "P- and B-frames"
        if not path.endswith((".avi", ".h264")):  # (these store no presentation times)
            pts = [p.pts for p in pkts]
            assert pts != sorted(pts), "B-frames reorder"
    if case.leading:  # a key frame (not the first) followed in decode order by earlier frames
        assert any(any(q.pts < pkts[i].pts for q in pkts[i + 1 : i + 8]) for i in keys[1:]), (
            "open GOP: frames after a key frame in decode order are shown before it"
        )
    if case.hidden and case.codec == "libsvtav1":
        units = [av1_frames(bytes(p)) for p in pkts]
        assert any("hidden" in u for u in units) and ["shown again"] in units, "hidden frames"
    elif case.hidden:
        assert any(superframe_count(bytes(p)) > 1 for p in pkts), "alt-ref frames in superframes"
    with av.open(path) as container:
        stream = container.streams.video[0]
        start = float((stream.start_time or 0) * stream.time_base)  # raw streams: None
    if path.endswith((".ts", ".mpg", ".flv")) and not case.start_ms:
        assert start > 0, "first timestamp"  # these muxers start the clock later than zero
    else:
        assert start == pytest.approx(case.start_ms / 1000), "first timestamp"
    if case.steps_ms:  # AVI stores decode times only
        stamps = sorted(p.dts if path.endswith(".avi") else p.pts for p in pkts)  # noqa: B023
        steps = np.diff(stamps)
        assert steps.max() > 2 * steps.min() > 0, "variable frame rate"


def clip_sets(n: int, seed: int) -> list[list[int]]:
    """Frame sets as the dataset asks for them (TSN segment centres, random offsets, dense
    strides that wrap, twice-sampling), repeated frames, and clips that go backwards."""
    rng = np.random.RandomState(seed)
    sets = []
    for s in (3, 8):
        tick = n / s
        centres = [int(tick / 2 + tick * i) + 1 for i in range(s)]
        sets += [centres, centres + [int(tick * i) + 1 for i in range(s)]]
        d = n // s
        sets.append((np.arange(s) * d + rng.randint(d, size=s) + 1).tolist())
    start = rng.randint(n)
    sets.append([(start + 2 * i) % n + 1 for i in range(8)])  # dense, wraps around
    sets.append([int(i * n / 48) + 1 for i in range(48)])  # more segments than frames: repeats
    sets += [[n - 1, n - 1, n], [n, n - 8, 1], [9, 2, 2, 17], [n], [1]]  # backwards and repeats
    sets += [sorted(rng.randint(1, n + 1, size=rng.randint(1, 9)).tolist()) for _ in range(6)]
    return sets


def assert_frames(got: dict, wanted: list[int], expected: list, name: str) -> None:
    assert sorted(got) == sorted(set(wanted)), f"{name}: frames {sorted(set(wanted))}"
    for k in wanted:
        np.testing.assert_array_equal(
            np.asarray(got[k]), expected[k - 1], err_msg=f"{name}: frame {k} of {wanted}"
        )


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Each case encoded once, with the frames of its plain decode loop."""
    root = tmp_path_factory.mktemp("conformance")
    out = {}
    for case in CASES:
        path = str(root / case.file)
        encode(path, case)
        out[case.file] = (path, plain_loop(path))
    return out


def test_every_encoder_is_in_pyav():
    """The encoders the suite needs ship with PyAV's wheels; a build without one must fail here
    rather than shrink the suite silently."""
    missing = [name for name in ENCODERS if not has_encoder(name)]
    assert not missing, f"PyAV {av.__version__} lacks the encoders {missing}"


@pytest.mark.parametrize("case", CASES, ids=[case.file for case in CASES])
def test_reader_matches_plain_decode_loop(videos, case):
    path, expected = videos[case.file]
    check_structure(path, case, expected)
    check_reads(VideoReader(path, threads=case.threads), expected, case.model)
    n = len(expected)
    for k in (1, n // 2 + 1, n):  # a fresh reader's first request
        with VideoReader(path, threads=case.threads) as reader:
            assert_frames(reader.read([k, k]), [k, k], expected, case.file)


def check_reads(source: str | VideoReader, expected: list, model: str) -> None:
    """Every frame alone (forwards, then backwards: a seek back each time), then the clip sets,
    on one reader; then the model it ended with."""
    reader = source if isinstance(source, VideoReader) else VideoReader(source)
    n = len(expected)
    with reader:
        assert reader.num_frames == n and reader.problem is None
        for k in list(range(1, n + 1)) + list(range(n, 0, -1)):
            assert_frames(reader.read([k]), [k], expected, reader.path)
        for wanted in clip_sets(n, seed=n):
            assert_frames(reader.read(wanted), wanted, expected, reader.path)
        assert reader.model == model


# ----------------------------------------------------------------- MPEG-4 as DivX and xvid
VOP = b"\x00\x00\x01\xb6"  # start code of a video object plane (a coded frame)
# A P-VOP that is not coded: modulo time base 0, time increment 0 in 5 bits (FFmpeg's encoder
# at 25 fps: resolution 25), vop_coded 0, stuffing. FFmpeg outputs no frame for it.
NOT_CODED = VOP + bytes([0b01010000, 0b01001111])
DIVX_PACKED = b"\x00\x00\x01\xb2DivX503b1393p"  # user data: "p" = packed B-frames


def rewrite_packets(src: str, dst: str, rewrite) -> None:
    """Copy an AVI's video packets through `rewrite([(data, key), ...]) -> [(data, key), ...]`
    into `dst` (AVI, or mp4 for streams without B-frames), timestamps = packet index."""
    with av.open(src) as source:
        stream = source.streams.video[0]
        packets = [(bytes(p), p.is_keyframe) for p in source.demux(stream) if p.size]
        with av.open(dst, "w") as out:
            copy = out.add_stream_from_template(stream)
            for i, (data, key) in enumerate(rewrite(packets)):
                packet = av.Packet(data)
                packet.stream, packet.time_base = copy, stream.time_base
                packet.pts = packet.dts = i
                packet.is_keyframe = key
                out.mux(packet)


def pack_bframes(packets: list) -> list:
    """DivX 5 / xvid "packed bitstream": each B-frame travels in the chunk of the anchor decoded
    before it, and a not-coded frame holds its place (so AVI needs no reordering)."""
    data, key = packets[0]
    at = data.index(VOP)
    out, rest = [], [(data[:at] + DIVX_PACKED + data[at:], key)] + packets[1:]
    i = 0
    while i < len(rest):
        following = rest[i + 1][0] if i + 1 < len(rest) else b""
        if (
            following[following.find(VOP) + 4 :][:1]
            and following[following.find(VOP) + 4] >> 6 == 2
        ):
            out += [(rest[i][0] + following, rest[i][1]), (NOT_CODED, False)]  # B-VOP
            i += 2
        else:
            out.append(rest[i])
            i += 1
    return out


def drop_a_frame(packets: list) -> list:
    """What xvid writes for a dropped frame: a not-coded frame (early, before key frames)."""
    return packets[:3] + [(NOT_CODED, False)] + packets[3:]


@pytest.mark.parametrize(
    "kind, ext", [("packed_bframes", "avi"), ("not_coded_frame", "avi"), ("not_coded_frame", "mp4")]
)
def test_mpeg4_as_divx_and_xvid_write_it(tmp_path, kind, ext):
    """Packets that decode to no frame (not-coded frames) and packets that hold two frames
    (packed B-frames): counting packets would number every later frame one off, silently; the
    reader notices the not-coded frames by size and numbers such files by decoding them once."""
    base = next(c for c in CASES if c.file == "mpeg4_bframes.avi")
    case = dataclasses.replace(base, bframes=1 if kind == "packed_bframes" else 0)
    plain = str(tmp_path / "plain.avi")
    encode(plain, case)
    path = str(tmp_path / f"{kind}.{ext}")
    rewrite_packets(plain, path, pack_bframes if kind == "packed_bframes" else drop_a_frame)
    expected = plain_loop(path)
    assert all(np.array_equal(a, b) for a, b in zip(expected, plain_loop(plain)))
    assert len(expected) == case.frames  # the same frames, in order
    chunks = packets(path)
    if kind == "packed_bframes":
        assert len(chunks) == case.frames and any(bytes(p).count(VOP) == 2 for p in chunks)
    else:
        assert len(chunks) == case.frames + 1
    check_reads(path, expected, "decoded")


# ----------------------------------------------------------------------------- bad files
def mark_every_frame_key(path: str) -> None:
    """Make the file's index claim that every frame is a key frame: AVI sets the key flag on
    every idx1 entry; mp4 loses its sync-sample box (stss), which means the same."""
    data = bytearray(open(path, "rb").read())
    if path.endswith(".avi"):
        at = data.rindex(b"idx1")
        (size,) = struct.unpack_from("<I", data, at + 4)
        for entry in range(at + 8, at + 8 + size, 16):
            (flags,) = struct.unpack_from("<I", data, entry + 4)
            struct.pack_into("<I", data, entry + 4, flags | 0x10)  # AVIIF_KEYFRAME
    else:
        at = data.index(b"stss")
        data[at : at + 4] = b"free"
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("file_name", ["mpeg4_bframes.avi", "h264_bframes.mp4"])
def test_index_that_calls_every_frame_a_key_frame(tmp_path, file_name):
    """Seeks land on frames that are not key frames; the demuxers still flag the packets from
    the bitstream, so the reader skips (demuxing only) to the next real key frame."""
    case = next(c for c in CASES if c.file == file_name)
    path = str(tmp_path / file_name)
    encode(path, case)
    expected = plain_loop(path)
    mark_every_frame_key(path)
    with av.open(path) as container:
        assert all(entry.is_keyframe for entry in container.streams.video[0].index_entries)
    assert all(np.array_equal(a, b) for a, b in zip(plain_loop(path), expected))
    check_reads(path, expected, case.model)


def test_packets_that_claim_key_frames_they_are_not(videos, tmp_path):
    """The same lie one level down, where the demuxer believes it (simulated: every frame's
    packet listed as a key frame in the reader's table): the first frame after a seek does not
    decode as a key frame, and the reader numbers the file by decoding it once instead, taking
    as key frames the frames that decode as key frames."""
    source, expected = videos["h264_open_gop.mkv"]
    path = str(tmp_path / "copy.mkv")  # a file of its own: the reader caches tables per file
    shutil.copy(source, path)
    with VideoReader(path) as reader:
        table = reader._timing
        assert reader.model == "timestamps"
        table.key_packets = sorted(
            (i for i, n in enumerate(table.numbers) if n is not None), key=table.numbers.__getitem__
        )
        table.__post_init__()
        check_reads(reader, expected, "decoded")


@pytest.mark.parametrize(
    "file_name, problem",
    [
        ("mpeg4_bframes.avi", "the container declares 30 frames but holds"),  # idx1 at the end
        # Matroska's header keeps the duration (its cues at the end are lost): it said nothing
        ("h264_open_gop.mkv", "truncated: its header says it lasts 1.20 s, its packets end at"),
        ("vp9_altref.webm", "truncated: its header says it lasts 1.44 s, its packets end at"),
        # MPEG-TS has no index at all; a cut inside a 188-byte packet shows (it said nothing)
        ("h264_open_gop.ts", "truncated: the file ends inside a transport-stream packet"),
        ("mpeg2_bframes.ts", "truncated: the file ends inside a transport-stream packet"),
    ],
)
def test_truncated_file_reads_what_is_there(tmp_path, file_name, problem):
    """A file cut at 60% (its index at the end is lost): it opens, says it is cut short where the
    container can tell, and the frames that are there read exactly as the plain loop decodes the
    cut file; `scan` lists them."""
    case = next(c for c in CASES if c.file == file_name)
    full = str(tmp_path / ("full_" + file_name))
    encode(full, case)
    cut = str(tmp_path / file_name)
    data = open(full, "rb").read()
    size = int(len(data) * 0.6)
    if file_name.endswith(".ts") and size % 188 == 0:
        size -= 100  # inside a packet (a cut between packets leaves no trace: docs/cluster_faults.md)
    open(cut, "wb").write(data[:size])
    expected = plain_loop(cut)
    assert 5 < len(expected) < case.frames
    with VideoReader(cut) as reader:
        if problem is None:
            assert reader.problem is None
        else:
            assert problem in reader.problem and "\n" not in reader.problem
        assert len(expected) <= reader.num_frames < case.frames
        # A cut inside a packet leaves the last frame's data incomplete: how the decoder
        # conceals the rest depends on where decoding started and on its threads, so that frame
        # is only required to be there.
        damaged = 1 if file_name.endswith(".ts") else 0
        assert len(expected) in reader.read([len(expected)])
        for k in range(len(expected) - damaged, 0, -1):
            assert_frames(reader.read([k]), [k], expected, file_name)
        last = len(expected) - damaged
        images, decodable = reader.scan([1, last])
        assert decodable[: len(expected)] == list(range(1, len(expected) + 1))
        np.testing.assert_array_equal(np.asarray(images[last]), expected[last - 1])


@pytest.mark.parametrize("ext, codec", [("mp4", "libx264"), ("mkv", "libx264"), ("avi", "mpeg4")])
def test_video_without_frames_is_a_one_line_error(tmp_path, ext, codec):
    path = str(tmp_path / f"empty.{ext}")
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()  # the header, no frame
    with pytest.raises(VideoError) as info:
        VideoReader(path)
    message = str(info.value)
    assert path in message and "\n" not in message
    # mp4 and mkv without samples do not even declare the stream; AVI does
    assert any(s in message for s in ("has no frame", "has no video stream", "does not open"))
