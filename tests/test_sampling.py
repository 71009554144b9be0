"""Frame sampling against hand-computed values of the SPEC.md section 4 formulas.

Notation: F frames, S segments, L snippet length. Expected numbers are worked out by hand in
the comments; random draws come from a fresh RandomState with the same seed, to which the
formula is applied here.
"""

import numpy as np
import pytest

from ops.sampling import clip_frames, num_clips, sample_clips, snippet_frames


def clips(F, S, mode, L=1, dense=False, twice=False, seed=None):
    rng = None if seed is None else np.random.RandomState(seed)
    return sample_clips(
        F, S, new_length=L, mode=mode, dense_sample=dense, twice_sample=twice, rng=rng
    )


# ----------------------------------------------------------------------------- TSN train
def test_train_long_video_one_random_frame_per_segment():
    # F=30, S=8: d = 30 // 8 = 3, frame = 3i + randint(3) + 1
    r = np.random.RandomState(5).randint(3, size=8)
    assert clips(30, 8, "train", seed=5) == [[3 * i + int(r[i]) + 1 for i in range(8)]]
    # F=1000, S=8: d = 125
    r = np.random.RandomState(7).randint(125, size=8)
    got = clips(1000, 8, "train", seed=7)[0]
    assert got == [125 * i + int(r[i]) + 1 for i in range(8)]
    assert all(125 * i + 1 <= f <= 125 * (i + 1) for i, f in enumerate(got))


def test_train_d_equal_one_is_deterministic():
    # F=10, S=8: d = 1, randint(1) = 0 -> frames 1..8;  F = S = 8: the same
    assert clips(10, 8, "train", seed=0) == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert clips(8, 8, "train", seed=0) == [[1, 2, 3, 4, 5, 6, 7, 8]]


def test_train_short_videos_repeat_frame_one():
    # F < S and F = 1: d = 0 and F <= S -> zeros -> all frame 1
    assert clips(6, 8, "train", seed=0) == [[1] * 8]
    assert clips(1, 8, "train", seed=0) == [[1] * 8]


def test_train_sorted_random_branch_with_snippets():
    # F=10, S=4, L=8: span = 3, d = 0, F > S -> sorted(randint(3, size=4)) + 1
    r = np.sort(np.random.RandomState(3).randint(3, size=4))
    assert clips(10, 4, "train", L=8, seed=3) == [[int(x) + 1 for x in r]]


def test_train_uses_numpy_global_generator_by_default():
    np.random.seed(11)
    a = sample_clips(300, 8, mode="train")
    assert a == sample_clips(300, 8, mode="train", rng=np.random.RandomState(11))


# ----------------------------------------------------------------------------- TSN val / test
def test_val_segment_centres():
    # F=30, S=8: tick 3.75, int(1.875 + 3.75 i) = 1 5 9 13 16 20 24 28, +1
    assert clips(30, 8, "val") == [[2, 6, 10, 14, 17, 21, 25, 29]]
    # F=9: tick 1.125 -> int(0.5625 + 1.125 i) = 0 1 2 3 5 6 7 8
    assert clips(9, 8, "val") == [[1, 2, 3, 4, 6, 7, 8, 9]]
    # F=1000: tick 125 -> 62 187 ... 937
    assert clips(1000, 8, "val") == [[63, 188, 313, 438, 563, 688, 813, 938]]


def test_val_short_videos_are_zeros():
    # needs F > S + L - 1
    assert clips(8, 8, "val") == [[1] * 8]
    assert clips(3, 8, "val") == [[1] * 8]
    assert clips(1, 8, "val") == [[1] * 8]


def test_val_flow_snippets():
    # F=25, L=5, S=3: tick = 21/3 = 7, int(3.5 + 7i) = 3 10 17 -> starts 4 11 18
    assert clips(25, 3, "val", L=5) == [[4, 11, 18]]
    got = clip_frames(25, 3, new_length=5, mode="val")
    assert got == list(range(4, 9)) + list(range(11, 16)) + list(range(18, 23))


def test_test_mode_has_no_short_video_branch():
    assert clips(30, 8, "test") == [[2, 6, 10, 14, 17, 21, 25, 29]]
    # F=3: tick 0.375, int(0.1875 + 0.375 i) = 0 0 0 1 1 2 2 2
    assert clips(3, 8, "test") == [[1, 1, 1, 2, 2, 3, 3, 3]]
    # F=1: tick 0.125, all int(.) = 0; F = S = 8: tick 1, int(0.5 + i) = i
    assert clips(1, 8, "test") == [[1] * 8]
    assert clips(8, 8, "test") == [[1, 2, 3, 4, 5, 6, 7, 8]]


