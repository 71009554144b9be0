"""Read chosen frames of a video file with PyAV: seek to the key frame before them, decode forward.

Frame numbers are 1-based and mean what they mean for the frame folders of
tools/extract_frames.py: frame k is the k-th frame the decoder outputs when it decodes the file
from the start (presentation order). The reader finds frame k without decoding from the start:

- Constant frame rate with a complete index (mp4 / mov, where the demuxer loads every sample's
  timestamp when it opens the file): frame k has the timestamp `start + (k - 1) * step`. Checked
  in O(1) when the file is opened (declared frame count x step = stream duration, index length =
  frame count, index span) and again on every decoded frame (its timestamp must fall on the
  grid); a video that fails either check is read in exact mode.
- Exact mode (variable frame rate, webm / mkv / avi without a complete index): one pass over
  the packets (demuxing only, no decoding) lists every frame's timestamp; frame k is the k-th
  smallest. The table is cached per process.

`VideoReader.read` takes the wanted frames in increasing order; before each it seeks to the
latest key frame at or before it when that key frame lies ahead of the decoder, and decodes
forward, keeping the wanted frames. So an 8-frame clip decodes at most 8 groups of pictures,
whatever the video's length. Where the container seeks somewhere else than asked, the first
decoded frame says so and the reader seeks one key frame earlier (from the start as a last
resort), so the result never depends on a container's seek semantics.

Bad files: a missing file or one that does not open as a video raises `VideoError` (one line);
a file shorter than its index (truncated) opens with `problem` set; frames that cannot be decoded
are absent from `read`'s result, and `scan` decodes the whole file once to tell which frames do
decode, so that the caller can use the nearest one (ops/dataset.py does, and counts it).

torchcodec is not used: version 0.17 installs from the registry but does not load here, as it
needs FFmpeg's shared libraries on the system (PyAV ships its own FFmpeg), so there was nothing
to measure against; `DECODER` names the decoder in use and is logged once per process.
"""

from __future__ import annotations

import bisect
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
_EXACT_CACHE_SIZE = 512  # exact-mode timestamp tables kept per process
_exact_tables: OrderedDict[tuple, _Table] = OrderedDict()
_announced = False


class VideoError(OSError):
    """A video file that cannot be read at all; the message is one line naming the file."""


class _OffGrid(Exception):
    """A decoded frame's timestamp is not where the constant-frame-rate model puts it."""


# ------------------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class _Grid:
    """Constant frame rate: frame k has timestamp `start + (k - 1) * step`."""

    start: int
    step: int
    count: int
    exact = False

    def number(self, pts: int | None) -> int:
        if pts is None:
            raise _OffGrid("frame without timestamp")
        q, r = divmod(pts - self.start, self.step)
        if r:
            raise _OffGrid(f"timestamp {pts} is not on the grid {self.start} + k * {self.step}")
        return q + 1

    def pts(self, k: int) -> int:
        return self.start + (k - 1) * self.step

    def key_frame_at_or_before(self, k: int) -> int | None:  # unknown without an exact table
        return None


@dataclass(frozen=True)
class _Table:
    """Exact mode: the sorted timestamps of all frames, and which frames are key frames."""

    timestamps: tuple[int, ...]
    key_frames: tuple[int, ...]  # frame numbers, sorted
    exact = True

    @property
    def count(self) -> int:
        return len(self.timestamps)

    def number(self, pts: int | None) -> int | None:
        if pts is None:
            return None
        i = bisect.bisect_left(self.timestamps, pts)
        return i + 1 if i < len(self.timestamps) and self.timestamps[i] == pts else None

    def pts(self, k: int) -> int:
        return self.timestamps[k - 1]

    def key_frame_at_or_before(self, k: int) -> int | None:
        i = bisect.bisect_right(self.key_frames, k)
        return self.key_frames[i - 1] if i else None


def _frame_pts(frame: av.VideoFrame) -> int | None:
    return frame.pts if frame.pts is not None else frame.dts


