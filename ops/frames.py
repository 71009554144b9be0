"""Frame folders: how frames are named on disk, decoded, and loaded for a clip.

Frames of a video are `root_path/<folder>/<image_tmpl.format(k)>`, k = 1..num_frames; flow frames
are x/y image pairs (SPEC.md section 8) in one of three layouts (`flow_layout`). `FrameFolders`
is the data layer's source for this layout (`ops/video_files.py` is the one for video files): it
decodes the frames a clip samples, each distinct frame once, and replaces a missing or undecodable
frame by the nearest readable frame of the same video, counted and logged (`ops/data_problems.py`).
"""

from __future__ import annotations

import functools
import io
import os
import string
from collections.abc import Callable

from PIL import Image, UnidentifiedImageError

from ops.data_problems import DataError, DataProblems
from ops.lists import VideoRecord, parse_list_file

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


def decode_image(path: str, mode: str = "RGB") -> Image.Image:
    """Read and fully decode one image file into `mode` (raises OSError/ValueError if broken).

    The bytes are read at once, so the file is closed before decoding; the pixels are exactly
    those of `Image.open(path).convert(mode)`, as in the published loader.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise OSError(f"not an image file PIL can read ({len(data)} bytes)") from None
    im.load()
    return im if im.mode == mode else im.convert(mode)


def read_frame(paths: list[str], modality: str) -> list[Image.Image]:
    """Decode the file(s) of one frame into the images the transforms expect: [RGB] or [x, y]."""
    if modality != "Flow":
        return [decode_image(paths[0], "RGB")]
    if len(paths) == 2:
        return [decode_image(paths[0], "L"), decode_image(paths[1], "L")]
    r, g, _ = decode_image(paths[0], "RGB").split()  # packed flow: x in R, y in G
    return [r, g]


def read_frame_list(list_file: str, num_class: int | None, image_tmpl: str, modality: str):
    """Records (frame counts as listed) and malformed lines of a frame-folder list."""
    numeric_ids = modality == "Flow" and flow_layout(image_tmpl) == "id_xy"
    return parse_list_file(list_file, num_class, numeric_ids)


class FrameFolders:
    """Videos stored as one folder of frame images each (TSM's layout).

    `read_frame` turns a frame's file(s) into what the transforms get; the device data path
    (`ops.device_augment.EncodedFrameFolders`) replaces it to hand over the JPEG bytes instead."""

    read_frame = staticmethod(read_frame)

    def __init__(self, root_path: str, image_tmpl: str, modality: str, problems: DataProblems):
        check_template(image_tmpl, modality)
        self.root_path, self.image_tmpl, self.modality = root_path, image_tmpl, modality
        self.problems = problems

    def describe(self) -> str:
        return f"frames under {self.root_path}"

    def read_list(self, list_file: str, num_class: int | None):
        return read_frame_list(list_file, num_class, self.image_tmpl, self.modality)

    def load(self, record: VideoRecord, sample: Sample) -> list[Image.Image] | None:
        """Decode the frames ``sample(record.num_frames)`` of ``record`` (each distinct frame once),
        replacing unreadable frames by the nearest readable one; None when the video has to be
        skipped."""
        problems = self.problems
        frames = sample(record.num_frames)
        folder = video_dir(self.root_path, record.path, self.image_tmpl, self.modality)
        if not os.path.isdir(folder):
            problems.problem(record, "videos_missing_dir", f"frame folder {folder} does not exist")
            return None
        cache: dict[int, list[Image.Image] | tuple[str, str]] = {}

        def read(k: int):
            if k not in cache:
                paths = frame_files(self.root_path, record.path, self.image_tmpl, self.modality, k)
                try:
                    cache[k] = self.read_frame(paths, self.modality)
                except FileNotFoundError as e:
                    cache[k] = ("frames_missing", f"frame {k} is missing: {e.filename}")
                except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
                    where = " / ".join(paths)
                    cache[k] = ("frames_unreadable", f"frame {k} does not decode: {where} ({e})")
            return cache[k]

        resolved: dict[int, list[Image.Image]] = {}
        replaced = False
        for k in dict.fromkeys(frames):  # distinct, in order
            got = read(k)
            if isinstance(got, list):
                resolved[k] = got
                continue
            kind, what = got
            replacement = _nearest_readable(k, record.num_frames, read)
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
        return [im for k in frames for im in resolved[k]]


def _nearest_readable(k: int, num_frames: int, read) -> int | None:
    # Nearest frame number that decodes; the earlier one wins a tie.
    for d in range(1, max(num_frames, k) + 1):
        for j in (k - d, k + d):
            if 1 <= j <= num_frames and isinstance(read(j), list):
                return j
    return None
