"""Scan a dataset's lists and frames and report every problem, before a week of training.

    python tools/check_data.py kinetics --data_root /ssd/video -j 8 --report problems.txt

For each list (train and val by default) it reports malformed lines (wrong field count,
non-integer frame count or label, label outside [0, num_class)), and for each video: a missing
frame folder, missing frames, frames that do not decode, and a frame count larger than the
frames on disk. Packed frames (``<folder>.zip`` read where the folder is absent, the rule of
``ops.frames.video_location``) are checked the same way, plus the archive itself: a packed file
whose index does not read or whose structure is inconsistent (``damaged_packed``, naming the
file), a member whose bytes fail their CRC (``corrupt_frames``, naming file and member). Video lists (`--videos` / `--video_root DIR`): a missing video file, a file that
does not open as a video, one that holds fewer frames than its container declares, a list frame
count that differs from the container's, and (unless --quick) frames that do not decode, found
by decoding every file once. It also lists what training would silently fix or mangle: frame
sizes that differ within a video, 16-bit / float / alpha / CMYK frames (converted with a loss),
videos listed twice, and entries outside the data root. The work per video is bounded by the
files on disk (the folder is listed once), whatever frame count a list claims. One line per problem, `<list>:<line>: [<kind>] <what>`, on stdout and in
`--report FILE`; the exit code is 1 when anything was found, 0 when the data is clean, 2 when
the check itself could not run (e.g. unknown dataset).

The rules are those of the training loader (`ops/dataset.py` and its sources, `ops/frames.py` and
`ops/video_files.py`), which survives all of these by counting them; this tool lists them so they
can be fixed.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ops.atomic import write_atomically
from ops.dataset_config import (
    REGISTRY,
    VIDEO_TMPL,
    add_data_args,
    category_file,
    default_data_root,
    resolve_dataset,
)
from ops.frames import (
    check_template,
    frame_files,
    frames_in_names,
    frames_on_disk,
    frames_present,
    read_bytes,
    read_frame_list,
    video_dir,
    video_location,
)
from ops.lists import (
    VideoRecord,
    parse_video_list_file,
    short,
)
from ops.output_paths import check_outputs
from ops.packed_frames import EXT as PACKED_EXT
from ops.packed_frames import PackedFile
from ops.utils import ensure_writable_file, progress
from ops.video import VideoError, VideoReader
from ops.video_files import find_video_file, video_roots

VIDEO_PROBLEM_KINDS = (
    "missing_list",  # the list file does not exist
    "missing_dir",  # the frame folder does not exist (nor a packed file for it)
    "damaged_packed",  # a packed file whose index does not read or is inconsistent
    "no_frames",  # the folder exists but holds none of the listed frames
    "frames_beyond_disk",  # the list's frame count is larger than the frames on disk
    "missing_frames",  # frames missing inside the listed range
    "corrupt_frames",  # frame files that exist but do not decode
    "missing_video",  # video lists: the video file does not exist
    "unreadable_video",  # the file does not open as a video, or no frame decodes
    "fewer_frames",  # the file holds fewer frames than its container declares (truncated)
    "frame_count_mismatch",  # the video list's frame count is not the container's
    "undecodable_frames",  # frames of the video file that do not decode
    # what training silently fixes or mangles:
    "mixed_sizes",  # frames of one video differ in size (training resizes to the first)
    "lossy_mode",  # 16-bit, float, alpha or CMYK frames (converted to 8-bit RGB / grey)
    "duplicate",  # a video listed twice (in one list, or in train and val)
    "outside_root",  # a list entry outside the data root (absolute, or climbing with '..')
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


MAX_RANGES = 10  # frame ranges named in one problem line; the rest are counted
# Modes that training reads without a loss (grey and palette images become RGB exactly), and
# what happens to the others.
KEPT_MODES = {"RGB": ("RGB", "L", "P", "1"), "Flow": ("L", "1")}
LOSSY_MODES = {
    "I;16": "16-bit: scaled to 8 bits",
    "I;16B": "16-bit: scaled to 8 bits",
    "I;16L": "16-bit: scaled to 8 bits",
    "I": "32-bit integers: 16-bit data scaled to 8 bits",
    "F": "floating point: clipped to 0..255",
    "RGBA": "the alpha channel is dropped",
    "LA": "the alpha channel is dropped",
    "CMYK": "colours converted by PIL's simple formula",
    "RGB": "colour flow frames: mixed into one grey channel",
}


def image_info(path: str) -> tuple[str, tuple[int, int]]:
    """Mode and size of an image file, after decoding it fully (raises as the loader's
    ``decode_image`` would on a broken file)."""
    return bytes_info(read_bytes(path))


def bytes_info(data: bytes) -> tuple[str, tuple[int, int]]:
    """``image_info`` of an image file's bytes (a packed member)."""
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise OSError(f"not an image file PIL can read ({len(data)} bytes)") from None
    with im:
        mode, size = im.mode, im.size
        im.load()
    return mode, size