# ------------------------------------------------------------------------------------- reader
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
        self._timing = self._grid_timing()
        if self._timing is None:
            self._timing = self._exact_timing()
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

    def _exact_timing(self) -> _Table:
        """Every frame's timestamp from one pass over the packets (no decoding); cached."""
        st = os.stat(self.path)
        key = (os.path.abspath(self.path), st.st_size, st.st_mtime_ns)
        table = _exact_tables.get(key)
        if table is None:
            stamps, keys = [], []
            try:
                for packet in self.container.demux(self.stream):
                    ts = packet.pts if packet.pts is not None else packet.dts
                    if ts is None or packet.size == 0 or packet.is_discard:
                        continue
                    stamps.append(ts)
                    if packet.is_keyframe:
                        keys.append(ts)
            except av.FFmpegError as e:  # truncated or damaged: what was read so far counts
                self.problem = f"the packets stop early ({_one_line(e)})"
            stamps = sorted(set(stamps))
            pos = {ts: i + 1 for i, ts in enumerate(stamps)}
            table = _Table(tuple(stamps), tuple(sorted(pos[ts] for ts in set(keys))))
            _exact_tables[key] = table
            if len(_exact_tables) > _EXACT_CACHE_SIZE:
                _exact_tables.popitem(last=False)
            self.close()
            self._open()
        else:
            _exact_tables.move_to_end(key)
        if self.declared_frames > table.count and self.problem is None:
            self.problem = (
                f"the container declares {self.declared_frames} frames but holds {table.count}"
            )
        self._delay = 0
        return table

    def _use_exact_timing(self) -> None:
        logger.debug("%s: timestamps off the constant-rate grid, reading in exact mode", self.path)
        declared_problem = self.problem
        self.problem = None
        self.close()  # the packet pass starts from the beginning of the file
        self._open()
        self._timing = self._exact_timing()
        self.problem = self.problem or declared_problem

    @property
    def num_frames(self) -> int:
        """Frames of the video (the container's count, checked when the file was opened)."""
        return self._timing.count

    @property
    def exact(self) -> bool:
        """True when frame numbers come from a table of every frame's timestamp."""
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
        wanted = sorted({int(k) for k in frames if 1 <= int(k) <= self.num_frames})
        out: dict[int, Image.Image] = {}
        try:
            try:
                self._read_seeking(wanted, out)
            except _OffGrid:
                self._use_exact_timing()
                out.clear()
                self._read_seeking(wanted, out)
        except av.FFmpegError as e:  # e.g. a seek in a damaged file
            raise VideoError(f"video {self.path} does not decode: {_one_line(e)}") from None
        return out

    def scan(self, frames: Iterable[int] = ()) -> tuple[dict[int, Image.Image], list[int]]:
        """Decode the whole file from the start: (images of `frames` that decode, the numbers of
        all frames that decode). For damaged videos only: its cost grows with the video length."""
        wanted = {int(k) for k in frames}
        try:
            try:
                return self._scan(wanted)
            except _OffGrid:
                self._use_exact_timing()
                return self._scan(wanted)
        except av.FFmpegError as e:
            raise VideoError(f"video {self.path} does not decode: {_one_line(e)}") from None

    def _scan(self, wanted: set[int]) -> tuple[dict[int, Image.Image], list[int]]:
        self.close()
        self._open()
        out, decodable = {}, set()
        for frame in self._decode(self.container.demux(self.stream)):
            n = self._timing.number(_frame_pts(frame))
            if n is None or not 1 <= n <= self.num_frames:
                continue
            decodable.add(n)
            if n in wanted and n not in out:
                out[n] = frame.to_image()
        return out, sorted(decodable)

    def _read_seeking(self, wanted: list[int], out: dict[int, Image.Image]) -> None:
        todo = set(wanted)
        frames: Iterator | None = None  # decoded (number, frame) of the current decoding run
        pos = 0  # number of the last frame the current run produced
        for k in wanted:
            if k not in todo:
                continue
            if frames is None or k <= pos or self._key_frame_ahead(pos, k):
                frames, pos = self._seek(k)
            for n, frame in frames:
                pos = n
                if n in todo:
                    out[n] = frame.to_image()
                    todo.discard(n)
                if n >= k:
                    break
            else:  # end of file (or of what decodes): nothing after `pos` will come
                frames = None
            todo = {j for j in todo if j > pos}  # passed without decoding: missing

    def _key_frame_ahead(self, pos: int, k: int) -> bool:
        """Whether a key frame lies in (pos, k], so that seeking beats decoding on from pos."""
        key = self._timing.key_frame_at_or_before(k)
        if key is None:  # grid mode: ask the index (decode order; its timestamps are dts)
            index = self.stream.index_entries
            i = index.search_timestamp(self._timing.pts(k) - self._delay, backward=True)
            key = i + 1 if i >= 0 else 1
        return key > pos + 1

    def _seek(self, k: int) -> tuple[Iterator, int]:
        """Position the decoder so that its next frames lead to frame k; returns the run of
        decoded (number, frame), starting with the first frame at or before k, and 0."""
        target = self._timing.pts(k)
        for _ in range(SEEK_RETRIES):
            self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
            self.stream.codec_context.flush_buffers()
            first_packet: list = []
            run = self._numbered(self._decode(self.container.demux(self.stream), first_packet))
            head = next(run, None)
            if head is None:
                return iter(()), 0
            if head[0] <= k:
                return _chain(head, run), 0
            p = first_packet[0]  # landed after k: one key frame earlier
            stamps = [t for t in (p.dts, p.pts) if t is not None]
            if not stamps:
                break
            target = min(stamps) - 1
        self.close()  # last resort: decode from the start of the file
        self._open()
        return self._numbered(self._decode(self.container.demux(self.stream))), 0

    def _numbered(self, frames: Iterator) -> Iterator[tuple[int, av.VideoFrame]]:
        for frame in frames:
            n = self._timing.number(_frame_pts(frame))
            if n is not None and 1 <= n <= self.num_frames:
                yield n, frame

    def _decode(self, packets: Iterator, first_packet: list | None = None) -> Iterator:
        """Frames of the packets; damaged packets are skipped, a demuxing error ends the file."""
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as e:
                logger.debug("%s: demuxing stopped: %s", self.path, _one_line(e))
                packet = None
            if first_packet is not None and packet is not None and not first_packet:
                first_packet.append(packet)
            try:
                # A None packet (or the empty one at the end) flushes the decoder's last frames.
                yield from self.stream.codec_context.decode(packet)
            except av.FFmpegError as e:
                logger.debug("%s: a packet does not decode: %s", self.path, _one_line(e))
            if packet is None:
                return


def _chain(head, rest: Iterator) -> Iterator:
    yield head
    yield from rest


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return str(exc.strerror)  # without FFmpeg's error number and the repeated file name
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
