"""Decode videos into the JPEG frame folders that the TSN/TSM data pipeline reads, packed frame
files, or short-GOP videos.

    python tools/extract_frames.py VIDEOS_DIR OUT_DIR -j 8                  # <OUT>/<id>/img_00001.jpg
    python tools/extract_frames.py VIDEOS_DIR OUT_DIR --dataset somethingv2 # that dataset's names
    python tools/extract_frames.py VIDEOS_DIR OUT_DIR --pack -j 8           # <OUT>/<id>.zip
    python tools/extract_frames.py VIDEOS_DIR OUT_DIR --reencode 16 -j 8    # <OUT>/<id>.mp4

Every video under ``VIDEOS_DIR`` (mp4, webm, avi, mkv, ...; searched recursively) becomes the folder
``OUT_DIR/<video id>``, where the id is the video's path relative to ``VIDEOS_DIR`` without its
extension, so Kinetics' and UCF101's class folders are kept (``--flat`` drops them). Frames are
numbered from 1 in decoding order with the frame-name template of the chosen dataset (registry in
ops/dataset_config.py) or ``--image_tmpl``; the shorter side is resized to ``--short_side``
(default 256, aspect ratio kept, PIL bilinear as in the data pipeline), optionally at ``--fps``.

Outputs (one per video, ``docs/data_formats.md`` says which to use at which scale):
- frame folders (default): ``OUT_DIR/<id>/img_00001.jpg ...``;
- ``--pack``: packed frames ``OUT_DIR/<id>.zip``, the same JPEG files byte for byte in one stored
  zip per video (``ops/packed_frames.py``; what ``tools/pack_frames.py`` makes of the folders),
  read by the data loader wherever the folder would be;
- ``--reencode GOP``: an H.264 mp4 ``OUT_DIR/<id>.mp4`` (libx264, yuv420p, ``--crf``,
  ``--x264_preset``) with a key frame every GOP frames and no other (scene cuts add none; 1: every
  frame a key frame), for ``--videos`` / ``--video_root``: the video reader seeks to the key frame
  before each sampled frame, so a clip decodes about GOP/2 frames per sampled frame instead of
  about half of x264's default 250. Width and height are rounded down to even numbers (4:2:0).

Decoding uses PyAV, which ships its own FFmpeg libraries, so no system ffmpeg is needed.

Settings are recorded: the first run writes ``OUT_DIR/extract_frames.json`` (atomically) with what
decides the outputs' content (output kind, template, short side, fps, JPEG quality or GOP, CRF and
preset). A later run into the same folder with other settings is refused before any work, with one
line naming the settings that differ and the choices: rerun with the recorded ones to resume,
``--overwrite`` to extract every video again with the new ones, or another output folder. An
``--overwrite`` run that changes the settings is marked in the record until it has been through
every video (a video that now fails loses its old output), so a killed one cannot be resumed into
a mixed dataset without ``--overwrite``. Outputs without a record (made by an older version) are
refused the same way.

Resumable and crash-safe: a video is decoded into a hidden temporary folder (or file) next to its
final one (``.<name>.partial-<host>-<pid>-*``), which is renamed into place only once every frame
is written (packed files and videos are also re-read and verified first). So a final output
always holds a complete video and is skipped by the next run (``--overwrite`` redoes it); a
temporary output left by a killed run is deleted when its video is redone.

Before any work, a frame folder that would be a video or hold one (``OUT`` inside ``VIDEOS_DIR``
with a video ``cls.mp4`` beside the class folder ``cls/``: --overwrite would delete that folder)
and a ``--failed_list`` that is a video are refused (``ops/output_paths.py``).

Unreadable videos (missing, truncated, not a video, decoding error, no frame, or fewer frames than
the container declares) are not fatal: they are counted and listed at the end (and written to
``--failed_list``), no output is left for them, and the exit status is 1. Bad arguments, and an
output folder that is a file or cannot be written, exit with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
from PIL import Image

from ops.atomic import write_atomically
from ops.dataset_config import DATASETS, REGISTRY
from ops.output_paths import check_outputs
from ops.packed_frames import EXT as PACKED_EXT
from ops.packed_frames import partial_name, write_packed
from ops.utils import (
    ensure_writable_dir,
    ensure_writable_file,
    map_with_progress,
    setup_logging,
)
from ops.video import VideoReader, frame_image
from tools._common import (
    TOOL_ERRORS,
    VIDEO_EXTENSIONS,
    fail,
    frame_pattern,
    partial_prefix,
    remove_stale_partials,
)

logger = logging.getLogger(__name__)

DEFAULT_TMPL = "img_{:05d}.jpg"
DEFAULT_QUALITY = 90
DEFAULT_CRF = 18
DEFAULT_PRESET = "medium"
RECORD = "extract_frames.json"  # the settings of the outputs in an output folder
OUTPUTS = {"folders": "", "packed": PACKED_EXT, "video": ".mp4"}  # output kind -> name suffix


@dataclass(frozen=True)
class Settings:
    """How every video is extracted (picklable, sent to the worker processes)."""

    out_dir: str
    image_tmpl: str = DEFAULT_TMPL
    short_side: int = 256
    fps: float | None = None
    quality: int = DEFAULT_QUALITY
    overwrite: bool = False
    output: str = "folders"  # a key of OUTPUTS
    gop: int | None = None  # video: frames per key frame (1: all intra)
    crf: int = DEFAULT_CRF
    preset: str = DEFAULT_PRESET
    replacing: bool = False  # an --overwrite run that changes the settings: drop stale outputs

    def record(self) -> dict:
        """What decides the content of the outputs (what a rerun must match)."""
        keep = {
            "folders": ("image_tmpl", "short_side", "fps", "quality"),
            "packed": ("image_tmpl", "short_side", "fps", "quality"),
            "video": ("short_side", "fps", "gop", "crf", "preset"),
        }[self.output]
        values = asdict(self)
        return {"output": self.output, **{k: values[k] for k in keep}}


@dataclass(frozen=True)
class Result:
    """Outcome of one video: status 'done' (extracted now), 'skipped' (already there) or 'failed'."""

    video: str
    video_id: str
    status: str
    frames: int = 0
    message: str = ""


# ---------------------------------------------------------------------------------------------
# finding videos
# ---------------------------------------------------------------------------------------------
def find_videos(
    src: str,
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
    flat: bool = False,
    skip: str | None = None,
) -> list[tuple[str, str]]:
    """``(path, video id)`` of every video file under ``src`` (or of ``src`` itself), sorted.

    The id is the path relative to ``src`` without extension (``abseiling/x_000010_000020``), or
    just the file stem with ``flat``. Two videos with the same id (``a.mp4`` and ``a.webm``) are
    an error, since they would write the same folder. The folder ``skip`` (the output folder,
    when it lies inside ``src``) is not searched.
    """
    extensions = tuple(e.lower() for e in extensions)
    if os.path.isfile(src):
        return [(src, Path(src).stem)]
    if not os.path.isdir(src):
        raise FileNotFoundError(f"video source {src} does not exist: give a video file or a folder")
    found = []
    skipped = os.path.realpath(skip) if skip else None
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and os.path.realpath(os.path.join(folder, d)) != skipped
        )
        for name in sorted(files):
            if name.lower().endswith(extensions) and not name.startswith("."):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, src)
                video_id = Path(name).stem if flat else str(Path(rel).with_suffix(""))
                found.append((path, video_id))
    ids: dict[str, str] = {}
    for path, video_id in found:
        if video_id in ids:
            raise ValueError(
                f"{ids[video_id]} and {path} would both be extracted to {video_id!r}: "
                "remove one" + ("" if not flat else " or drop --flat")
            )
        ids[video_id] = path
    return found


# ---------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------
def iter_frames(path: str, fps: float | None = None) -> Iterator[Image.Image]:
    """RGB frames of the first video stream of ``path``, in decoding order.

    With ``fps``, the first frame of every ``1/fps`` interval (from the first frame's time) is
    kept: frames are dropped to lower the rate, never duplicated to raise it. Raises PyAV's
    errors (``av.FFmpegError``) for files that do not decode, ValueError without a video stream.
    """
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        first_time = None
        last_slot = -1
        for index, frame in enumerate(container.decode(stream)):
            if fps:
                t = frame.time if frame.time is not None else index / float(stream.average_rate)
                first_time = t if first_time is None else first_time
                slot = math.floor((t - first_time) * fps + 1e-6)
                if slot <= last_slot:
                    continue
                last_slot = slot
            yield frame_image(frame)


def declared_frames(path: str) -> int:
    """Frame count stored in the container's header (0 when it does not say)."""
    with av.open(path) as container:
        return int(container.streams.video[0].frames) if container.streams.video else 0


def short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the shorter side ``short_side``; the longer side rounds down, as torchvision's
    Resize and ``ops.transforms.scaled_size`` (not imported here: it would pull in torch)."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def resize_short_side(image: Image.Image, short_side: int) -> Image.Image:
    """Resize so that the shorter side is ``short_side`` (0: unchanged), PIL bilinear."""
    if not short_side or min(image.size) == short_side:
        return image
    return image.resize(short_side_size(image.width, image.height, short_side), Image.BILINEAR)


# ---------------------------------------------------------------------------------------------
# one video
# ---------------------------------------------------------------------------------------------
def output_path(settings: Settings, video_id: str) -> str:
    """The output of a video: ``<out>/<id>``, ``<out>/<id>.zip`` or ``<out>/<id>.mp4``."""
    return os.path.join(settings.out_dir, video_id) + OUTPUTS[settings.output]


def _remove_outputs(settings: Settings, video: str, video_id: str, keep: str | None = None) -> None:
    """Delete the outputs of ``video_id`` of every kind but ``keep``, never the input ``video``
    itself (an output folder may hold the videos: ``<id>.mp4`` can be the input)."""
    base = os.path.join(settings.out_dir, video_id)
    source = os.path.realpath(video)
    for path in (base + suffix for suffix in OUTPUTS.values()):
        if path == keep or not os.path.lexists(path) or os.path.realpath(path) == source:
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


def _frames(video: str, settings: Settings):
    """The video's frames at their output size (``frame_size``), then a check of the count:
    ValueError when none decodes or fewer than the container declares (without --fps)."""
    count = 0
    for image in iter_frames(video, fps=settings.fps):
        count += 1
        size = frame_size(image.width, image.height, settings)
        yield image if image.size == size else image.resize(size, Image.BILINEAR)
    if count == 0:
        raise ValueError("no frame could be decoded")
    declared = declared_frames(video)
    if not settings.fps and declared > count:
        raise ValueError(f"decoded only {count} of the {declared} frames the file declares")


def frame_size(width: int, height: int, settings: Settings) -> tuple[int, int]:
    """Output size of a frame: the short side resized to ``settings.short_side`` (0: kept); for a
    re-encoded video rounded down to even numbers (4:2:0 chroma needs them)."""
    w, h = width, height
    if settings.short_side:
        w, h = short_side_size(width, height, settings.short_side)
    if settings.output == "video":
        return max(w // 2 * 2, 2), max(h // 2 * 2, 2)
    return w, h


def _write_folder(video: str, final: str, settings: Settings) -> int:
    prefix = partial_name(final)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(prefix), dir=os.path.dirname(final))
    try:
        count = 0
        for image in _frames(video, settings):
            count += 1
            image.save(
                os.path.join(tmp, settings.image_tmpl.format(count)), quality=settings.quality
            )
        if os.path.isdir(final):  # --overwrite: swap the old folder out, then delete it
            parent, name = os.path.split(final)
            old = tempfile.mkdtemp(prefix=f"{partial_prefix(name)}old-", dir=parent)
            os.replace(final, os.path.join(old, name))
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        return count
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def encode_frame(image: Image.Image, image_tmpl: str, quality: int, k: int) -> tuple[str, bytes]:
    """Frame ``k``'s file name and bytes: what ``image.save(<folder>/<name>, quality=...)`` writes
    (the format from the name's extension, as PIL picks it)."""
    name = image_tmpl.format(k)
    fmt = Image.registered_extensions().get(os.path.splitext(name)[1].lower())
    if fmt is None:
        raise ValueError(f"frame name {name!r}: no image format for its extension")
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=quality)
    return name, buf.getvalue()


