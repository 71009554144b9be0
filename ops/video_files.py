"""Video files as the data layer's source: clips decoded straight from the files (PyAV).

Selected by `--videos` / `--video_root` (`ops.dataset_config.resolve_dataset` returns
`VIDEO_TMPL` as the frame template, and `TSNDataSet` picks this source for it). The list is a
video list (`ops/lists.py`), `root_path` the folder holding the files (several separated by
`os.pathsep`), and frames are decoded with `ops.video.VideoReader`. The frame count is the
container's, checked when the file is opened; the sampling is the same `ops.sampling` call as for
frame folders, so a video and the frame folder extracted from it give the same frame numbers and,
after the same transforms, tensors that differ only by the JPEG round-trip.

Broken files: a missing file or one that does not open is skipped; a file that holds fewer frames
than its container declares (truncated), or whose list count differs from the container's, is
counted and logged; frames that do not decode are replaced by the nearest frame that does.
"""

from __future__ import annotations

import bisect
import os

from PIL import Image

from ops.data_problems import DataError, DataProblems
from ops.frames import Sample
from ops.lists import VideoRecord, parse_video_list_file
from ops.video import DECODER, VideoError, VideoReader


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


class VideoFiles:
    """Videos stored as files under one or more roots."""

    def __init__(
        self, root_path: str, modality: str, problems: DataProblems, min_frames: int = 0
    ) -> None:
        """``min_frames``: a file with fewer frames is skipped (training, as published)."""
        if modality == "Flow":
            raise DataError(
                "video files hold RGB frames: --modality Flow needs extracted flow frames"
            )
        self.roots = video_roots(root_path)
        if not any(os.path.isdir(r) for r in self.roots):
            raise DataError(
                f"video folder {root_path} does not exist: pass --video_root DIR (or --data_root)"
            )
        self.problems, self.min_frames = problems, min_frames

    def describe(self) -> str:
        return f"video files under {os.pathsep.join(self.roots)}, decoded with {DECODER}"

    def read_list(self, list_file: str, num_class: int | None):
        """Records (``num_frames`` 0 where the line gives no count) and malformed lines."""
        return parse_video_list_file(list_file, num_class)

    def load(self, record: VideoRecord, sample: Sample) -> list[Image.Image] | None:
        """Open the record's file, sample ``sample(frames in the file)``, decode the sampled frames
        (each distinct frame once), replacing frames that do not decode by the nearest frame that
        does; None when the video has to be skipped (also when it has fewer than ``min_frames``)."""
        problems, min_frames = self.problems, self.min_frames
        path = find_video_file(self.roots, record.path)
        if path is None:
            where = os.pathsep.join(self.roots)
            problems.problem(record, "videos_missing_file", f"video file not found under {where}")
            return None
        try:
            reader = VideoReader(path)
        except VideoError as e:
            problems.problem(record, "videos_unreadable", str(e))
            return None
        with reader:
            n = reader.num_frames
            if reader.problem is not None:
                problems.problem(record, "videos_fewer_frames", f"{path}: {reader.problem}")
            if record.num_frames and record.num_frames != n:
                problems.problem(
                    record,
                    "frame_count_mismatch",
                    f"the list says {record.num_frames} frames, {path} has {n}; using {n}",
                )
            if n < min_frames:
                problems.problem(
                    record,
                    "videos_too_short",
                    f"{path} has {n} frames, fewer than {min_frames} (skipped for training as by "
                    "the published loader)",
                )
                return None
            frames = sample(n)
            try:
                images = reader.read(frames)
                missing = [k for k in dict.fromkeys(frames) if k not in images]
                if missing:
                    images = _replace_undecodable(record, path, reader, images, missing, problems)
            except VideoError as e:
                problems.problem(record, "videos_unreadable", str(e))
                return None
        return None if images is None else [images[k] for k in frames]


def _replace_undecodable(record, path, reader, images, missing, problems: DataProblems):
    # Rare path (damaged files): one pass over the whole file tells which frames decode.
    got, decodable = reader.scan(missing)
    images.update(got)
    if not decodable:
        problems.problem(record, "videos_unreadable", f"no frame of {path} decodes")
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
        problems.problem(record, "videos_unreadable", f"{path} does not decode the same twice")
        return None
    for k in still:
        problems.problem(
            record,
            "frames_unreadable",
            f"frame {k} of {path} does not decode; using frame {replacement[k]} instead",
        )
        images[k] = images[replacement[k]]
    if still:
        problems.count("clips_with_replaced_frames")
    return images
