"""Pack frame folders into one file per video: the cluster-friendly layout of the same frames.

    python tools/pack_frames.py FRAMES_ROOT OUT_ROOT -j 8

Every frame folder under ``FRAMES_ROOT`` (a folder that directly holds image files: .jpg, .jpeg,
.png, .bmp, .tif, .tiff, .webp; searched recursively, hidden folders skipped) becomes the file
``OUT_ROOT/<its path relative to FRAMES_ROOT>.zip``: a zip archive whose members are the
folder's image files, byte for byte (stored, no compression), under their own names, plus the
zip index (format and measurements: ``ops/packed_frames.py``). Other files of a frame folder are
not frames and are left out (counted). ``OUT_ROOT`` may be ``FRAMES_ROOT`` itself: the packed
files then sit beside the folders, and the folders can be deleted once the run reports no
failure (the data loader prefers a folder where both exist).

Training and evaluation read the packed files with the same lists and flags: point
``--root_path`` (or the dataset's root) at ``OUT_ROOT``. A list entry ``abseiling/x`` is read
from ``<root>/abseiling/x.zip`` when there is no folder ``<root>/abseiling/x``.

Parallel (``-j``, processes) with a progress bar. Resumable and crash-safe: each file is written
under a temporary name beside its final one (``.<name>.zip.partial-<host>-<pid>-*``), its index
last, then re-read and verified (every member's name, size and CRC-32 against the bytes read from
the folder, and the archive's consistency), and only then renamed into place; so a final file
is always complete and verified, and the next run skips it (``--overwrite`` packs it again).
Temporary files left by a killed run are deleted when the next run starts (one walk of
``OUT_ROOT``; another host's are left alone until untouched for an hour).

Folders that cannot be packed (unreadable files, names a zip cannot hold) are reported at the
end (``--failed_list``) and the exit status is 1; bad arguments exit with status 2 and a
one-line message. Packing the same folder twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import re
import sys
from dataclasses import dataclass

from ops.atomic import write_atomically
from ops.packed_frames import EXT, write_packed
from ops.utils import ensure_writable_dir, ensure_writable_file, progress, setup_logging
from tools._common import TOOL_ERRORS, fail, remove_stale_partials_under

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Job:
    """One frame folder to pack (picklable, for the worker pool)."""

    folder: str
    rel: str  # path relative to FRAMES_ROOT
    frames: tuple[str, ...]  # its image files, in frame order
    others: int  # other files in it (not packed)
    target: str
    overwrite: bool


@dataclass(frozen=True)
class Result:
    """Outcome of one folder: 'packed', 'skipped' (already there) or 'failed'."""

    rel: str
    status: str
    frames: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    others: int = 0
    message: str = ""


def frame_order(name: str) -> list:
    """Sort key: numbers inside names compare as numbers (``2.jpg`` before ``10.jpg``)."""
    return [(0, int(t), t) if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def find_frame_folders(frames_root: str, out_root: str, overwrite: bool = False) -> list[Job]:
    """A job per frame folder under ``frames_root``, in path order; ValueError when
    ``frames_root`` holds frames itself (name the folder above it)."""
    jobs = []
    out = os.path.realpath(out_root)
    in_place = out == os.path.realpath(frames_root)

    def searched(folder: str, d: str) -> bool:  # not hidden, not the output inside the input
        return not d.startswith(".") and (
            in_place or os.path.realpath(os.path.join(folder, d)) != out
        )

    for folder, dirs, files in os.walk(frames_root):
        dirs[:] = sorted(d for d in dirs if searched(folder, d))
        visible = [f for f in files if not f.startswith(".")]
        frames = sorted(
            (f for f in visible if f.lower().endswith(IMAGE_EXTENSIONS)), key=frame_order
        )
        if not frames:
            continue
        rel = os.path.relpath(folder, frames_root)
        if rel == ".":
            raise ValueError(
                f"{frames_root} holds frame files itself: give the folder that holds the frame "
                "folders (the data root of the list files)"
            )
        target = os.path.join(out_root, rel + EXT)
        jobs.append(Job(folder, rel, tuple(frames), len(visible) - len(frames), target, overwrite))
    return jobs


def _members(job: Job):
    for name in job.frames:
        with open(os.path.join(job.folder, name), "rb") as f:
            yield name, f.read()


def pack_folder(job: Job) -> Result:
    """Pack one folder into ``job.target`` (verified, atomic); never raises for a bad folder."""
    if not job.overwrite and os.path.isfile(job.target):
        return Result(job.rel, "skipped")
    try:
        os.makedirs(os.path.dirname(job.target), exist_ok=True)
        count, size = write_packed(job.target, _members(job))
        bytes_in = sum(os.path.getsize(os.path.join(job.folder, n)) for n in job.frames)
        return Result(job.rel, "packed", count, bytes_in, size, job.others)
    except (OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Result(job.rel, "failed", message=f"{type(exc).__name__}: {message}")


def pack_all(jobs: list[Job], workers: int = 1) -> list[Result]:
    """Pack with ``workers`` processes and a progress bar; results in job order."""
    results: list[Result] = []
    bar = progress(total=len(jobs), desc="pack", unit="video", off_tty=True)
    try:
        if workers <= 1:
            for job in jobs:
                results.append(pack_folder(job))
                bar.update(1)
        else:
            with multiprocessing.Pool(workers) as pool:
                for result in pool.imap_unordered(pack_folder, jobs, chunksize=4):
                    results.append(result)
                    bar.update(1)
    finally:
        bar.close()
    order = {job.rel: i for i, job in enumerate(jobs)}
    return sorted(results, key=lambda r: order[r.rel])


def summarize(results: list[Result]) -> str:
    """Final report: counts and sizes, then one line per failed folder."""
    packed = [r for r in results if r.status == "packed"]
    skipped = sum(r.status == "skipped" for r in results)
    failed = [r for r in results if r.status == "failed"]
    bytes_in, bytes_out = sum(r.bytes_in for r in packed), sum(r.bytes_out for r in packed)
    ratio = f", x{bytes_out / bytes_in:.4f}" if bytes_in else ""
    lines = [
        f"{len(results)} frame folders: {len(packed)} packed ({sum(r.frames for r in packed)} "
        f"frames, {bytes_in} -> {bytes_out} bytes{ratio}), {skipped} already packed, "
        f"{len(failed)} failed"
    ]
    others = sum(r.others for r in packed)
    if others:
        lines.append(f"  {others} files that are not images were left out")
    lines += [f"  failed: {r.rel}: {r.message}" for r in failed]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Pack every frame folder under FRAMES_ROOT into OUT_ROOT/<folder>.zip (JPEG "
        "bytes unchanged, stored zip); parallel, resumable, verified.",
    )
    parser.add_argument("frames_root", help="folder holding the frame folders (any depth)")
    parser.add_argument("out_root", help="where the packed files go (may be frames_root)")
    parser.add_argument("-j", "--workers", type=int, default=1, help="folders packed in parallel")
    parser.add_argument(
        "--overwrite", action="store_true", help="pack folders whose packed file already exists"
    )
    parser.add_argument(
        "--failed_list", default=None, help="also write the folders that failed to this file"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    try:
        if args.workers < 1:
            raise ValueError(f"-j must be >= 1, got {args.workers}")
        if not os.path.isdir(args.frames_root):
            raise FileNotFoundError(f"frames root {args.frames_root} is not a folder")
        if os.path.exists(args.out_root) and not os.path.isdir(args.out_root):
            raise NotADirectoryError(f"output root {args.out_root} exists and is not a folder")
        ensure_writable_dir(args.out_root, "OUT_ROOT")
        if args.failed_list is not None:
            ensure_writable_file(args.failed_list, "--failed_list")
        jobs = find_frame_folders(args.frames_root, args.out_root, args.overwrite)
        if not jobs:
            raise FileNotFoundError(
                f"no frame folder (a folder holding {', '.join(IMAGE_EXTENSIONS)} files) "
                f"under {args.frames_root}"
            )
    except TOOL_ERRORS as exc:
        return fail(exc)

    remove_stale_partials_under(args.out_root)  # what killed runs left
    logger.info("%d frame folders -> %s, %d worker(s)", len(jobs), args.out_root, args.workers)
    results = pack_all(jobs, workers=args.workers)
    failed = [r for r in results if r.status == "failed"]
    if args.failed_list:
        write_atomically(args.failed_list, "".join(f"{r.rel}\t{r.message}\n" for r in failed))
    print(summarize(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
