"""TSN-style frame-folder dataset: list file -> sampled frames -> group transforms -> clip tensor.

A list file has one video per line, `<folder> <num_frames> <label>` (space separated), or the
same three fields comma separated (the published Kinetics lists were CSV; paths may then contain
spaces). Frames are `root_path/<folder>/<image_tmpl.format(k)>`, k = 1..num_frames; flow frames
are x/y image pairs (SPEC.md section 8). Which frames make a clip is `ops.sampling` (SPEC.md
section 4); `TSNDataSet` keeps TSM's constructor keywords so TSM scripts port unchanged.

Video files instead of frame folders: with `image_tmpl=VIDEO_TMPL` (what
`ops.dataset_config.resolve_dataset` returns for `--videos` / `--video_root`) the list is a video
list, `<video file> <label>` or `<video file> <label> <num_frames>` (the mmaction2 convention, the
third column optional), `root_path` is the folder holding the files (several separated by
`os.pathsep`), and frames are decoded with `ops.video.VideoReader`. The frame count is the
container's, checked when the file is opened; the sampling is the same `ops.sampling` call, so a
video and the frame folder extracted from it give the same frame numbers and, after the same
transforms, tensors that differ only by the JPEG round-trip.

Real datasets contain broken videos, so nothing here crashes with a bare PIL traceback and
nothing is skipped silently:
- list problems (wrong field count, non-integer count or label, label out of range) are found
  when the list is read and raise `DataError` naming file and line, unless `skip_bad_lines`
  (then they are counted and logged);
- a missing or undecodable frame is replaced by the nearest readable frame of the same video,
  counted, and logged once per video; a video with no frame folder or no readable frame is
  skipped: the item is None and `collate` drops it;
- video files: a missing file or one that does not open is skipped; a file that holds fewer
  frames than its container declares (truncated), or whose list count differs from the
  container's, is counted and logged; frames that do not decode are replaced by the nearest
  frame that does;
- `strict_data=True` turns every one of these into a `DataError`.
Load-time counts live in a shared-memory tensor (one row per DataLoader worker), so the main
process reads the totals with `bad_data_counts()` / `bad_data_report()` whatever the workers.
"""

from __future__ import annotations

import bisect
import csv
import functools
import io
import logging
import os
import string
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.data
from PIL import Image, UnidentifiedImageError

from ops.dataset_config import VIDEO_TMPL
from ops.sampling import clip_frames
from ops.video import DECODER, VideoError, VideoReader

logger = logging.getLogger(__name__)

MIN_TRAIN_FRAMES = 3  # the published loader drops shorter videos from training lists

# Load-time counters; each counts events (a frame or a video load), summed over workers.
COUNTERS = (
    "frames_missing",  # a sampled frame file does not exist
    "frames_unreadable",  # a sampled frame file exists but does not decode
    "clips_with_replaced_frames",  # items in which some frame was replaced by a neighbour
    "videos_missing_dir",  # items skipped: the frame folder does not exist
    "videos_unreadable",  # items skipped: no frame of the video could be read
    "videos_missing_file",  # items skipped: the video file does not exist
    "videos_too_short",  # training items skipped: the video file has < MIN_TRAIN_FRAMES frames
    "videos_fewer_frames",  # video loads: the file holds fewer frames than its container declares
    "frame_count_mismatch",  # video loads: the list's frame count is not the container's
)
SKIP_COUNTERS = (
    "videos_missing_dir",
    "videos_unreadable",
    "videos_missing_file",
    "videos_too_short",
)
_C = {name: i for i, name in enumerate(COUNTERS)}


LIST_PROBLEM_KINDS = (
    "not_utf8",  # the line is not UTF-8 text
    "wrong_fields",  # not exactly 3 fields
    "bad_frame_count",  # frame count not an integer >= 1
    "bad_label",  # label not an integer
    "label_range",  # label outside [0, num_class)
    "bad_video_id",  # id-named flow folders: the folder is not a number
)
VIDEO_LIST_FORMAT = "<video file> <label> [<num_frames>]"


class DataError(ValueError):
    """A data problem; the message is one line saying what is wrong, where, and what to do."""