def _write_packed(video: str, final: str, settings: Settings) -> int:
    members = (
        encode_frame(image, settings.image_tmpl, settings.quality, k)
        for k, image in enumerate(_frames(video, settings), start=1)
    )
    return write_packed(final, members)[0]


def video_rate(path: str, fps: float | None) -> Fraction:
    """Frame rate of a re-encoded video: ``fps``, else the source's average rate (25 if unknown)."""
    if fps:
        return Fraction(fps).limit_denominator(1001)
    with av.open(path) as container:
        stream = container.streams.video[0] if container.streams.video else None
        rate = stream and (stream.average_rate or stream.guessed_rate)
    return Fraction(rate) if rate else Fraction(25)


def _write_video(video: str, final: str, settings: Settings) -> int:
    prefix = partial_name(final)
    fd, tmp = tempfile.mkstemp(
        prefix=os.path.basename(prefix), suffix=".mp4", dir=os.path.dirname(final)
    )
    os.close(fd)
    try:
        rate = video_rate(video, settings.fps)
        count = 0
        with av.open(tmp, "w", format="mp4") as out:
            stream = None
            for image in _frames(video, settings):
                if stream is None:
                    stream = out.add_stream("libx264", rate=rate)
                    stream.width, stream.height = image.size
                    stream.pix_fmt = "yuv420p"
                    stream.codec_context.time_base = 1 / rate
                    stream.options = {
                        "g": str(settings.gop),
                        "keyint_min": str(settings.gop),
                        "sc_threshold": "0",  # no key frames at scene cuts: exactly every GOP
                        "crf": str(settings.crf),
                        "preset": settings.preset,
                    }
                frame = av.VideoFrame.from_image(image)
                frame.pts = count
                frame.time_base = stream.codec_context.time_base
                count += 1
                for packet in stream.encode(frame):
                    out.mux(packet)
            if stream is not None:
                for packet in stream.encode():
                    out.mux(packet)
        with VideoReader(tmp) as reader:  # verify: the frames written are the frames read
            if reader.num_frames != count or reader.problem:
                raise ValueError(
                    f"the re-encoded file reads as {reader.num_frames} frames, not {count}"
                )
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, final)
        return count
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


