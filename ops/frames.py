"""Frame folders: how frames are named on disk, decoded, and loaded for a clip.

Frames of a video are `root_path/<folder>/<image_tmpl.format(k)>`, k = 1..num_frames; flow frames
are x/y image pairs (SPEC.md section 8) in one of three layouts (`flow_layout`). `FrameFolders`
is the data layer's source for this layout (`ops/video_files.py` is the one for video files): it
decodes the frames a clip samples, each distinct frame once, and replaces a missing or undecodable
frame by the nearest readable frame of the same video, counted and logged (`ops/data_problems.py`).

Two things the published PIL loader got silently wrong are fixed here, and the second is counted:
16-bit frames (PNG/TIFF, PIL mode ``I;16``/``I``) are scaled to 8 bits (``value >> 8``, as
OpenCV's ``imread`` does for mmcv/mmaction2) instead of being clipped to white; a frame whose size
differs from the first frame of the clip is resized (bilinear) to that size, counted as
``frames_resized``, instead of being cropped with black padding (a video's frames share one size
in every TSM / mmaction2 pipeline, so a different one is a data problem).

Work per video is bounded by what is on disk, not by what a list claims: the replacement for a
missing frame is searched among the frames the folder holds (listed once). A frame path that is
not a regular file (a FIFO, a device) is unreadable without being opened, and a read that blocks
(a hung network filesystem) gives up after ``read_timeout()`` seconds (``RNL_READ_TIMEOUT``,
default 60; the read runs in a helper thread, one hand-off per frame), counted as
``frames_timed_out``; the loader goes on, so a stop request is honoured.

Packed frames (``ops/packed_frames.py``): a video may also be one file, ``<folder>.zip``, holding
the folder's frame files unchanged. The rule (``video_location``), for the folder ``<root>/<name>``
a list entry names: that folder if it is a directory; else ``<root>/<name>`` itself if it is a
``.zip`` file (a list may name packed files); else ``<root>/<name>.zip`` if it is a file; else the
video is missing. A packed video is read as its folder would be (same frame names, same bytes, so
the same pixels), its sampled members in one timed read per clip; a member that is missing is a
missing frame, one that is damaged (CRC, header) an undecodable frame, counted and replaced
alike; a packed file whose index cannot be read is an unreadable video.
"""

from __future__ import annotations

import bisect
import functools
import io
import os
import queue
import re
import stat
import string
import threading
from collections.abc import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ops import packed_frames
from ops.data_problems import DataError, DataProblems
from ops.lists import VideoRecord, parse_list_file
from ops.packed_frames import EXT as PACKED_EXT

# How a source asks the dataset which frames to read: frames in the video -> 1-based frame numbers.
Sample = Callable[[int], list[int]]


@functools.lru_cache(maxsize=64)
def _template_fields(image_tmpl: str) -> int:
    """Number of `{}` replacement fields in a frame-name template."""
    try:
        return sum(
            1 for _, field, _, _ in string.Formatter().parse(image_tmpl) if field is not None
        )
    except ValueError as e:
        raise DataError(f"image_tmpl {image_tmpl!r} is not a valid format string: {e}") from None


def flow_layout(image_tmpl: str) -> str:
    """How a flow template names x/y frames: 'xy' (`flow_{}_{:05d}.jpg`), 'id_xy'
    (`{:06d}-{}_{:05d}.jpg` in a folder named by the 6-digit id) or 'packed' (one RGB image
    holding x and y in its first two channels, `{:06d}.jpg`)."""
    n = _template_fields(image_tmpl)
    return {1: "packed", 2: "xy", 3: "id_xy"}.get(n, "invalid")


def check_template(image_tmpl: str, modality: str) -> None:
    """Raise DataError when the frame-name template does not fit the modality."""
    n = _template_fields(image_tmpl)
    if modality != "Flow" and n != 1:
        raise DataError(
            f"image_tmpl {image_tmpl!r} has {n} fields; {modality} frames need one, the frame "
            "number (e.g. 'img_{:05d}.jpg')"
        )
    if modality == "Flow" and flow_layout(image_tmpl) == "invalid":
        raise DataError(
            f"image_tmpl {image_tmpl!r} has {n} fields; flow frames need 1 ('{{:06d}}.jpg'), "
            "2 ('flow_{}_{:05d}.jpg') or 3 ('{:06d}-{}_{:05d}.jpg')"
        )


