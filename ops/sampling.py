"""Which frames of a video make up a clip: the TSN / TSM / I3D-dense sampling rules.

This is the only copy of the index formulas of SPEC.md section 4; the frame-folder dataset
(`ops/dataset.py`) and any other frame source (e.g. a video-file reader) call these functions so
that "frame k" means the same everywhere. All functions are pure: they take the number of frames
of the video and return 1-based frame numbers, one list per clip.

Randomness follows the published code, which drew from NumPy's global generator
(`np.random.randint`). DataLoader workers seed that generator per worker, so training runs stay
reproducible; pass a `np.random.RandomState` as `rng` to get a deterministic draw in tests.

Notation (as in SPEC.md): F = number of frames, S = number of segments, L = frames per snippet
(`new_length`: 1 for RGB, 5 for optical flow).

Dense clips (S frames `64 // S` apart, wrapping around short videos) start where the published
TSM code starts them (`clip_sampling="tsm"`, SPEC section 4) or where mmaction2's
`SampleFrames(clip_len=S, frame_interval=64 // S)` does (`clip_sampling="mmaction"`, the NL I3D
protocol: 32 frames at interval 2). The two differ only in the starts; with `w = 64` for
training and `w = 63` (the clip's span) for testing:

| mode  | tsm (published TSM)                            | mmaction (SampleFrames)                      |
| ----- | ---------------------------------------------- | -------------------------------------------- |
| train | uniform in 0 .. F-65 (F > 64), else 0          | uniform in 0 .. F-64 (F >= 64), else 0       |
| val   | a random start, as train (the published quirk) | the centre: max(F - 63, 0) // 2              |
| test  | int(linspace(0, max(F - 64, 0), 10)) (floor)   | round(k * max(F - 63, 0) / 9), k = 0..9      |
"""

from __future__ import annotations

import numpy as np

MODES = ("train", "val", "test")
CLIP_SAMPLING = ("tsm", "mmaction")  # where dense clips start (see the module docstring)
DENSE_WINDOW = 64  # dense sampling covers a window of 64 frames (I3D convention)
DENSE_TEST_CLIPS = 10  # dense test mode: clips whose starts spread evenly over the video


def _randint(rng: np.random.RandomState | None, *args, **kwargs) -> np.ndarray | int:
    """`randint` of the given RandomState, or of NumPy's global one as the published code."""
    return (np.random if rng is None else rng).randint(*args, **kwargs)


def _tsn_train(F: int, S: int, L: int, rng: np.random.RandomState | None) -> list[int]:
    # One random frame inside each of S equal segments; short videos: S sorted random frames.
    span = F - L + 1  # frames that can start a snippet of L frames
    d = span // S
    if d > 0:
        offsets = np.arange(S) * d + _randint(rng, d, size=S)
    elif F > S and span > 0:
        offsets = np.sort(_randint(rng, span, size=S))
    else:
        # F <= S (or a snippet longer than the video, where the published code crashed): frame 1.
        offsets = np.zeros(S, dtype=np.int64)
    return [int(o) + 1 for o in offsets]


def _tsn_centres(F: int, S: int, L: int, half: bool) -> list[int]:
    # The centre (half=True) or the start (half=False) of each of S equal segments.
    tick = (F - L + 1) / float(S)
    if half:
        return [int(tick / 2.0 + tick * i) + 1 for i in range(S)]
    return [int(tick * i) + 1 for i in range(S)]


def _dense_clip(F: int, S: int, start: int) -> list[int]:
    # S frames `64 // S` apart from `start`, wrapping around short videos.
    stride = DENSE_WINDOW // S
    return [(start + i * stride) % F + 1 for i in range(S)]


def _dense_random_start(F: int, rng: np.random.RandomState | None) -> int:
    # The published code draws from [0, F - 64) (upper bound exclusive), 0 for F <= 64.
    sample_pos = max(1, 1 + F - DENSE_WINDOW)
    return 0 if sample_pos == 1 else int(_randint(rng, 0, sample_pos - 1))


