"""Bad data: counted, logged once per video, reported at the end, never silent.

Real datasets hold broken videos, so the data layer survives them (a missing or undecodable frame
is replaced by the nearest readable one, an unreadable video is skipped) and says so here:
`DataProblems.problem` counts the event, logs the first problem of each video, and with
`strict=True` (`--strict_data`) raises `DataError` instead. The counts live in a shared-memory
tensor with one row per DataLoader worker (row 0: the main process), so the main process reads
the totals (`totals`, `report`) whatever the workers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.utils.data

from ops.lists import short

logger = logging.getLogger(__name__)

# Load-time counters; each counts events (a frame or a video load), summed over workers.
COUNTERS = (
    "frames_missing",  # a sampled frame file does not exist
    "frames_unreadable",  # a sampled frame file exists but does not decode
    "frames_resized",  # a sampled frame's size differs from the clip's first frame (resized)
    "frames_timed_out",  # a frame read did not finish within the read timeout
    "clips_with_replaced_frames",  # items in which some frame was replaced by a neighbour
    "videos_missing_dir",  # items skipped: the frame folder does not exist
    "videos_unreadable",  # items skipped: no frame of the video could be read
    "videos_missing_file",  # items skipped: the video file does not exist
    "videos_too_short",  # training items skipped: the video file has too few frames
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


class DataError(ValueError):
    """A data problem; the message is one line saying what is wrong, where, and what to do."""


def data_error_message(exc: BaseException) -> str:
    """The one-line message of an error: its first line, and for a DataError that a DataLoader
    worker re-raised in the main process (wrapped in the worker's traceback) the DataError's own
    line. main.py and test_models.py report user errors with it."""
    text = str(exc).strip()
    marker = f"{DataError.__module__}.{DataError.__qualname__}: "
    if marker in text:
        return text.rsplit(marker, 1)[1].splitlines()[0]
    return text.splitlines()[0] if text else type(exc).__name__


class DataProblems:
    """The load-time problems of one dataset (list file ``list_file``)."""

    def __init__(self, list_file: str, strict: bool = False, max_workers: int = 128) -> None:
        self.list_file = list_file
        self.strict = strict
        self._counts = torch.zeros(max_workers + 1, len(COUNTERS), dtype=torch.int64)
        self._counts.share_memory_()
        self._logged_videos: set[str] = set()
        self._probe: list[str] | None = None  # inside `probing`: the problems seen, not logged

    def _row(self) -> int:
        info = torch.utils.data.get_worker_info()
        row = 0 if info is None else info.id + 1
        if row >= self._counts.size(0):
            raise DataError(
                f"DataLoader worker {row - 1} exceeds max_workers={self._counts.size(0) - 1}; "
                "build TSNDataSet with a larger max_workers"
            )
        return row

    def count(self, kind: str) -> None:
        """Count one event of ``kind`` (a name in ``COUNTERS``) without logging it."""
        self._counts[self._row(), _C[kind]] += 1

    def problem(self, record, kind: str, what: str) -> None:
        """Count and log (once per video) a problem of ``record``, or raise in strict mode."""
        where = f"video {short(record.path)!r} ({self.list_file}:{record.line})"
        if self.strict:
            raise DataError(
                f"{where}: {what}; fix the data (tools/check_data.py lists every problem) "
                "or run without --strict_data"
            )
        if self._probe is not None:
            self._probe.append(f"{where}: {what}")
            return
        self.count(kind)
        if record.path not in self._logged_videos:
            self._logged_videos.add(record.path)
            logger.warning("%s: %s (further problems of this video are only counted)", where, what)

    @contextlib.contextmanager
    def probing(self) -> Iterator[list[str]]:
        """Loads inside neither count nor log their problems (a check before training reads a
        few videos, which training reads again); yields the list the problems are put in.
        `--strict_data` still raises at the first one."""
        self._probe = []
        try:
            yield self._probe
        finally:
            self._probe = None

    def totals(self) -> dict[str, int]:
        """Every counter summed over the main process and all DataLoader workers, and
        ``videos_skipped`` (the loads that returned no clip)."""
        counts = {name: int(v) for name, v in zip(COUNTERS, self._counts.sum(dim=0).tolist())}
        counts["videos_skipped"] = sum(counts[k] for k in SKIP_COUNTERS)
        return counts


def report(list_file: str, num_videos: int, counts: dict[str, int], min_frames: int) -> str:
    """Multi-line summary of ``counts`` for the end of a run; says so when there was no problem."""
    lines = [f"data problems for {list_file} ({num_videos} videos):"]
    items = [
        ("bad_list_lines", "list lines skipped (malformed)"),
        ("short_videos_dropped", f"videos dropped for < {min_frames} frames (published)"),
        ("frames_missing", "missing frames replaced by the nearest readable frame"),
        ("frames_unreadable", "undecodable frames replaced by the nearest readable frame"),
        ("frames_resized", "frames resized to the size of their clip's first frame"),
        ("frames_timed_out", "frame reads that timed out, replaced by the nearest readable frame"),
        ("clips_with_replaced_frames", "clip loads with a replaced frame"),
        ("videos_missing_dir", "video loads skipped: frame folder missing"),
        ("videos_unreadable", "video loads skipped: no readable frame"),
        ("videos_missing_file", "video loads skipped: video file missing"),
        ("videos_too_short", f"training loads skipped: < {min_frames} frames in file"),
        ("videos_fewer_frames", "video loads: fewer frames in the file than declared"),
        ("frame_count_mismatch", "video loads: list frame count differs from the file's"),
    ]
    for key, text in items:
        if counts.get(key):
            lines.append(f"  {text}: {counts[key]}")
    if len(lines) == 1:
        return f"data problems for {list_file}: none"
    lines.append("  (run tools/check_data.py for the list of affected files)")
    return "\n".join(lines)
