"""Decode videos into the JPEG frame folders that the TSN/TSM data pipeline reads.

    python tools/extract_frames.py VIDEOS_DIR OUT_DIR -j 8                  # <OUT>/<id>/img_00001.jpg
    python tools/extract_frames.py VIDEOS_DIR OUT_DIR --dataset somethingv2 # that dataset's names

Every video under ``VIDEOS_DIR`` (mp4, webm, avi, mkv, ...; searched recursively) becomes the folder
``OUT_DIR/<video id>``, where the id is the video's path relative to ``VIDEOS_DIR`` without its
extension, so Kinetics' and UCF101's class folders are kept (``--flat`` drops them). Frames are
numbered from 1 in decoding order with the frame-name template of the chosen dataset (registry in
ops/dataset_config.py) or ``--image_tmpl``; the shorter side is resized to ``--short_side``
(default 256, aspect ratio kept, PIL bilinear as in the data pipeline), optionally at ``--fps``.

Decoding uses PyAV, which ships its own FFmpeg libraries, so no system ffmpeg is needed.

Resumable and crash-safe: a video is decoded into a hidden temporary folder next to its final one
(``.<name>.partial-<host>-<pid>-*``), which is renamed into place only once every frame is written.
So a final folder always holds a complete video and is skipped by the next run (``--overwrite``
redoes it); a temporary folder left by a killed run is deleted when its video is redone.

Before any work, a frame folder that would be a video or hold one (``OUT`` inside ``VIDEOS_DIR``
with a video ``cls.mp4`` beside the class folder ``cls/``: --overwrite would delete that folder)
and a ``--failed_list`` that is a video are refused (``ops/output_paths.py``).

Unreadable videos (missing, truncated, not a video, decoding error, no frame, or fewer frames than
the container declares) are not fatal: they are counted and listed at the end (and written to
``--failed_list``), no folder is left for them, and the exit status is 1. Bad arguments exit with
status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import av  # noqa: E402
from PIL import Image  # noqa: E402

from ops.dataset_config import DATASETS, REGISTRY  # noqa: E402
from ops.output_paths import check_outputs  # noqa: E402
from ops.utils import progress, setup_logging  # noqa: E402
from tools._common import (  # noqa: E402
    TOOL_ERRORS,
    VIDEO_EXTENSIONS,
    fail,
    frame_pattern,
)

logger = logging.getLogger(__name__)

DEFAULT_TMPL = "img_{:05d}.jpg"
PARTIAL = ".partial-"


@dataclass(frozen=True)
class Settings:
    """How every video is extracted (picklable, sent to the worker processes)."""

    out_dir: str
    image_tmpl: str = DEFAULT_TMPL
    short_side: int = 256
    fps: float | None = None
    quality: int = 90
    overwrite: bool = False


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
    src: str, extensions: tuple[str, ...] = VIDEO_EXTENSIONS, flat: bool = False
) -> list[tuple[str, str]]:
    """``(path, video id)`` of every video file under ``src`` (or of ``src`` itself), sorted.

    The id is the path relative to ``src`` without extension (``abseiling/x_000010_000020``), or
    just the file stem with ``flat``. Two videos with the same id (``a.mp4`` and ``a.webm``) are
    an error, since they would write the same folder.
    """
    extensions = tuple(e.lower() for e in extensions)
    if os.path.isfile(src):
        return [(src, Path(src).stem)]
    if not os.path.isdir(src):
        raise FileNotFoundError(f"video source {src} does not exist: give a video file or a folder")
    found = []
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
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
            yield frame.to_image()


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
def _partial_prefix(name: str) -> str:
    return f".{name}{PARTIAL}"


def _owner_alive(partial_name: str, name: str) -> bool:
    """Whether the process that writes this temporary folder still runs (on this host)."""
    tag = partial_name[len(_partial_prefix(name)) :]  # <host>-<pid>-<random>
    host, _, pid_text = tag.rpartition("-")[0].rpartition("-")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(parent: str, name: str) -> int:
    """Delete temporary folders of video ``name`` left by runs that died; returns how many."""
    removed = 0
    if not os.path.isdir(parent):
        return 0
    prefix = _partial_prefix(name)
    for entry in os.scandir(parent):
        if entry.name.startswith(prefix) and entry.is_dir() and not _owner_alive(entry.name, name):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
    if removed:
        logger.info("removed %d unfinished extraction(s) of %s left by a killed run", removed, name)
    return removed


def extract_video(video: str, video_id: str, settings: Settings) -> Result:
    """Extract one video into ``settings.out_dir/video_id``; never raises for a bad video."""
    final = os.path.join(settings.out_dir, video_id)
    if os.path.isdir(final) and not settings.overwrite:
        return Result(video, video_id, "skipped")
    parent, name = os.path.split(final)
    os.makedirs(parent, exist_ok=True)
    remove_stale_partials(parent, name)
    tmp = tempfile.mkdtemp(
        prefix=f"{_partial_prefix(name)}{socket.gethostname()}-{os.getpid()}-", dir=parent
    )
    try:
        count = 0
        for image in iter_frames(video, fps=settings.fps):
            count += 1
            image = resize_short_side(image, settings.short_side)
            image.save(
                os.path.join(tmp, settings.image_tmpl.format(count)), quality=settings.quality
            )
        if count == 0:
            raise ValueError("no frame could be decoded")
        declared = declared_frames(video)
        if not settings.fps and declared > count:
            raise ValueError(f"decoded only {count} of the {declared} frames the file declares")
        if os.path.isdir(final):  # --overwrite: swap the old folder out, then delete it
            old = tempfile.mkdtemp(prefix=f"{_partial_prefix(name)}old-", dir=parent)
            os.replace(final, os.path.join(old, name))
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        return Result(video, video_id, "done", frames=count)
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and os.path.isdir(final) and not settings.overwrite:
            return Result(video, video_id, "skipped")  # another run finished it meanwhile
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Result(video, video_id, "failed", message=f"{type(exc).__name__}: {message}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    results: list[Result] = []
    bar = progress(total=len(videos), desc="extract", unit="video", off_tty=True)
    try:
        if workers <= 1:
            for item in videos:
                results.append(job(item))
                bar.update(1)
        else:
            with multiprocessing.Pool(workers) as pool:
                for result in pool.imap_unordered(job, videos, chunksize=1):
                    results.append(result)
                    bar.update(1)
    finally:
        bar.close()
    order = {video_id: i for i, (_, video_id) in enumerate(videos)}
    return sorted(results, key=lambda r: order[r.video_id])


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


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Decode videos (PyAV) into frame folders <out>/<video id>/img_00001.jpg ...; "
        "resumable, parallel, reports unreadable videos (exit status 1 if any).",
    )
    parser.add_argument("src", help="a video file, or a folder searched recursively for videos")
    parser.add_argument("out", help="output folder; each video becomes OUT/<video id>/")
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
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (1-95)")
    parser.add_argument("-j", "--workers", type=int, default=1, help="videos decoded in parallel")
    parser.add_argument(
        "--ext",
        nargs="+",
        default=list(VIDEO_EXTENSIONS),
        help="video file extensions to look for",
    )
    parser.add_argument(
        "--flat", action="store_true", help="name folders by file stem only, without subfolders"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="re-extract videos whose folder already exists"
    )
    parser.add_argument(
        "--failed_list", default=None, help="also write the unreadable videos to this file"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    try:
        tmpl = args.image_tmpl or (
            REGISTRY[args.dataset]["RGB"]["image_tmpl"] if args.dataset else DEFAULT_TMPL
        )
        frame_pattern(tmpl)  # validates the template
        if args.short_side < 0:
            raise ValueError(f"--short_side must be >= 0, got {args.short_side}")
        if args.fps is not None and args.fps <= 0:
            raise ValueError(f"--fps must be > 0, got {args.fps}")
        if not 1 <= args.quality <= 100:
            raise ValueError(f"--quality must be in 1..100, got {args.quality}")
        if args.workers < 1:
            raise ValueError(f"-j must be >= 1, got {args.workers}")
        exts = tuple(e if e.startswith(".") else "." + e for e in args.ext)
        videos = find_videos(args.src, extensions=exts, flat=args.flat)
        if not videos:
            raise FileNotFoundError(f"no video file ({', '.join(exts)}) found under {args.src}")
        check_outputs(  # a frame folder never is, nor holds, a video (ops/output_paths.py)
            [("the video", path) for path, _ in videos],
            [("OUT", args.out), ("--failed_list", args.failed_list)],
            replaced=[(f"OUT ({vid}'s frames)", os.path.join(args.out, vid)) for _, vid in videos],
        )
    except TOOL_ERRORS as exc:
        return fail(exc)

    settings = Settings(
        out_dir=args.out,
        image_tmpl=tmpl,
        short_side=args.short_side,
        fps=args.fps,
        quality=args.quality,
        overwrite=args.overwrite,
    )
    logger.info(
        "%d videos -> %s (%s, short side %s%s), %d worker(s)",
        len(videos),
        args.out,
        tmpl,
        args.short_side or "unchanged",
        f", {args.fps:g} fps" if args.fps else "",
        args.workers,
    )
    results = extract_all(videos, settings, workers=args.workers)
    failed = [r for r in results if r.status == "failed"]
    if args.failed_list:
        with open(args.failed_list, "w", encoding="utf-8") as f:
            f.writelines(f"{r.video}\t{r.message}\n" for r in failed)
    print(summarize(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