def _ranges(nums: list[int]) -> str:
    # [3, 4, 5, 9] -> "3-5, 9"
    spans = []
    for n in nums:
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return _spans_text([(a, b) for a, b in spans])


def _spans_text(spans: list[tuple[int, int]]) -> str:
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans[:MAX_RANGES])
    if len(spans) > MAX_RANGES:
        text += f", ... ({len(spans) - MAX_RANGES} more ranges)"
    return text


def _gaps(present: list[int], n: int) -> list[tuple[int, int]]:
    """The ranges of 1..n missing from the sorted ``present`` (cost: len(present))."""
    spans, expected = [], 1
    for k in present:
        if k > expected:
            spans.append((expected, k - 1))
        expected = k + 1
    if expected <= n:
        spans.append((expected, n))
    return spans


class _Frames:
    """The files of a video's frames: its folder, or its packed file (open)."""

    def __init__(self, job: ScanJob, folder: str, packed: PackedFile | None) -> None:
        self.job, self.folder, self.packed = job, folder, packed

    def paths(self, k: int) -> list[str]:
        job = self.job
        return frame_files(job.root_path, job.record.path, job.image_tmpl, job.modality, k)

    def shown(self, k: int) -> list[str]:
        """The frame's files as a message names them (``file.zip:member`` when packed)."""
        if self.packed is None:
            return self.paths(k)
        return [f"{self.packed.path}:{os.path.basename(p)}" for p in self.paths(k)]

    def info(self, k: int) -> list[tuple[str, tuple[int, int]]]:
        if self.packed is None:
            return [image_info(p) for p in self.paths(k)]
        return [bytes_info(self.packed.read(os.path.basename(p))) for p in self.paths(k)]

    def present(self, record: VideoRecord) -> list[int]:
        job = self.job
        if self.packed is None:
            return frames_present(self.folder, record, job.root_path, job.image_tmpl, job.modality)
        names = set(self.packed.names)
        return frames_in_names(names, record, job.root_path, job.image_tmpl, job.modality)


def scan_video(job: ScanJob) -> list[str]:
    """Problem lines of one video (empty when it is clean).

    The folder is listed once (a packed file's index read once) and only the frames on disk are
    decoded, so the work is bounded by the files, not by the frame count the list claims."""
    rec = job.record
    where = f"{job.list_file}:{rec.line}: "
    name = short(rec.path)
    folder = video_dir(job.root_path, rec.path, job.image_tmpl, job.modality)
    location = video_location(folder)
    if location is None:
        return [
            f"{where}[missing_dir] video {name!r}: frame folder {short(folder)} does not exist "
            f"(nor a packed {short(folder + PACKED_EXT)})"
        ]
    packed = None
    if location[0] == "packed":
        try:
            packed = PackedFile(location[1])
        except OSError as e:
            return [f"{where}[damaged_packed] video {name!r}: {short(str(e))}"]
    try:
        return _scan_frames(job, _Frames(job, folder, packed), where, name)
    finally:
        if packed is not None:
            packed.close()


def _scan_frames(job: ScanJob, frames: _Frames, where: str, name: str) -> list[str]:
    rec = job.record
    n = job.num_frames
    record = VideoRecord(rec.path, n, rec.label, rec.line)
    present = frames.present(record)
    lines = []
    shown = short(frames.folder if frames.packed is None else frames.packed.path)
    if frames.packed is not None and job.decode:
        lines += [
            f"{where}[damaged_packed] video {name!r}: {shown}: {problem}"
            for problem in frames.packed.layout_problems()
        ]
    if not present:
        return lines + [f"{where}[no_frames] video {name!r}: none of its {n} frames is in {shown}"]
    gaps = _gaps(present, n)
    if gaps and gaps[-1][1] == n:
        tail_start = gaps.pop()[0]
        lines.append(
            f"{where}[frames_beyond_disk] video {name!r}: the list says {n} frames but "
            f"frames {_spans_text([(tail_start, n)])} are not on disk "
            f"({tail_start - 1} found in {shown})"
        )
    if gaps:
        first = frames.shown(gaps[0][0])
        lines.append(
            f"{where}[missing_frames] video {name!r}: frames {_spans_text(gaps)} are missing "
            f"(first: {short(first[0])})"
        )
    if job.decode:
        lines += _decode_problems(job, frames, present, where, name)
    return lines