def data_error_message(exc: BaseException) -> str:
    """The one-line message of a DataError, also after a DataLoader worker re-raised it in the
    main process (the worker wraps the message in the worker's traceback)."""
    text = str(exc).strip()
    marker = f"{DataError.__module__}.{DataError.__qualname__}: "
    if marker in text:
        return text.rsplit(marker, 1)[1].splitlines()[0]
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class VideoRecord:
    """One list line: frame folder or video file (relative to root_path), frame count (0 when a
    video list does not give it), label, line number."""

    path: str
    num_frames: int
    label: int
    line: int = 0


@dataclass(frozen=True)
class ListProblem:
    """A malformed list line; `kind` is a short tag (see `LIST_PROBLEM_KINDS`)."""

    list_file: str
    line: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.list_file}:{self.line}: {self.message}"


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


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _line_problem(
    fields: list[str], num_class: int | None, needs_id: bool, is_csv: bool, image_tmpl: str | None
) -> tuple[str, str] | None:
    """(kind, message) of what is wrong with the fields of one list line, or None."""
    if len(fields) != 3:
        sep = "comma" if is_csv else "space"
        got = " | ".join(fields)
        return (
            "wrong_fields",
            f"expected 3 {sep}-separated fields (folder num_frames label), "
            f"got {len(fields)}: {got}",
        )
    path, frames_txt, label_txt = fields
    num_frames, label = _parse_int(frames_txt), _parse_int(label_txt)
    if num_frames is None:
        return "bad_frame_count", f"frame count {frames_txt!r} is not an integer"
    if num_frames < 1:
        return "bad_frame_count", f"frame count {num_frames} is not >= 1"
    if label is None:
        return "bad_label", f"label {label_txt!r} is not an integer"
    if label < 0 or (num_class is not None and label >= num_class):
        upper = num_class if num_class is not None else "num_class"
        return "label_range", f"label {label} is outside [0, {upper})"
    if needs_id and _parse_int(path) is None:
        return "bad_video_id", f"folder {path!r} must be a numeric video id for {image_tmpl!r}"
    return None


def parse_list_file(
    list_file: str,
    num_class: int | None = None,
    image_tmpl: str | None = None,
    modality: str = "RGB",
) -> tuple[list[VideoRecord], list[ListProblem]]:
    """Read a list file into records and the problems of its malformed lines.

    A file whose first entry contains a comma is read as CSV (three fields, the path may contain
    spaces); otherwise fields are whitespace separated. Blank lines are ignored. A line is bad
    when it does not have exactly 3 fields, the frame count is not an integer >= 1, the label is
    not an integer in [0, num_class), or (id-named flow folders) the folder is not a number.
    With `image_tmpl=VIDEO_TMPL` the file is a video list (`parse_video_list_file`).
    """
    if image_tmpl == VIDEO_TMPL:
        return parse_video_list_file(list_file, num_class)
    lines, problems, is_csv = _list_lines(list_file)
    needs_id = modality == "Flow" and image_tmpl is not None and flow_layout(image_tmpl) == "id_xy"

    records = []
    for n, fields in lines:
        problem = _line_problem(fields, num_class, needs_id, is_csv, image_tmpl)
        if problem is not None:
            problems.append(ListProblem(list_file, n, *problem))
            continue
        path, num_frames, label = fields[0], int(fields[1]), int(fields[2])
        records.append(VideoRecord(path=path, num_frames=num_frames, label=label, line=n))
    problems.sort(key=lambda p: p.line)
    return records, problems


def _list_lines(list_file: str) -> tuple[list[tuple[int, list[str]]], list[ListProblem], bool]:
    """(line number, fields) of the non-blank lines, the non-UTF-8 lines, and whether it is CSV."""
    if not os.path.isfile(list_file):
        raise FileNotFoundError(
            f"list file not found: {list_file} (check --data_root, or pass --train_list / "
            "--val_list / --test_list)"
        )
    with open(list_file, "rb") as f:
        raw_lines = f.read().splitlines()
    texts = []
    problems = []
    for n, raw in enumerate(raw_lines, start=1):
        try:
            texts.append((n, raw.decode("utf-8").strip()))
        except UnicodeDecodeError:
            problems.append(ListProblem(list_file, n, "not_utf8", "line is not valid UTF-8 text"))
    texts = [(n, t) for n, t in texts if t]
    is_csv = bool(texts) and "," in texts[0][1]
    lines = [
        (n, [x.strip() for x in (next(csv.reader([t])) if is_csv else t.split())]) for n, t in texts
    ]
    return lines, problems, is_csv