WRITERS = {"folders": _write_folder, "packed": _write_packed, "video": _write_video}


def extract_video(video: str, video_id: str, settings: Settings) -> Result:
    """Extract one video into ``output_path(settings, video_id)``; never raises for a bad video."""
    final = output_path(settings, video_id)
    if os.path.lexists(final) and not settings.overwrite:
        return Result(video, video_id, "skipped")
    parent, name = os.path.split(final)
    try:
        os.makedirs(parent, exist_ok=True)
        remove_stale_partials(parent, name)
        count = WRITERS[settings.output](video, final, settings)
        if settings.replacing:  # its outputs of another kind were made with the old settings
            _remove_outputs(settings, video, video_id, keep=final)
        return Result(video, video_id, "done", frames=count)
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        if isinstance(exc, OSError) and os.path.isdir(final) and not settings.overwrite:
            return Result(video, video_id, "skipped")  # another run finished it meanwhile
        if settings.replacing:  # what is left of this video was made with the old settings
            _remove_outputs(settings, video, video_id)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Result(video, video_id, "failed", message=f"{type(exc).__name__}: {message}")


def _extract_job(job: tuple[str, str], settings: Settings) -> Result:
    return extract_video(job[0], job[1], settings)


# ---------------------------------------------------------------------------------------------
# many videos
# ---------------------------------------------------------------------------------------------
def extract_all(
    videos: list[tuple[str, str]], settings: Settings, workers: int = 1
) -> list[Result]:
    """Extract ``(path, video id)`` pairs with ``workers`` processes; results in input order."""
    os.makedirs(settings.out_dir, exist_ok=True)
    job = partial(_extract_job, settings=settings)
    return map_with_progress(job, videos, workers, desc="extract", unit="video")


