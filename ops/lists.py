"""List files: one video per line, read into records, malformed lines reported with their number.

A frame-folder list has `<folder> <num_frames> <label>` per line (space separated), or the same
three fields comma separated (the published Kinetics lists were CSV; paths may then contain
spaces). A video list (mmaction2's convention) has `<video file> <label>` or
`<video file> <label> <num_frames>`. Blank lines are ignored; every other line that does not fit
becomes a `ListProblem` naming file, line and what is wrong, so a week of training never starts on
a list that silently lost lines (`TSNDataSet` raises on them unless `--skip_bad_lines`).
"""

from __future__ import annotations

import codecs
import csv
import os
from dataclasses import dataclass

LIST_PROBLEM_KINDS = (
    "not_utf8",  # the line is not UTF-8 text
    "wrong_fields",  # not exactly 3 fields
    "bad_frame_count",  # frame count not an integer >= 1
    "bad_label",  # label not an integer
    "label_range",  # label outside [0, num_class)
    "bad_video_id",  # id-named flow folders: the folder is not a number
)
VIDEO_LIST_FORMAT = "<video file> <label> [<num_frames>]"


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


MAX_FRAMES = 2**31 - 1  # the sampling's integer arithmetic; no video has more frames
MAX_SHOWN = 200  # characters of a list field shown in a message (a line may be megabytes)


def short(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters for a message, saying how long it was."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text)} characters)"


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _line_problem(
    fields: list[str], num_class: int | None, numeric_ids: bool, is_csv: bool
) -> tuple[str, str] | None:
    """(kind, message) of what is wrong with the fields of one list line, or None."""
    if len(fields) != 3:
        sep = "comma" if is_csv else "space"
        got = short(" | ".join(fields))
        return (
            "wrong_fields",
            f"expected 3 {sep}-separated fields (folder num_frames label), "
            f"got {len(fields)}: {got}",
        )
    path, frames_txt, label_txt = fields
    num_frames, label = _parse_int(frames_txt), _parse_int(label_txt)
    if num_frames is None:
        return "bad_frame_count", f"frame count {short(frames_txt)!r} is not an integer"
    if num_frames < 1:
        return "bad_frame_count", f"frame count {num_frames} is not >= 1"
    if num_frames > MAX_FRAMES:
        return "bad_frame_count", f"frame count {short(frames_txt)} is above {MAX_FRAMES}"
    if label is None:
        return "bad_label", f"label {short(label_txt)!r} is not an integer"
    if label < 0 or (num_class is not None and label >= num_class):
        upper = num_class if num_class is not None else "num_class"
        return "label_range", f"label {label} is outside [0, {upper})"
    if numeric_ids and _parse_int(path) is None:
        return (
            "bad_video_id",
            f"folder {short(path)!r} must be a numeric video id (id-named flow frames)",
        )
    return None


def parse_list_file(
    list_file: str, num_class: int | None = None, numeric_ids: bool = False
) -> tuple[list[VideoRecord], list[ListProblem]]:
    """Read a list file into records and the problems of its malformed lines.

    A file whose first entry contains a comma is read as CSV (three fields, the path may contain
    spaces); otherwise fields are whitespace separated. Blank lines are ignored. A line is bad
    when it does not have exactly 3 fields, the frame count is not an integer >= 1, the label is
    not an integer in [0, num_class), or (``numeric_ids``: id-named flow folders, see
    ``ops.frames.flow_layout``) the folder is not a number. Video lists are read by
    `parse_video_list_file`.
    """
    lines, problems, is_csv = _list_lines(list_file)

    records = []
    for n, fields in lines:
        problem = _line_problem(fields, num_class, numeric_ids, is_csv)
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
        data = f.read()
    # A byte-order mark (Windows editors write one) is not part of the first path.
    raw_lines = data.removeprefix(codecs.BOM_UTF8).splitlines()
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
            + short(" | ".join(fields)),
        )
    label = _parse_int(fields[1])
    if label is None:
        return "bad_label", f"label {short(fields[1])!r} is not an integer ({VIDEO_LIST_FORMAT})"
    if label < 0 or (num_class is not None and label >= num_class):
        upper = num_class if num_class is not None else "num_class"
        return "label_range", f"label {label} is outside [0, {upper}) ({VIDEO_LIST_FORMAT})"
    if len(fields) == 3:
        num_frames = _parse_int(fields[2])
        if num_frames is None or not 1 <= num_frames <= MAX_FRAMES:
            return (
                "bad_frame_count",
                f"frame count {short(fields[2])!r} is not an integer in [1, {MAX_FRAMES}]",
            )
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