def _video_line_problem(fields: list[str], num_class: int | None) -> tuple[str, str] | None:
    """(kind, message) of what is wrong with the fields of one video-list line, or None."""
    if len(fields) not in (2, 3):
        return (
            "wrong_fields",
            f"expected 2 or 3 fields ({VIDEO_LIST_FORMAT}), got {len(fields)}: "
            + " | ".join(fields),
        )
    label = _parse_int(fields[1])
    if label is None:
        return "bad_label", f"label {fields[1]!r} is not an integer ({VIDEO_LIST_FORMAT})"
    if label < 0 or (num_class is not None and label >= num_class):
        upper = num_class if num_class is not None else "num_class"
        return "label_range", f"label {label} is outside [0, {upper}) ({VIDEO_LIST_FORMAT})"
    if len(fields) == 3:
        num_frames = _parse_int(fields[2])
        if num_frames is None or num_frames < 1:
            return "bad_frame_count", f"frame count {fields[2]!r} is not an integer >= 1"
    return None


def parse_video_list_file(
    list_file: str, num_class: int | None = None
) -> tuple[list[VideoRecord], list[ListProblem]]:
    """Read a video list (`<video file> <label> [<num_frames>]`, space or comma separated).

    Records have `num_frames` 0 when the line gives no count (the container's count is used).
    """
    lines, problems, _ = _list_lines(list_file)
    records = []
    for n, fields in lines:
        problem = _video_line_problem(fields, num_class)
        if problem is not None:
            problems.append(ListProblem(list_file, n, *problem))
            continue
        num_frames = int(fields[2]) if len(fields) == 3 else 0
        records.append(VideoRecord(fields[0], num_frames, int(fields[1]), n))
    problems.sort(key=lambda p: p.line)
    return records, problems


def video_roots(root_path: str) -> list[str]:
    """The folders of a video root (several separated by os.pathsep)."""
    return [r for r in root_path.split(os.pathsep) if r]


def find_video_file(roots: list[str], video: str) -> str | None:
    """`root/video` for the first root that holds it, or None."""
    for root in roots:
        path = os.path.join(root, video)
        if os.path.isfile(path):
            return path
    return None


def nearest_in(sorted_numbers: list[int], k: int) -> int | None:
    """The number of `sorted_numbers` nearest to k (the smaller one on a tie), None if empty."""
    i = bisect.bisect_left(sorted_numbers, k)
    candidates = sorted_numbers[max(i - 1, 0) : i + 1]
    return min(candidates, key=lambda j: (abs(j - k), j)) if candidates else None