def summarize(results: list[Result]) -> str:
    """Final report: counts, then one line per failed video."""
    done = [r for r in results if r.status == "done"]
    skipped = [r for r in results if r.status == "skipped"]
    failed = [r for r in results if r.status == "failed"]
    lines = [
        f"{len(results)} videos: {len(done)} extracted ({sum(r.frames for r in done)} frames), "
        f"{len(skipped)} already done, {len(failed)} unreadable"
    ]
    lines += [f"  unreadable: {r.video}: {r.message}" for r in failed]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the settings record of an output folder
# ---------------------------------------------------------------------------------------------
FLAGS = {
    "output": "output kind",
    "image_tmpl": "--image_tmpl",
    "short_side": "--short_side",
    "fps": "--fps",
    "quality": "--quality",
    "gop": "--reencode",
    "crf": "--crf",
    "preset": "--x264_preset",
}
OUTPUT_NAMES = {"folders": "frame folders", "packed": "--pack", "video": "--reencode"}


def _shown(key: str, value) -> str:
    if key == "output":
        return OUTPUT_NAMES.get(value, str(value))
    return f"{FLAGS.get(key, key)} {'none' if value is None else value}"


def read_record(out_dir: str) -> dict | None:
    """The settings record of an output folder, None when there is none (ValueError when it is
    not one this tool wrote)."""
    path = os.path.join(out_dir, RECORD)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        record["settings"]["output"]  # noqa: B018 - the shape this tool writes
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path} is not a settings record of tools/extract_frames.py ({exc}): move it away "
            "or give another output folder"
        ) from None
    return record


