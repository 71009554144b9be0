"""Scan a dataset's lists and frames and report every problem, before a week of training.

    python tools/check_data.py kinetics --data_root /ssd/video -j 8 --report problems.txt

For each list (train and val by default) it reports malformed lines (wrong field count,
non-integer frame count or label, label outside [0, num_class)), and for each video: a missing
frame folder, missing frames, frames that do not decode, and a frame count larger than the
frames on disk. Video lists (`--videos` / `--video_root DIR`): a missing video file, a file that
does not open as a video, one that holds fewer frames than its container declares, a list frame
count that differs from the container's, and (unless --quick) frames that do not decode, found
by decoding every file once. One line per problem, `<list>:<line>: [<kind>] <what>`, on stdout and in
`--report FILE`; the exit code is 1 when anything was found, 0 when the data is clean, 2 when
the check itself could not run (e.g. unknown dataset).

The rules are those of the training loader (`ops/dataset.py` and its sources, `ops/frames.py` and
`ops/video_files.py`), which survives all of these by counting them; this tool lists them so they
can be fixed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ops.dataset_config import VIDEO_TMPL, add_data_args, resolve_dataset  # noqa: E402
from ops.frames import (  # noqa: E402
    check_template,
    frame_files,
    frames_on_disk,
    read_frame,
    read_frame_list,
    video_dir,
)
from ops.lists import VideoRecord, parse_video_list_file  # noqa: E402
from ops.utils import progress  # noqa: E402
from ops.video import VideoError, VideoReader  # noqa: E402
from ops.video_files import find_video_file, video_roots  # noqa: E402

VIDEO_PROBLEM_KINDS = (
    "missing_list",  # the list file does not exist
    "missing_dir",  # the frame folder does not exist
    "no_frames",  # the folder exists but holds none of the listed frames
    "frames_beyond_disk",  # the list's frame count is larger than the frames on disk
    "missing_frames",  # frames missing inside the listed range
    "corrupt_frames",  # frame files that exist but do not decode
    "missing_video",  # video lists: the video file does not exist
    "unreadable_video",  # the file does not open as a video, or no frame decodes
    "fewer_frames",  # the file holds fewer frames than its container declares (truncated)
    "frame_count_mismatch",  # the video list's frame count is not the container's
    "undecodable_frames",  # frames of the video file that do not decode
)


@dataclass(frozen=True)
class ScanJob:
    """One video to scan (picklable, for the worker pool)."""

    list_file: str
    record: VideoRecord
    num_frames: int  # frames the loader will read (flow v1 lists count x and y files)
    root_path: str
    image_tmpl: str
    modality: str
    decode: bool


@dataclass(frozen=True)
class VideoScanJob:
    """One video file to probe (picklable, for the worker pool)."""

    list_file: str
    record: VideoRecord
    roots: tuple[str, ...]
    decode: bool


def _ranges(nums: list[int]) -> str:
    # [3, 4, 5, 9] -> "3-5, 9"
    out, start = [], None
    for i, n in enumerate(nums):
        if start is None:
            start = n
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


def scan_video(job: ScanJob) -> list[str]:
    """Problem lines of one video (empty when it is clean)."""
    rec = job.record
    where = f"{job.list_file}:{rec.line}: "
    folder = video_dir(job.root_path, rec.path, job.image_tmpl, job.modality)
    if not os.path.isdir(folder):
        return [f"{where}[missing_dir] video {rec.path!r}: frame folder {folder} does not exist"]
    missing, corrupt = [], []
    first_missing_file = None
    for k in range(1, job.num_frames + 1):
        paths = frame_files(job.root_path, rec.path, job.image_tmpl, job.modality, k)
        absent = [p for p in paths if not os.path.isfile(p)]
        if absent:
            missing.append(k)
            first_missing_file = first_missing_file or absent[0]
            continue
        if job.decode:
            try:
                read_frame(paths, job.modality)
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
                corrupt.append((k, paths[0], e))
    lines = []
    n = job.num_frames
    if missing and len(missing) == n:
        lines.append(
            f"{where}[no_frames] video {rec.path!r}: none of its {n} frames is in {folder}"
        )
        missing = []
    elif missing and missing[-1] == n:
        tail_start = n
        while tail_start - 1 in missing:
            tail_start -= 1
        lines.append(
            f"{where}[frames_beyond_disk] video {rec.path!r}: the list says {n} frames but "
            f"frames {_ranges(list(range(tail_start, n + 1)))} are not on disk "
            f"({tail_start - 1} found in {folder})"
        )
        missing = [k for k in missing if k < tail_start]
        first_missing_file = (
            frame_files(job.root_path, rec.path, job.image_tmpl, job.modality, missing[0])[0]
            if missing
            else None
        )
    if missing:
        lines.append(
            f"{where}[missing_frames] video {rec.path!r}: frames {_ranges(missing)} are missing "
            f"(first: {first_missing_file})"
        )
    for k, path, err in corrupt:
        lines.append(
            f"{where}[corrupt_frames] video {rec.path!r}: frame {k} does not decode: {path} ({err})"
        )
    return lines


def scan_video_file(job: VideoScanJob) -> list[str]:
    """Problem lines of one video file (empty when it is clean)."""
    rec = job.record

    def line(kind: str, what: str) -> str:
        return f"{job.list_file}:{rec.line}: [{kind}] video {rec.path!r}: {what}"

    path = find_video_file(list(job.roots), rec.path)
    if path is None:
        return [line("missing_video", f"not found under {os.pathsep.join(job.roots)}")]
    try:
        reader = VideoReader(path)
    except VideoError as e:
        return [line("unreadable_video", str(e))]
    lines = []
    with reader:
        n = reader.num_frames
        if reader.problem is not None:
            lines.append(line("fewer_frames", f"{path}: {reader.problem}"))
        if rec.num_frames and rec.num_frames != n:
            lines.append(
                line("frame_count_mismatch", f"the list says {rec.num_frames}, {path} has {n}")
            )
        if job.decode:
            decodable = set(reader.scan()[1])
            bad = [k for k in range(1, n + 1) if k not in decodable]
            if not decodable:
                lines.append(line("unreadable_video", f"no frame of {path} decodes"))
            elif bad:
                lines.append(
                    line("undecodable_frames", f"frames {_ranges(bad)} of {n} do not decode")
                )
    return lines


def _scan_job(job) -> list[str]:
    return scan_video_file(job) if isinstance(job, VideoScanJob) else scan_video(job)


def check(
    list_files: list[str],
    root_path: str,
    image_tmpl: str,
    modality: str,
    num_class: int | None,
    decode: bool = True,
    workers: int = 1,
) -> tuple[list[str], int]:
    """All problem lines of the given lists, and the number of videos scanned."""
    problems: list[str] = []
    jobs: list[ScanJob | VideoScanJob] = []
    is_video = image_tmpl == VIDEO_TMPL
    if not is_video:
        check_template(image_tmpl, modality)
    for list_file in list_files:
        try:  # the loader's own list reading
            if is_video:
                records, bad = parse_video_list_file(list_file, num_class)
            else:
                records, bad = read_frame_list(list_file, num_class, image_tmpl, modality)
        except FileNotFoundError:
            problems.append(f"{list_file}:0: [missing_list] list file does not exist")
            continue
        problems.extend(f"{p.list_file}:{p.line}: [{p.kind}] {p.message}" for p in bad)
        for r in records:
            n = frames_on_disk(r.num_frames, image_tmpl, modality)
            if is_video:
                jobs.append(VideoScanJob(list_file, r, tuple(video_roots(root_path)), decode))
            else:
                jobs.append(ScanJob(list_file, r, n, root_path, image_tmpl, modality, decode))

    bar = dict(total=len(jobs), desc="scanning videos", unit="video", off_tty=True)
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:
            results = list(progress(pool.imap(_scan_job, jobs, chunksize=8), **bar))
    else:
        results = [_scan_job(j) for j in progress(jobs, **bar)]
    for lines in results:
        problems.extend(lines)
    return problems, len(jobs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Report every problem in a dataset's list files and frame folders.",
    )
    parser.add_argument("dataset", help="registered dataset name (see ops/dataset_config.py)")
    parser.add_argument("--modality", default="RGB", choices=("RGB", "Flow"))
    parser.add_argument(
        "--split", nargs="+", default=["train", "val"], choices=("train", "val"), help="lists"
    )
    parser.add_argument("--test_list", default=None, help="check this list instead of the splits")
    parser.add_argument("--report", default=None, help="also write the problems to this file")
    parser.add_argument("--quick", action="store_true", help="check that files exist, no decode")
    parser.add_argument("-j", "--workers", type=int, default=1, help="scanning processes")
    add_data_args(parser)
    args = parser.parse_args(argv)

    try:
        num_class, train_list, val_list, root_path, image_tmpl = resolve_dataset(
            args, args.modality
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.test_list is not None:
        lists = [args.test_list]
    else:
        lists = [{"train": train_list, "val": val_list}[s] for s in args.split]

    try:
        problems, scanned = check(
            lists,
            root_path,
            image_tmpl,
            args.modality,
            num_class,
            decode=not args.quick,
            workers=args.workers,
        )
    except ValueError as e:  # e.g. a frame template that does not fit the modality
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = f"{len(problems)} problem(s) in {len(lists)} list(s), {scanned} videos scanned"
    for line in problems:
        print(line)
    print(summary)
    if args.report is not None:
        with open(args.report, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in problems))
            f.write(summary + "\n")
        print(f"report written to {args.report}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
