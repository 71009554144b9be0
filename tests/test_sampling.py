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


# ----------------------------------------------------------------------------- mmaction2 clips
# mmaction2's SampleFrames(clip_len=32, frame_interval=2, num_clips=1 | 10, test_mode) worked out
# by hand from its formulas: training window 32 * 2 = 64 frames, offset randint(F - 64 + 1) when
# F - 63 > 0 else 0; testing span (32 - 1) * 2 + 1 = 63, max_offset = max(F - 63, 0), ten clips
# at round(k * max_offset / 9), one clip at max_offset // 2; frames offset + 2i modulo F
# (0-based; +1 here).
def mm(F, mode, seed=None, S=32, clips=10):
    rng = None if seed is None else np.random.RandomState(seed)
    return sample_clips(
        F, S, mode=mode, dense_sample=True, rng=rng, clip_sampling="mmaction", num_dense_clips=clips
    )


def test_mmaction_test_clips_start_as_sampleframes():
    # F=300: max_offset 237, 237 / 9 = 26.33: 0, 26.33, 52.67, 79, 105.33, 131.67, 158, 184.33,
    # 210.67, 237 -> rounded 0 26 53 79 105 132 158 184 211 237
    got = mm(300, "test")
    assert [c[0] - 1 for c in got] == [0, 26, 53, 79, 105, 132, 158, 184, 211, 237]
    assert got[2] == [53 + 2 * i + 1 for i in range(32)]
    # the published TSM dense test: int(linspace(0, 236, 10)) = 0 26 52 78 104 131 157 183 209 236
    tsm = clips(300, 32, "test", dense=True)
    assert [c[0] - 1 for c in tsm] == [0, 26, 52, 78, 104, 131, 157, 183, 209, 236]
    # F=72: max_offset 9, one frame apart: 0 .. 9
    assert [c[0] - 1 for c in mm(72, "test")] == list(range(10))
    # one test clip: the centre, max_offset // 2 = 237 // 2 = 118
    assert [c[0] - 1 for c in mm(300, "test", clips=1)] == [118]


def test_mmaction_short_videos_loop():
    # F=40 < 63: every clip starts at 0 and wraps: 0 2 .. 38, then 0 2 .. 22 (frames +1)
    frames = [2 * i % 40 + 1 for i in range(32)]
    assert frames[:22] == list(range(1, 40, 2)) + [1, 3]
    assert mm(40, "test") == [frames] * 10
    assert mm(40, "val") == [frames]
    assert mm(40, "train", seed=0) == [frames]
    # F=63: the test span fits exactly (max_offset 0); training needs 64 (offset 0 too)
    assert mm(63, "test")[9][0] == 1 and mm(63, "train", seed=3) == mm(63, "val")


def test_mmaction_val_is_the_centre_clip():
    # F=100: (100 - 63) // 2 = 18; F=64: 1 // 2 = 0
    assert mm(100, "val")[0][0] == 19
    assert mm(64, "val")[0][0] == 1


def test_mmaction_train_offsets_cover_zero_to_f_minus_64():
    # F=100: randint(37), the same draw from the same RandomState
    r = int(np.random.RandomState(4).randint(37))
    assert mm(100, "train", seed=4)[0][0] == r + 1
    starts = {mm(100, "train", seed=s)[0][0] - 1 for s in range(600)}
    assert starts == set(range(37))  # 0 .. F - 64 = 36
    tsm = {clips(100, 32, "train", dense=True, seed=s)[0][0] - 1 for s in range(600)}
    assert tsm == set(range(36))  # the published TSM code never starts at F - 64
    # F=64: randint(1) = 0
    assert {mm(64, "train", seed=s)[0][0] for s in range(20)} == {1}


def test_mmaction_sampling_needs_dense_and_a_known_name():
    with pytest.raises(ValueError, match="needs dense_sample"):
        sample_clips(100, 8, mode="test", clip_sampling="mmaction")
    with pytest.raises(ValueError, match="clip_sampling must be one of"):
        sample_clips(100, 8, mode="test", dense_sample=True, clip_sampling="slowfast")
    # 8 frames: interval 64 // 8 = 8, training window 64, test span 57
    assert mm(200, "test", S=8)[9][:3] == [143 + 1, 151 + 1, 159 + 1]  # round(9 * 143 / 9) = 143