def _mmaction_starts(F: int, S: int, mode: str, clips: int, rng) -> list[int]:
    # mmaction2's SampleFrames (clip_len S, frame_interval 64 // S, out_of_bound 'loop'): its
    # window is S * interval frames for training and (S - 1) * interval + 1 for testing.
    interval = DENSE_WINDOW // S
    if mode == "train":
        span = F - S * interval + 1
        return [int(_randint(rng, span)) if span > 0 else 0]
    max_offset = max(F - ((S - 1) * interval + 1), 0)
    if mode == "val" or clips == 1:
        return [max_offset // 2]
    return [int(x) for x in np.round(np.arange(clips) * (max_offset / (clips - 1)))]


def sample_clips(
    num_frames: int,
    num_segments: int,
    new_length: int = 1,
    mode: str = "train",
    dense_sample: bool = False,
    twice_sample: bool = False,
    rng: np.random.RandomState | None = None,
    num_dense_clips: int = DENSE_TEST_CLIPS,
    clip_sampling: str = "tsm",
) -> list[list[int]]:
    """1-based start frame of every snippet, one list of `num_segments` numbers per clip.

    mode "train": TSN random offsets (or a random dense window); one clip.
    mode "val":   TSN segment centres (or a random dense window, as published); one clip.
    mode "test":  TSN segment centres; with `twice_sample` a second clip of segment starts;
                  with `dense_sample` `num_dense_clips` windows with evenly spread starts.
    `twice_sample` only changes test mode, as in the published code. `clip_sampling`
    ("tsm" or "mmaction", dense sampling only) says where dense windows start (module docstring).
    """
    F, S, L = int(num_frames), int(num_segments), int(new_length)
    if F < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if S < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    if L < 1:
        raise ValueError(f"new_length must be >= 1, got {new_length}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if dense_sample and S > DENSE_WINDOW:
        raise ValueError(f"dense sampling needs num_segments <= {DENSE_WINDOW}, got {S}")
    if clip_sampling not in CLIP_SAMPLING:
        raise ValueError(f"clip_sampling must be one of {CLIP_SAMPLING}, got {clip_sampling!r}")
    if clip_sampling != "tsm" and not dense_sample:
        raise ValueError(f"clip_sampling {clip_sampling!r} places dense clips: it needs dense_sample")

    if dense_sample and clip_sampling == "mmaction":
        starts = _mmaction_starts(F, S, mode, num_dense_clips, rng)
        return [_dense_clip(F, S, start) for start in starts]
    if dense_sample:
        if mode == "test":
            sample_pos = max(1, 1 + F - DENSE_WINDOW)
            starts = np.linspace(0, sample_pos - 1, num=num_dense_clips)
            return [_dense_clip(F, S, int(s)) for s in starts]
        return [_dense_clip(F, S, _dense_random_start(F, rng))]
    if mode == "train":
        return [_tsn_train(F, S, L, rng)]
    if mode == "val":
        if F > S + L - 1:
            return [_tsn_centres(F, S, L, half=True)]
        return [[1] * S]
    clips = [_tsn_centres(F, S, L, half=True)]
    if twice_sample:
        clips.append(_tsn_centres(F, S, L, half=False))
    return clips


def snippet_frames(starts: list[int], new_length: int, num_frames: int) -> list[int]:
    """Expand snippet starts into the frames read: `new_length` consecutive frames from each start.

    As in the published loader, a snippet that runs past the last frame repeats the last frame
    (the frame number stops growing at `num_frames`). The result has `len(starts) * new_length`
    entries, in order.
    """
    frames = []
    for p in starts:
        p = int(p)
        for _ in range(new_length):
            frames.append(p)
            if p < num_frames:
                p += 1
    return frames


def clip_frames(num_frames: int, num_segments: int, new_length: int = 1, **sampling) -> list[int]:
    """All 1-based frame numbers an item reads, clip after clip (`sample_clips` + `snippet_frames`).

    `sampling`: the other keywords of `sample_clips` (mode, dense_sample, twice_sample, rng,
    clip_sampling).
    Length: clips * num_segments * new_length. A frame may appear several times (short videos,
    overlapping dense clips); readers should decode each distinct frame once.
    """
    clips = sample_clips(num_frames, num_segments, new_length=new_length, **sampling)
    frames = []
    for starts in clips:
        frames.extend(snippet_frames(starts, new_length=new_length, num_frames=num_frames))
    return frames


def num_clips(
    mode: str,
    dense_sample: bool = False,
    twice_sample: bool = False,
    num_dense_clips: int = DENSE_TEST_CLIPS,
) -> int:
    """How many clips `sample_clips` returns per video in this mode (test-time views per crop)."""
    if mode != "test":
        return 1
    if dense_sample:
        return num_dense_clips
    return 2 if twice_sample else 1