class TSNDataSet(torch.utils.data.Dataset):
    """Clips of frame-folder videos, sampled as TSN/TSM (SPEC.md sections 4 and 8).

    Item: `(transform(images), label)`, or `(..., index)` with `return_index=True`, or None for a
    video that had to be skipped (use `collate` as the DataLoader's collate_fn). `images` are
    the decoded frames of all clips in order (flow: x, y per frame); with TSM's transforms the
    tensor is `[views*T*C, H, W]`, views = crops x clips in crop-major order (all frames of crop
    0 for every clip, then crop 1, ...), so `data.view(-1, T, C, H, W)` has one view per row.

    Mode: `test_mode` -> test sampling (1 clip, 2 with `twice_sample`, 10 with `dense_sample`);
    else `random_shift` -> training sampling, otherwise validation sampling.
    Extra keywords beyond TSM's: `num_class` (labels are checked against it), `skip_bad_lines`,
    `strict_data`, `return_index`, `max_workers` (DataLoader workers the counters can hold).
    `image_tmpl=VIDEO_TMPL` reads a video list and decodes video files under `root_path`.
    """

    def __init__(
        self,
        root_path: str,
        list_file: str,
        num_segments: int = 3,
        new_length: int = 1,
        modality: str = "RGB",
        image_tmpl: str = "img_{:05d}.jpg",
        transform=None,
        random_shift: bool = True,
        test_mode: bool = False,
        remove_missing: bool = False,
        dense_sample: bool = False,
        twice_sample: bool = False,
        num_class: int | None = None,
        skip_bad_lines: bool = False,
        strict_data: bool = False,
        return_index: bool = False,
        max_workers: int = 128,
    ) -> None:
        if modality not in ("RGB", "Flow", "RGBDiff"):
            raise ValueError(f"modality must be RGB, Flow or RGBDiff, got {modality!r}")
        self.root_path = root_path
        self.list_file = list_file
        self.num_segments = num_segments
        self.new_length = new_length + 1 if modality == "RGBDiff" else new_length
        self.modality = modality
        self.image_tmpl = image_tmpl
        self.transform = transform
        self.random_shift = random_shift
        self.test_mode = test_mode
        self.remove_missing = remove_missing
        self.dense_sample = dense_sample
        self.twice_sample = twice_sample
        self.num_class = num_class
        self.skip_bad_lines = skip_bad_lines
        self.strict_data = strict_data
        self.return_index = return_index
        self.is_video = image_tmpl == VIDEO_TMPL
        if self.is_video:
            self.video_roots = self._check_video_roots(root_path, modality)
        else:
            check_template(image_tmpl, modality)

        records, problems = parse_list_file(list_file, num_class, image_tmpl, modality)
        self.bad_lines = problems
        if problems:
            if strict_data or not skip_bad_lines:
                more = f" ({len(problems)} bad lines in total)" if len(problems) > 1 else ""
                hint = "" if strict_data else " or pass --skip_bad_lines to skip them"
                raise DataError(f"{problems[0]}{more}; fix the list{hint}")
            for p in problems[:20]:
                logger.warning("skipping bad list line %s", p)
            if len(problems) > 20:
                logger.warning("... and %d more bad lines in %s", len(problems) - 20, list_file)

        # The published loader keeps only videos of >= 3 frames for training (and with
        # remove_missing); we do the same, but count and report it.
        self.short_videos = []
        # Video lists without a count: checked when the file is opened (`videos_too_short`).
        if not test_mode or remove_missing:
            self.short_videos = [r for r in records if 0 < r.num_frames < MIN_TRAIN_FRAMES]
            records = [r for r in records if not 0 < r.num_frames < MIN_TRAIN_FRAMES]
            if self.short_videos:
                logger.info(
                    "%s: dropped %d videos with fewer than %d frames (as the published loader)",
                    list_file,
                    len(self.short_videos),
                    MIN_TRAIN_FRAMES,
                )
        records = [
            VideoRecord(r.path, frames_on_disk(r.num_frames, image_tmpl, modality), r.label, r.line)
            for r in records
        ]
        if not records:
            raise DataError(f"list file {list_file} has no usable video; check its content")
        self.video_list = records
        if self.is_video:
            logger.info(
                "%s: %d video files under %s, decoded with %s",
                list_file,
                len(records),
                root_path,
                DECODER,
            )
        else:
            logger.info("%s: %d videos", list_file, len(records))

        # Load-time counters: row 0 = main process, row i + 1 = DataLoader worker i.
        self._counts = torch.zeros(max_workers + 1, len(COUNTERS), dtype=torch.int64)
        self._counts.share_memory_()
        self._logged_videos: set[str] = set()

    @property
    def mode(self) -> str:
        if self.test_mode:
            return "test"
        return "train" if self.random_shift else "val"

    def __len__(self) -> int:
        return len(self.video_list)

    @staticmethod
    def _check_video_roots(root_path: str, modality: str) -> list[str]:
        if modality == "Flow":
            raise DataError(
                "video files hold RGB frames: --modality Flow needs extracted flow frames"
            )
        roots = video_roots(root_path)
        if not any(os.path.isdir(r) for r in roots):
            raise DataError(
                f"video folder {root_path} does not exist: pass --video_root DIR (or --data_root)"
            )
        return roots

    def sample_frames(
        self,
        record: VideoRecord,
        rng: np.random.RandomState | None = None,
        num_frames: int | None = None,
    ) -> list[int]:
        """The 1-based frame numbers this item reads (all clips, snippets expanded), for the
        record's frame count or `num_frames` (a video file's count)."""
        return clip_frames(
            num_frames if num_frames is not None else record.num_frames,
            self.num_segments,
            new_length=self.new_length,
            mode=self.mode,
            dense_sample=self.dense_sample,
            twice_sample=self.twice_sample,
            rng=rng,
        )

    def __getitem__(self, index: int):
        record = self.video_list[index]
        if self.is_video:
            images = self.load_video(record)
        else:
            images = self.load_images(record, self.sample_frames(record))
        if images is None:
            return None
        data = self.transform(images) if self.transform is not None else images
        if self.return_index:
            return data, record.label, index
        return data, record.label

    # ------------------------------------------------------------------ loading with fallback
    def load_images(self, record: VideoRecord, frames: list[int]) -> list[Image.Image] | None:
        """Decode `frames` of `record` (each distinct frame once), replacing unreadable frames by
        the nearest readable one; None when the video has to be skipped."""
        folder = video_dir(self.root_path, record.path, self.image_tmpl, self.modality)
        if not os.path.isdir(folder):
            self._problem(record, "videos_missing_dir", f"frame folder {folder} does not exist")
            return None

        cache: dict[int, list[Image.Image] | tuple[str, str]] = {}

        def read(k: int):
            if k not in cache:
                paths = frame_files(self.root_path, record.path, self.image_tmpl, self.modality, k)
                try:
                    cache[k] = read_frame(paths, self.modality)
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
            replacement = self._nearest_readable(k, record.num_frames, read)
            if replacement is None:
                self._problem(
                    record, "videos_unreadable", f"no readable frame (first problem: {what})"
                )
                return None
            self._problem(record, kind, f"{what}; using frame {replacement} instead")
            resolved[k] = cache[replacement]
            replaced = True
        if replaced:
            self._count("clips_with_replaced_frames")
        return [im for k in frames for im in resolved[k]]

    def video_file(self, record: VideoRecord) -> str | None:
        """Path of the record's video file: the first video root that holds it, or None."""
        return find_video_file(self.video_roots, record.path)

    def load_video(self, record: VideoRecord) -> list[Image.Image] | None:
        """Open the record's video file, sample with its frame count, decode the sampled frames
        (each distinct frame once), replacing frames that do not decode by the nearest frame
        that does; None when the video has to be skipped."""
        path = self.video_file(record)
        if path is None:
            where = os.pathsep.join(self.video_roots)
            self._problem(record, "videos_missing_file", f"video file not found under {where}")
            return None
        try:
            reader = VideoReader(path)
        except VideoError as e:
            self._problem(record, "videos_unreadable", str(e))
            return None
        with reader:
            n = reader.num_frames
            if reader.problem is not None:
                self._problem(record, "videos_fewer_frames", f"{path}: {reader.problem}")
            if record.num_frames and record.num_frames != n:
                self._problem(
                    record,
                    "frame_count_mismatch",
                    f"the list says {record.num_frames} frames, {path} has {n}; using {n}",
                )
            if n < MIN_TRAIN_FRAMES and (not self.test_mode or self.remove_missing):
                self._problem(
                    record,
                    "videos_too_short",
                    f"{path} has {n} frames, fewer than {MIN_TRAIN_FRAMES} (skipped for training "
                    "as by the published loader)",
                )
                return None
            frames = self.sample_frames(record, num_frames=n)
            try:
                images = reader.read(frames)
                missing = [k for k in dict.fromkeys(frames) if k not in images]
                if missing:
                    images = self._replace_undecodable(record, path, reader, images, missing)
            except VideoError as e:
                self._problem(record, "videos_unreadable", str(e))
                return None
        return None if images is None else [images[k] for k in frames]

    def _replace_undecodable(self, record, path, reader, images, missing):
        # Rare path (damaged files): one pass over the whole file tells which frames decode.
        got, decodable = reader.scan(missing)
        images.update(got)
        if not decodable:
            self._problem(record, "videos_unreadable", f"no frame of {path} decodes")
            return None
        still = [k for k in missing if k not in images]
        replacement = {k: nearest_in(decodable, k) for k in still}
        need = set(replacement.values()) - set(images)
        if need:
            images.update(reader.read(need))
            need -= set(images)
        if need:
            images.update(reader.scan(need)[0])
        if any(replacement[k] not in images for k in still):  # decoded in one pass, not another
            self._problem(record, "videos_unreadable", f"{path} does not decode the same twice")
            return None
        for k in still:
            self._problem(
                record,
                "frames_unreadable",
                f"frame {k} of {path} does not decode; using frame {replacement[k]} instead",
            )
            images[k] = images[replacement[k]]
        if still:
            self._count("clips_with_replaced_frames")
        return images

    @staticmethod
    def _nearest_readable(k: int, num_frames: int, read) -> int | None:
        # Nearest frame number that decodes; the earlier one wins a tie.
        for d in range(1, max(num_frames, k) + 1):
            for j in (k - d, k + d):
                if 1 <= j <= num_frames and isinstance(read(j), list):
                    return j
        return None

    def _row(self) -> int:
        info = torch.utils.data.get_worker_info()
        row = 0 if info is None else info.id + 1
        if row >= self._counts.size(0):
            raise DataError(
                f"DataLoader worker {row - 1} exceeds max_workers={self._counts.size(0) - 1}; "
                "build TSNDataSet with a larger max_workers"
            )
        return row

    def _count(self, name: str) -> None:
        self._counts[self._row(), _C[name]] += 1

    def _problem(self, record: VideoRecord, kind: str, what: str) -> None:
        where = f"video {record.path!r} ({self.list_file}:{record.line})"
        if self.strict_data:
            raise DataError(
                f"{where}: {what}; fix the data (tools/check_data.py lists every problem) "
                "or run without --strict_data"
            )
        self._count(kind)
        if record.path not in self._logged_videos:
            self._logged_videos.add(record.path)
            logger.warning("%s: %s (further problems of this video are only counted)", where, what)

    # ------------------------------------------------------------------ reporting
    def bad_data_counts(self) -> dict[str, int]:
        """Totals over the main process and all DataLoader workers, plus list-level counts."""
        totals = self._counts.sum(dim=0).tolist()
        counts = {name: int(v) for name, v in zip(COUNTERS, totals)}
        counts["videos_skipped"] = sum(counts[k] for k in SKIP_COUNTERS)
        counts["bad_list_lines"] = len(self.bad_lines)
        counts["short_videos_dropped"] = len(self.short_videos)
        return counts

    def reset_bad_data_counts(self) -> None:
        """Zero the load-time counters (e.g. at the start of an epoch)."""
        self._counts.zero_()

    def bad_data_report(self) -> str:
        """Multi-line summary for the end of a run; says so when there was no problem."""
        c = self.bad_data_counts()
        lines = [f"data problems for {self.list_file} ({len(self)} videos):"]
        items = [
            ("bad_list_lines", "list lines skipped (malformed)"),
            ("short_videos_dropped", f"videos dropped for < {MIN_TRAIN_FRAMES} frames (published)"),
            ("frames_missing", "missing frames replaced by the nearest readable frame"),
            ("frames_unreadable", "undecodable frames replaced by the nearest readable frame"),
            ("clips_with_replaced_frames", "clip loads with a replaced frame"),
            ("videos_missing_dir", "video loads skipped: frame folder missing"),
            ("videos_unreadable", "video loads skipped: no readable frame"),
            ("videos_missing_file", "video loads skipped: video file missing"),
            ("videos_too_short", f"training loads skipped: < {MIN_TRAIN_FRAMES} frames in file"),
            ("videos_fewer_frames", "video loads: fewer frames in the file than declared"),
            ("frame_count_mismatch", "video loads: list frame count differs from the file's"),
        ]
        for key, text in items:
            if c[key]:
                lines.append(f"  {text}: {c[key]}")
        if len(lines) == 1:
            return f"data problems for {self.list_file}: none"
        lines.append("  (run tools/check_data.py for the list of affected files)")
        return "\n".join(lines)


def collate(batch: list):
    """DataLoader collate_fn that drops skipped videos (None items); None if all were skipped."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    return torch.utils.data.default_collate(kept)