def _decode_problems(
    job: ScanJob, frames: _Frames, present: list[int], where: str, name: str
) -> list[str]:
    """Frames that do not decode, and what training would silently fix or mangle: sizes that
    differ from the video's first frame, and modes PIL converts with a loss."""
    lines, sizes, lossy = [], {}, {}
    for k in present:
        try:  # each file read once: its header's mode and size, then the full decode
            info = frames.info(k)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
            lines.append(
                f"{where}[corrupt_frames] video {name!r}: frame {k} does not decode: "
                f"{short(frames.shown(k)[0])} ({short(str(e))})"
            )
            continue
        for mode, size in info:
            sizes.setdefault(size, []).append(k)
            xy_in_rgb = job.modality == "Flow" and len(info) == 1  # x, y in an RGB image
            if mode not in KEPT_MODES["RGB" if xy_in_rgb else job.modality]:
                lossy.setdefault(mode, []).append(k)
    if len(sizes) > 1:
        first = sizes[next(iter(sizes))]
        other = {s: ks for s, ks in sizes.items() if ks is not first}
        text = "; ".join(
            f"{w}x{h}: frames {_ranges(sorted(set(ks)))}" for (w, h), ks in other.items()
        )
        (w, h) = next(iter(sizes))
        lines.append(
            f"{where}[mixed_sizes] video {name!r}: the first frame is {w}x{h} but {text} "
            "(training resizes them to the clip's first frame)"
        )
    for mode, ks in lossy.items():
        lines.append(
            f"{where}[lossy_mode] video {name!r}: frames {_ranges(sorted(set(ks)))} are {mode} "
            f"images; training reads them as 8-bit {'grey' if job.modality == 'Flow' else 'RGB'} "
            f"({LOSSY_MODES.get(mode, 'converted by PIL')})"
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


def _outside(root_path: str, path: str) -> bool:
    """Whether a list entry names a place outside the data root (lexically: an absolute path or
    one climbing with '..'; symbolic links inside the root are the user's own layout)."""
    rel = os.path.relpath(
        os.path.normpath(os.path.join(root_path, path)), os.path.normpath(root_path)
    )
    return rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(path)


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
    seen: dict[str, str] = {}  # video -> where it was first listed
    # A list given twice (train = val) is scanned once; its videos are not duplicates.
    unique = {os.path.realpath(f): f for f in reversed(list_files)}
    for list_file in dict.fromkeys(unique[os.path.realpath(f)] for f in list_files):
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
            where = f"{list_file}:{r.line}: "
            if r.path in seen:
                problems.append(
                    f"{where}[duplicate] video {short(r.path)!r} is also listed at {seen[r.path]} "
                    "(training samples it more often; in train and val lists it leaks)"
                )
            else:
                seen[r.path] = f"{list_file}:{r.line}"
            if _outside(root_path, r.path):
                problems.append(
                    f"{where}[outside_root] video {short(r.path)!r} is outside the data root "
                    f"{root_path} (an absolute path or '..'): training reads it from there"
                )
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


def registered_category_file(args: argparse.Namespace) -> str | None:
    """The category file the registry gives the dataset (None for a class count or none)."""
    if args.dataset not in REGISTRY or args.modality not in REGISTRY[args.dataset]:
        return None
    return category_file(args.dataset, args.modality, args.data_root or default_data_root())


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
        named = {"--test_list": args.test_list}
    else:
        named = {f"--{s}_list": {"train": train_list, "val": val_list}[s] for s in args.split}
    lists = list(named.values())
    if args.report is not None:
        try:  # before the scan, which may take hours; never over a file it reads
            ensure_writable_file(args.report, "--report")
            classes = args.category_file or registered_category_file(args)
            inputs = [*named.items(), ("--category_file", classes)]
            check_outputs(inputs, [("--report", args.report)])
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

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
        try:
            write_atomically(args.report, "".join(line + "\n" for line in [*problems, summary]))
        except OSError as e:
            print(f"error: --report {args.report}: {e.strerror or e}", file=sys.stderr)
            return 2
        print(f"report written to {args.report}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