def write_record(out_dir: str, settings: Settings, replacing: dict | None = None) -> None:
    """Write the record atomically (``replacing``: the settings an --overwrite run replaces)."""
    record = {"tool": "tools/extract_frames.py", "version": 1, "settings": settings.record()}
    if replacing is not None:
        record["replacing"] = replacing

    write_atomically(os.path.join(out_dir, RECORD), json.dumps(record, indent=1) + "\n")


def claim_output(settings: Settings, videos: list[tuple[str, str]]) -> Settings:
    """Check the output folder's record against ``settings`` and write it: the settings to run
    with (``replacing`` set when --overwrite changes them); ValueError (one line) when the
    folder holds outputs made with other settings, or outputs without a record."""
    out = settings.out_dir
    record = read_record(out)
    wanted = settings.record()
    if record is None:
        done = [
            i
            for path, i in videos
            if any(
                os.path.lexists(out_path) and os.path.realpath(out_path) != os.path.realpath(path)
                for out_path in (os.path.join(out, i) + suffix for suffix in OUTPUTS.values())
            )
        ]
        if done and not settings.overwrite:
            raise ValueError(
                f"{out} already holds outputs of {len(done)} of these videos (e.g. {done[0]!r}) "
                f"but no record of the settings they were made with ({RECORD}): pass "
                "--overwrite to extract them again with these settings, or give another output "
                "folder"
            )
        replacing = {"output": "unknown: outputs without a record"} if done else None
        write_record(out, settings, replacing)
        return Settings(**{**asdict(settings), "replacing": replacing is not None})
    old = record["settings"]
    replacing = record.get("replacing")
    if old != wanted:
        if not settings.overwrite:
            keys = [k for k in dict.fromkeys([*old, *wanted]) if old.get(k) != wanted.get(k)]
            was = ", ".join(_shown(k, old.get(k)) for k in keys)
            now = ", ".join(_shown(k, wanted.get(k)) for k in keys)
            raise ValueError(
                f"{out} was extracted with {was}, not {now}: rerun with the recorded settings "
                "to resume it, pass --overwrite to extract every video again with the new "
                "ones, or give another output folder"
            )
        replacing = replacing or old
    elif replacing is not None and not settings.overwrite:
        raise ValueError(
            f"{out}: an --overwrite run that changed its settings did not finish, so it holds "
            "outputs of the old and the new settings: rerun it with --overwrite"
        )
    write_record(out, settings, replacing)
    return Settings(**{**asdict(settings), "replacing": replacing is not None})


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Decode videos (PyAV) into frame folders <out>/<video id>/img_00001.jpg ..., "
        "packed frames <out>/<video id>.zip (--pack) or short-GOP H.264 videos (--reencode); "
        "resumable, parallel, reports unreadable videos (exit status 1 if any).",
    )
    parser.add_argument("src", help="a video file, or a folder searched recursively for videos")
    parser.add_argument("out", help="output folder; each video becomes OUT/<video id>[.zip|.mp4]")
    names = parser.add_mutually_exclusive_group()
    names.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="use that dataset's RGB frame-name template (registry in ops/dataset_config.py)",
    )
    names.add_argument(
        "--image_tmpl", default=None, help=f"frame file name template (default {DEFAULT_TMPL})"
    )
    parser.add_argument(
        "--short_side",
        type=int,
        default=256,
        help="resize the shorter side to this many pixels, keeping the aspect ratio (0: keep)",
    )
    parser.add_argument(
        "--fps", type=float, default=None, help="keep about this many frames per second"
    )
    parser.add_argument(
        "--quality", type=int, default=None, help=f"JPEG quality (1-95, default {DEFAULT_QUALITY})"
    )
    parser.add_argument(
        "--pack",
        action="store_true",
        help="write each video's frames as one packed file OUT/<video id>.zip (the JPEG files "
        "unchanged, stored zip; read wherever the frame folder would be)",
    )
    parser.add_argument(
        "--reencode",
        type=int,
        default=None,
        metavar="GOP",
        help="write each video as an H.264 mp4 OUT/<video id>.mp4 with a key frame every GOP "
        "frames (1: all intra), for training from video files (--videos)",
    )
    parser.add_argument(
        "--crf",
        type=int,
        default=None,
        help=f"with --reencode: x264's constant rate factor, 0-51 (default {DEFAULT_CRF})",
    )
    parser.add_argument(
        "--x264_preset",
        default=None,
        help=f"with --reencode: x264's preset, e.g. veryfast, medium (default {DEFAULT_PRESET})",
    )
    parser.add_argument("-j", "--workers", type=int, default=1, help="videos decoded in parallel")
    parser.add_argument(
        "--ext",
        nargs="+",
        default=list(VIDEO_EXTENSIONS),
        help="video file extensions to look for",
    )
    parser.add_argument(
        "--flat", action="store_true", help="name outputs by file stem only, without subfolders"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="extract again videos whose output exists"
    )
    parser.add_argument(
        "--failed_list", default=None, help="also write the unreadable videos to this file"
    )
    return parser