def frames_on_disk(num_frames: int, image_tmpl: str, modality: str) -> int:
    """Frames the loader reads for a list's frame count: Something-v1 flow lists count the x and
    y files together, so their count is halved (as the published loader did)."""
    if modality == "Flow" and flow_layout(image_tmpl) == "id_xy":
        return max(num_frames // 2, 1)
    return num_frames


def video_dir(root_path: str, video: str, image_tmpl: str, modality: str) -> str:
    """Folder holding the frames of `video` (a list entry)."""
    if modality == "Flow" and flow_layout(image_tmpl) == "id_xy":
        return os.path.join(root_path, f"{int(video):06d}")
    return os.path.join(root_path, video)


def frame_files(root_path: str, video: str, image_tmpl: str, modality: str, idx: int) -> list[str]:
    """File(s) of frame `idx` (1-based): one RGB image, or the x and y images of a flow frame
    (a single file for the 'packed' flow layout)."""
    folder = video_dir(root_path, video, image_tmpl, modality)
    if modality != "Flow":
        return [os.path.join(folder, image_tmpl.format(idx))]
    layout = flow_layout(image_tmpl)
    if layout == "xy":
        return [os.path.join(folder, image_tmpl.format(c, idx)) for c in ("x", "y")]
    if layout == "id_xy":
        return [os.path.join(folder, image_tmpl.format(int(video), c, idx)) for c in ("x", "y")]
    return [os.path.join(folder, image_tmpl.format(idx))]


def video_location(folder: str) -> tuple[str, str] | None:
    """Where the frames of the video whose folder is ``folder`` (``video_dir``) are:
    ``("folder", folder)`` if it is a directory, else ``("packed", folder)`` if it is a ``.zip``
    file, else ``("packed", folder + ".zip")`` if that is a file, else None."""
    if os.path.isdir(folder):
        return "folder", folder
    if folder.endswith(PACKED_EXT) and os.path.isfile(folder):
        return "packed", folder
    if os.path.isfile(folder + PACKED_EXT):
        return "packed", folder + PACKED_EXT
    return None


class FrameReadTimeout(OSError):
    """A frame file whose read did not finish within ``read_timeout()`` seconds."""


def read_timeout() -> float:
    """Seconds a frame file's read may take (``RNL_READ_TIMEOUT``, default 60; 0 reads in the
    calling thread without a timeout, saving a thread hand-off per frame on trusted disks)."""
    try:
        return max(float(os.environ.get("RNL_READ_TIMEOUT", "60")), 0.0)
    except ValueError:
        return 60.0


class _TimedReader:
    """Reads files in a daemon thread so that a read that blocks forever costs ``timeout``
    seconds and one abandoned thread, not the whole run. One per process (DataLoader workers are
    forked: a copy from the parent is replaced)."""

    def __init__(self) -> None:
        self._pid = -1
        self._jobs: queue.SimpleQueue | None = None

    def _start(self) -> None:
        self._pid, self._jobs = os.getpid(), queue.SimpleQueue()
        threading.Thread(target=self._serve, args=(self._jobs,), daemon=True).start()

    @staticmethod
    def _serve(jobs: queue.SimpleQueue) -> None:
        while True:
            fn, box, done = jobs.get()
            try:
                box["data"] = fn()
            except BaseException as e:  # handed to the caller
                box["error"] = e
            done.set()

    def call(self, fn: Callable, timeout: float, what: str):
        """``fn()`` in the reader thread; FrameReadTimeout (naming ``what``) after ``timeout``."""
        if self._pid != os.getpid() or self._jobs is None:
            self._start()
        box: dict = {}
        done = threading.Event()
        self._jobs.put((fn, box, done))
        if not done.wait(timeout):
            self._jobs = None  # the thread is stuck in the read: the next read starts another
            raise FrameReadTimeout(f"reading {what} took more than {timeout:g} s")
        if "error" in box:
            raise box["error"]
        return box["data"]

    def read(self, path: str, timeout: float) -> bytes:
        return self.call(functools.partial(_read_file, path), timeout, path)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


_reader = _TimedReader()


def read_bytes(path: str) -> bytes:
    """The bytes of a regular file, read within ``read_timeout()`` seconds (FrameReadTimeout);
    anything else (a FIFO, a device, a folder) is refused before it is opened (OSError)."""
    mode = os.stat(path).st_mode  # FileNotFoundError for a missing frame
    if not stat.S_ISREG(mode):
        raise OSError(f"{path} is not a regular file")
    timeout = read_timeout()
    if timeout == 0:
        return _read_file(path)
    return _reader.read(path, timeout)


def timed(fn: Callable, what: str):
    """``fn()`` (a read) within ``read_timeout()`` seconds, else FrameReadTimeout naming
    ``what``; open packed files are forgotten then (the stuck thread may still hold one)."""
    timeout = read_timeout()
    if timeout == 0:
        return fn()
    try:
        return _reader.call(fn, timeout, what)
    except FrameReadTimeout:
        packed_frames.forget_handles()
        raise


def decode_image(path: str, mode: str = "RGB") -> Image.Image:
    """Read and fully decode one image file into `mode` (raises OSError/ValueError if broken).

    The bytes are read at once (``read_bytes``: regular files only, within the read timeout), so
    the file is closed before decoding; the pixels are those of `Image.open(path).convert(mode)`,
    as in the published loader (16-bit data scaled to 8 bits, see the module docstring).
    """
    return decode_bytes(read_bytes(path), mode)


def decode_bytes(data: bytes, mode: str = "RGB") -> Image.Image:
    """Fully decode one image file's bytes into `mode`, as ``decode_image`` does the file."""
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise OSError(f"not an image file PIL can read ({len(data)} bytes)") from None
    im.load()
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        im = _to_8bit(im)
    return im if im.mode == mode else im.convert(mode)


def _to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) grey image as 8-bit ``L``: ``value >> 8`` for 16-bit data,
    as OpenCV reads it; PIL's own ``convert`` clips every value above 255 to white. Mode ``I``
    data that fits in 8 bits is kept as it is."""
    values = np.asarray(im, dtype=np.int64)
    if im.mode != "I" or values.max(initial=0) > 255:
        values = values >> 8
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L")


def read_frame(paths: list[str], modality: str) -> list[Image.Image]:
    """Decode the file(s) of one frame into the images the transforms expect: [RGB] or [x, y]."""
    return _frame_images(paths, modality, decode_image)


def read_frame_bytes(datas: list[bytes], modality: str) -> list[Image.Image]:
    """``read_frame`` of the frame's file bytes (a packed video's members)."""
    return _frame_images(datas, modality, decode_bytes)


def _frame_images(files: list, modality: str, decode: Callable) -> list[Image.Image]:
    if modality != "Flow":
        return [decode(files[0], "RGB")]
    if len(files) == 2:
        return [decode(files[0], "L"), decode(files[1], "L")]
    r, g, _ = decode(files[0], "RGB").split()  # packed flow: x in R, y in G
    return [r, g]


def read_frame_list(list_file: str, num_class: int | None, image_tmpl: str, modality: str):
    """Records (frame counts as listed) and malformed lines of a frame-folder list."""
    numeric_ids = modality == "Flow" and flow_layout(image_tmpl) == "id_xy"
    return parse_list_file(list_file, num_class, numeric_ids)


class FrameFolders:
    """Videos stored as one folder of frame images each (TSM's layout), or as one packed file of
    those images each (``ops/packed_frames.py``; the rule is ``video_location``'s).

    `read_frame` turns a frame's file(s) into what the transforms get, `read_frame_bytes` a
    packed frame's member(s); the device data path (`ops.device_augment.EncodedFrameFolders`)
    replaces both to hand over the JPEG bytes instead."""

    read_frame = staticmethod(read_frame)
    read_frame_bytes = staticmethod(read_frame_bytes)

    def __init__(self, root_path: str, image_tmpl: str, modality: str, problems: DataProblems):
        check_template(image_tmpl, modality)
        self.root_path, self.image_tmpl, self.modality = root_path, image_tmpl, modality
        self.problems = problems

    def describe(self) -> str:
        return f"frames under {self.root_path}"

    def read_list(self, list_file: str, num_class: int | None):
        return read_frame_list(list_file, num_class, self.image_tmpl, self.modality)

    def open_video(self, record: VideoRecord) -> _FolderVideo | _PackedVideo | None:
        """The frames of ``record`` on disk (a folder or a packed file), or None (counted)."""
        folder = video_dir(self.root_path, record.path, self.image_tmpl, self.modality)
        where = video_location(folder)
        if where is None:
            self.problems.problem(
                record,
                "videos_missing_dir",
                f"frame folder {folder} does not exist (nor a packed {folder}{PACKED_EXT})",
            )
            return None
        if where[0] == "folder":
            return _FolderVideo(self, record, folder)
        return _PackedVideo(self, record, where[1])

    def load(self, record: VideoRecord, sample: Sample) -> list[Image.Image] | None:
        """Decode the frames ``sample(record.num_frames)`` of ``record`` (each distinct frame once),
        replacing unreadable frames by the nearest readable one; None when the video has to be
        skipped."""
        problems = self.problems
        frames = sample(record.num_frames)
        video = self.open_video(record)
        if video is None:
            return None
        try:
            video.fetch(list(dict.fromkeys(frames)))
        except OSError as e:  # a packed file whose index does not read (or that timed out)
            problems.problem(record, "videos_unreadable", _one_line(e))
            return None
        cache: dict[int, list[Image.Image] | tuple[str, str]] = {}

        def read(k: int):
            if k not in cache:
                try:
                    cache[k] = video.read(k)
                except FileNotFoundError as e:
                    cache[k] = ("frames_missing", f"frame {k} is missing: {e.filename}")
                except FrameReadTimeout as e:
                    cache[k] = ("frames_timed_out", f"frame {k}: {e}")
                except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
                    what = f"frame {k} does not decode: {video.where(k)} ({e})"
                    cache[k] = ("frames_unreadable", what)
            return cache[k]

        resolved: dict[int, list[Image.Image]] = {}
        replaced = False
        on_disk: list[int] | None = None  # listed once, at the first missing frame
        for k in dict.fromkeys(frames):  # distinct, in order
            got = read(k)
            if isinstance(got, list):
                resolved[k] = got
                continue
            kind, what = got
            if on_disk is None:
                on_disk = video.present()
            replacement = _nearest_readable(k, on_disk, read)
            if replacement is None:
                problems.problem(
                    record, "videos_unreadable", f"no readable frame (first problem: {what})"
                )
                return None
            problems.problem(record, kind, f"{what}; using frame {replacement} instead")
            resolved[k] = cache[replacement]
            replaced = True
        if replaced:
            problems.count("clips_with_replaced_frames")
        self._same_size(record, resolved)
        return [im for k in frames for im in resolved[k]]

    def _same_size(self, record: VideoRecord, resolved: dict[int, list[Image.Image]]) -> None:
        """Resize (bilinear) the frames whose size differs from the clip's first frame, counted
        and logged: the crops would otherwise be padded with black."""
        size = next(iter(resolved.values()))[0].size
        for k, images in resolved.items():
            if any(im.size != size for im in images):
                got = next(im.size for im in images if im.size != size)
                self.problems.problem(
                    record,
                    "frames_resized",
                    f"frame {k} is {got[0]}x{got[1]} but the clip's first frame is "
                    f"{size[0]}x{size[1]}; resized to it",
                )
                resolved[k] = [
                    im if im.size == size else im.resize(size, Image.BILINEAR) for im in images
                ]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _FolderVideo:
    """A video's frame folder: each frame read from its own file(s) when it is decoded."""

    def __init__(self, source: FrameFolders, record: VideoRecord, folder: str) -> None:
        self.source, self.record, self.folder = source, record, folder

    def _paths(self, k: int) -> list[str]:
        s = self.source
        return frame_files(s.root_path, self.record.path, s.image_tmpl, s.modality, k)

    def fetch(self, frames: list[int]) -> None:
        """Nothing to do ahead: each frame file is read when it is decoded."""

    def read(self, k: int) -> list:
        return self.source.read_frame(self._paths(k), self.source.modality)

    def where(self, k: int) -> str:
        return " / ".join(self._paths(k))

    def present(self) -> list[int]:
        s = self.source
        return frames_present(self.folder, self.record, s.root_path, s.image_tmpl, s.modality)


class _PackedVideo:
    """A video's packed file: the members of the sampled frames are read together (one timed
    read), those of replacement frames when they are needed."""

    def __init__(self, source: FrameFolders, record: VideoRecord, path: str) -> None:
        self.source, self.record, self.path = source, record, path
        self._got: dict[str, bytes | OSError] = {}

    def _names(self, k: int) -> list[str]:
        s = self.source
        paths = frame_files(s.root_path, self.record.path, s.image_tmpl, s.modality, k)
        return [os.path.basename(p) for p in paths]

    def fetch(self, frames: list[int]) -> None:
        """Read the members of ``frames`` (errors of single members are kept for ``read``);
        raises OSError (PackedError, FrameReadTimeout) when the file cannot be read at all."""
        names = [n for k in frames for n in self._names(k) if n not in self._got]
        if names:
            path = self.path
            self._got.update(timed(lambda: packed_frames.read_members(path, names), path))

    def read(self, k: int) -> list:
        names = self._names(k)
        self.fetch([k])
        datas = []
        for name in names:
            got = self._got[name]
            if isinstance(got, BaseException):
                raise got
            datas.append(got)
        return self.source.read_frame_bytes(datas, self.source.modality)

    def where(self, k: int) -> str:
        return " / ".join(f"{self.path}:{n}" for n in self._names(k))

    def present(self) -> list[int]:
        s = self.source
        try:
            path = self.path
            names = set(timed(lambda: packed_frames.member_names(path), path))
        except OSError:
            return []
        return frames_in_names(names, self.record, s.root_path, s.image_tmpl, s.modality)


def _nearest_readable(k: int, on_disk: list[int], read) -> int | None:
    """Nearest frame number among ``on_disk`` (sorted) that decodes; the earlier one wins a tie.
    Tries at most the frames on disk, whatever the list claims."""
    right = bisect.bisect_right(on_disk, k)
    left = right - 1
    if left >= 0 and on_disk[left] == k:
        left -= 1  # k itself was just found unreadable
    while left >= 0 or right < len(on_disk):
        take_left = right >= len(on_disk) or (left >= 0 and k - on_disk[left] <= on_disk[right] - k)
        j = on_disk[left] if take_left else on_disk[right]
        if take_left:
            left -= 1
        else:
            right += 1
        if isinstance(read(j), list):
            return j
    return None


@functools.lru_cache(maxsize=64)
def _name_pattern(image_tmpl: str) -> re.Pattern:
    """Regex of the file names of a template; the last field (the frame number) is group 1."""
    parts = list(string.Formatter().parse(image_tmpl))
    fields = sum(1 for _, f, _, _ in parts if f is not None)
    out, seen = [], 0
    for literal, field, _, _ in parts:
        out.append(re.escape(literal))
        if field is not None:
            seen += 1
            out.append(r"(\d+)" if seen == fields else r"(?:.+?)")
    return re.compile("".join(out) + r"\Z")


def frames_present(
    folder: str, record: VideoRecord, root_path: str, image_tmpl: str, modality: str
) -> list[int]:
    """Sorted frame numbers in ``1..record.num_frames`` whose file(s) are all in ``folder``,
    found by listing the folder once: the cost is the files on disk, not the frames listed."""
    try:
        with os.scandir(folder) as entries:
            names = {e.name for e in entries}
    except OSError:
        return []
    return frames_in_names(names, record, root_path, image_tmpl, modality)


def frames_in_names(
    names: set[str], record: VideoRecord, root_path: str, image_tmpl: str, modality: str
) -> list[int]:
    """Sorted frame numbers in ``1..record.num_frames`` whose file(s) are all among ``names`` (a
    folder's files, a packed file's members)."""
    pattern = _name_pattern(image_tmpl)
    numbers = set()
    for name in names:
        m = pattern.match(name)
        if m is not None:
            k = int(m.group(1))
            if 1 <= k <= record.num_frames:
                numbers.add(k)
    paths = functools.partial(frame_files, root_path, record.path, image_tmpl, modality)
    return sorted(k for k in numbers if all(os.path.basename(p) in names for p in paths(k)))