def test_twice_sample_adds_segment_starts():
    # second clip int(3.75 i) = 0 3 7 11 15 18 22 26
    assert clips(30, 8, "test", twice=True) == [
        [2, 6, 10, 14, 17, 21, 25, 29],
        [1, 4, 8, 12, 16, 19, 23, 27],
    ]
    # F=3: int(0.375 i) = 0 0 0 1 1 1 2 2
    assert clips(3, 8, "test", twice=True)[1] == [1, 1, 1, 2, 2, 2, 3, 3]
    # twice_sample only changes test mode
    assert clips(30, 8, "val", twice=True) == [[2, 6, 10, 14, 17, 21, 25, 29]]


# ----------------------------------------------------------------------------- dense
def test_dense_test_ten_clips():
    # F=100: sample_pos 37, starts linspace(0, 36, 10) = 0 4 ... 36, stride 64 // 8 = 8
    got = clips(100, 8, "test", dense=True)
    assert len(got) == 10
    assert got[0] == [1, 9, 17, 25, 33, 41, 49, 57]
    assert got[9] == [37, 45, 53, 61, 69, 77, 85, 93]
    assert [c[0] - 1 for c in got] == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]
    # F=74: sample_pos 11, linspace(0, 10, 10) = 0 1.11 2.22 ... 8.89 10 -> 0..8, 10
    assert [c[0] - 1 for c in clips(74, 8, "test", dense=True)] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]


def test_dense_short_videos_wrap_around():
    # F=30 <= 64: start 0, (8i) % 30 = 0 8 16 24 2 10 18 26
    expected = [1, 9, 17, 25, 3, 11, 19, 27]
    assert clips(30, 8, "test", dense=True) == [expected] * 10
    assert clips(30, 8, "train", dense=True, seed=0) == [expected]
    assert clips(30, 8, "val", dense=True) == [expected]
    assert clips(1, 8, "test", dense=True) == [[1] * 8] * 10
    # F=64: sample_pos 1 -> start 0; 16 segments -> stride 4
    assert clips(64, 16, "train", dense=True, seed=0) == [[1 + 4 * i for i in range(16)]]


def test_dense_train_random_start():
    # F=200: sample_pos 137, start = randint(0, 136)
    start = np.random.RandomState(9).randint(0, 136)
    assert clips(200, 8, "train", dense=True, seed=9) == [[start + 8 * i + 1 for i in range(8)]]
    # F=65: sample_pos 2, randint(0, 1) is always 0
    assert clips(65, 8, "train", dense=True, seed=1) == [[1, 9, 17, 25, 33, 41, 49, 57]]
    # validation draws a random start too (as published)
    start = np.random.RandomState(4).randint(0, 136)
    assert clips(200, 8, "val", dense=True, seed=4) == [[start + 8 * i + 1 for i in range(8)]]


# ----------------------------------------------------------------------------- snippets, misc
def test_snippet_frames_stop_at_last_frame():
    assert snippet_frames([8], new_length=5, num_frames=10) == [8, 9, 10, 10, 10]
    assert snippet_frames([1, 3], new_length=1, num_frames=10) == [1, 3]
    assert snippet_frames([2, 5], new_length=3, num_frames=6) == [2, 3, 4, 5, 6, 6]


def test_clip_frames_concatenates_clips():
    assert clip_frames(30, 8, mode="test", twice_sample=True) == [
        2, 6, 10, 14, 17, 21, 25, 29, 1, 4, 8, 12, 16, 19, 23, 27
    ]  # fmt: skip


def test_num_clips():
    assert num_clips("train", dense_sample=True) == 1
    assert num_clips("test") == 1
    assert num_clips("test", twice_sample=True) == 2
    assert num_clips("test", dense_sample=True, twice_sample=True) == 10


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_frames=0), dict(num_segments=0), dict(new_length=0), dict(mode="eval")],
)
def test_bad_arguments(kwargs):
    args = dict(num_frames=10, num_segments=4, new_length=1, mode="train") | kwargs
    with pytest.raises(ValueError):
        sample_clips(**args)