X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The run's settings; ValueError (one line naming the flags) for values or combinations
    that cannot work."""
    if args.pack and args.reencode is not None:
        raise ValueError(
            "--pack and --reencode cannot be combined: --pack writes JPEG frames, --reencode "
            "H.264 videos; choose one"
        )
    if args.reencode is not None:
        if args.reencode < 1:
            raise ValueError(f"--reencode GOP must be >= 1 (1: all intra), got {args.reencode}")
        for flag, given in (
            ("--quality", args.quality),
            ("--image_tmpl", args.image_tmpl),
            ("--dataset", args.dataset),
        ):
            if given is not None:
                raise ValueError(
                    f"{flag} and --reencode cannot be combined: {flag} is about JPEG frames, "
                    "--reencode writes H.264 videos (use --crf for their quality)"
                )
    else:
        for flag, given in (("--crf", args.crf), ("--x264_preset", args.x264_preset)):
            if given is not None:
                raise ValueError(f"{flag} needs --reencode: it sets the H.264 encoder")
    crf = DEFAULT_CRF if args.crf is None else args.crf
    preset = args.x264_preset or DEFAULT_PRESET
    if not 0 <= crf <= 51:
        raise ValueError(f"--crf must be in 0..51, got {crf}")
    if preset not in X264_PRESETS:
        raise ValueError(f"--x264_preset must be one of {', '.join(X264_PRESETS)}, got {preset}")
    tmpl = args.image_tmpl or (
        REGISTRY[args.dataset]["RGB"]["image_tmpl"] if args.dataset else DEFAULT_TMPL
    )
    frame_pattern(tmpl)  # validates the template
    quality = DEFAULT_QUALITY if args.quality is None else args.quality
    if args.short_side < 0:
        raise ValueError(f"--short_side must be >= 0, got {args.short_side}")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise ValueError(f"--fps must be > 0, got {args.fps}")
    if not 1 <= quality <= 100:
        raise ValueError(f"--quality must be in 1..100, got {quality}")
    if args.workers < 1:
        raise ValueError(f"-j must be >= 1, got {args.workers}")
    output = "video" if args.reencode is not None else "packed" if args.pack else "folders"
    return Settings(
        out_dir=args.out,
        image_tmpl=tmpl,
        short_side=args.short_side,
        fps=args.fps,
        quality=quality,
        overwrite=args.overwrite,
        output=output,
        gop=args.reencode,
        crf=crf,
        preset=preset,
    )


def check_output_dir(out_dir: str) -> None:
    """OSError (one line) when the output folder is a file or cannot be written."""
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"output {out_dir} is a file, not a folder: give a folder")
    try:
        ensure_writable_dir(out_dir, "output")
    except ValueError as exc:
        raise PermissionError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    try:
        settings = settings_from_args(args)
        exts = tuple(e if e.startswith(".") else "." + e for e in args.ext)
        videos = find_videos(args.src, extensions=exts, flat=args.flat, skip=args.out)
        if not videos:
            raise FileNotFoundError(f"no video file ({', '.join(exts)}) found under {args.src}")
        if settings.output == "video":
            for path, video_id in videos:
                if os.path.realpath(output_path(settings, video_id)) == os.path.realpath(path):
                    raise ValueError(
                        f"--reencode would write {path} over itself: give another output folder"
                    )
        check_outputs(  # an output never is, nor holds, a video (ops/output_paths.py)
            [("the video", path) for path, _ in videos],
            [("OUT", args.out), ("--failed_list", args.failed_list)],
            replaced=[(f"OUT ({vid}'s frames)", output_path(settings, vid)) for _, vid in videos],
        )
        check_output_dir(args.out)
        if args.failed_list is not None:
            ensure_writable_file(args.failed_list, "--failed_list")
        settings = claim_output(settings, videos)
    except TOOL_ERRORS as exc:
        return fail(exc)

    what = {
        "folders": f"frame folders, {settings.image_tmpl}",
        "packed": f"packed frames, {settings.image_tmpl}",
        "video": f"H.264, key frame every {settings.gop}, crf {settings.crf}",
    }[settings.output]
    logger.info(
        "%d videos -> %s (%s, short side %s%s), %d worker(s)",
        len(videos),
        args.out,
        what,
        args.short_side or "unchanged",
        f", {args.fps:g} fps" if args.fps else "",
        args.workers,
    )
    results = extract_all(videos, settings, workers=args.workers)
    if settings.replacing:  # every video has been through the new settings
        write_record(settings.out_dir, settings)
    failed = [r for r in results if r.status == "failed"]
    if args.failed_list:
        write_atomically(args.failed_list, "".join(f"{r.video}\t{r.message}\n" for r in failed))
    print(summarize(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
