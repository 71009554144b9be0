"""TSN-style video dataset: list file -> sampled frames -> group transforms -> clip tensor.

`TSNDataSet` keeps TSM's constructor keywords so TSM scripts port unchanged. It reads a list file
(`ops/lists.py`), samples the frames of each item (`ops.sampling`, SPEC.md section 4) and loads
them from its source: frame folders (`ops/frames.py`, TSM's layout) or video files
(`ops/video_files.py`, chosen by `image_tmpl=VIDEO_TMPL`, what `ops.dataset_config` returns for
`--videos` / `--video_root`). Both sources sample and transform alike.

Broken data is counted and reported, never silent (`ops/data_problems.py`): list problems (wrong
field count, non-integer count or label, label out of range) raise `DataError` naming file and
line unless `skip_bad_lines` (then counted and logged); a missing or undecodable frame is replaced
by the nearest readable frame of the same video; a video that cannot be read is skipped (the item
is None and `collate` drops it); `strict_data=True` turns every one of these into a `DataError`.
`bad_data_counts()` / `bad_data_report()` give the totals over all DataLoader workers.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.utils.data
from PIL import Image

from ops import data_problems
from ops.data_problems import DataError, DataProblems
from ops.dataset_config import VIDEO_TMPL
from ops.frames import FrameFolders, frames_on_disk
from ops.lists import VideoRecord
from ops.sampling import clip_frames
from ops.transforms import FrameTooSmall
from ops.video_files import VideoFiles

logger = logging.getLogger(__name__)

MIN_TRAIN_FRAMES = 3  # the published loader drops shorter videos from training lists


class TSNDataSet(torch.utils.data.Dataset):
    """Clips of videos (frame folders or video files), sampled as TSN/TSM (SPEC.md sections 4, 8).

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
        self.root_path = root_path
        self.list_file = list_file
        self.num_segments = num_segments
        self.new_length = new_length
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
        if modality not in ("RGB", "Flow"):
            raise ValueError(f"modality must be RGB or Flow, got {modality!r}")
        # The published loader keeps only videos of >= 3 frames for training (and with
        # remove_missing); we do the same, but count and report it.
        self.min_frames = MIN_TRAIN_FRAMES if (not test_mode or remove_missing) else 0
        self.problems = DataProblems(list_file, strict=strict_data, max_workers=max_workers)
        self.is_video = image_tmpl == VIDEO_TMPL
        self.source = (
            VideoFiles(root_path, modality, self.problems, self.min_frames)
            if self.is_video
            else FrameFolders(root_path, image_tmpl, modality, self.problems)
        )
        records, problems = self.source.read_list(list_file, num_class)
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

        # Lists: counts as listed; video lists without a count are checked when the file is opened.
        self.short_videos = [r for r in records if 0 < r.num_frames < self.min_frames]
        records = [r for r in records if not 0 < r.num_frames < self.min_frames]
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
        _warn_duplicates(list_file, records)
        self.video_list = records
        logger.info("%s: %d videos, %s", list_file, len(records), self.source.describe())

    @property
    def mode(self) -> str:
        if self.test_mode:
            return "test"
        return "train" if self.random_shift else "val"

    def __len__(self) -> int:
        return len(self.video_list)

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
        images = self.load(record)
        if images is None:
            return None
        try:
            data = self.transform(images) if self.transform is not None else images
        except FrameTooSmall as exc:  # counted and logged once, like an unreadable video
            self.problems.problem(record, "videos_unreadable", str(exc))
            return None
        if self.return_index:
            return data, record.label, index
        return data, record.label

    def load(self, record: VideoRecord) -> list[Image.Image] | None:
        """The decoded frames of an item (all clips; flow: x, y per frame), before the transform;
        None when the video has to be skipped (counted)."""

        def sample(num_frames: int) -> list[int]:  # the source knows the count (a file's, say)
            return self.sample_frames(record, num_frames=num_frames)

        return self.source.load(record, sample)

    # ------------------------------------------------------------------ reporting
    def bad_data_counts(self) -> dict[str, int]:
        """Load-time totals over the main process and all DataLoader workers, plus list-level
        counts (``bad_list_lines``, ``short_videos_dropped``)."""
        counts = self.problems.totals()
        counts["bad_list_lines"] = len(self.bad_lines)
        counts["short_videos_dropped"] = len(self.short_videos)
        return counts

    def bad_data_report(self) -> str:
        """Multi-line summary for the end of a run; says so when there was no problem."""
        return data_problems.report(
            self.list_file, len(self), self.bad_data_counts(), MIN_TRAIN_FRAMES
        )


def _warn_duplicates(list_file: str, records: list[VideoRecord]) -> None:
    """One warning when a list names a video more than once: every entry is used (trained on as
    often, scored as often), which is rarely meant."""
    lines: dict[str, list[int]] = {}
    for r in records:
        lines.setdefault(r.path, []).append(r.line)
    repeated = {path: at for path, at in lines.items() if len(at) > 1}
    if not repeated:
        return
    extra = sum(len(at) - 1 for at in repeated.values())
    path, at = next(iter(repeated.items()))
    logger.warning(
        "%s: %d duplicate entries (%d videos listed more than once, e.g. %r at lines %s): each "
        "entry is trained on / scored as often as it is listed; tools/check_data.py lists them",
        list_file,
        extra,
        len(repeated),
        path,
        ", ".join(map(str, at)),
    )


def collate(batch: list):
    """DataLoader collate_fn that drops skipped videos (None items); None if all were skipped."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    return torch.utils.data.default_collate(kept)
