"""The benchmarks' plain configuration keeps for the backward exactly what the published code keeps,
and the recompute paths hold less.

What the published code keeps is counted from shapes, operation by operation, in
benchmarks/published_memory.py (read off the released RNL code and torchvision's ResNet); here it
is compared with what autograd actually keeps in our plain model, unit by unit, byte for byte.
"""

import pytest
import torch

from benchmarks import bench_saved, bench_step
from benchmarks.measure import saved_bytes_by_unit
from benchmarks.published_memory import (
    bottleneck_bytes,
    published_step_bytes,
    retained_bytes,
    rnl_bytes,
)
from ops.rnl import RNLBlock


def test_hand_count_of_one_rnl_block_by_its_tensors():
    # 2 clips, C = 64 (C' = 32, one group of 32), 2 x 4 x 4 positions, kernel 3x3x3:
    # theta, r, y (2 * 32 * 32 floats each), weight * mask (32 * 32 * 27), the 32 x 32 affinity
    # per clip, W's conv output (2 * 64 * 32) and its batch mean and inverse std (64 each).
    want = 4 * (3 * 2 * 32 * 32 + 32 * 32 * 27 + 2 * 32 * 32 + 2 * 64 * 32 + 2 * 64)
    assert rnl_bytes(2, 64, 32, (3, 3, 3)) == want
    block = RNLBlock(64, kernel_size=(3, 3, 3), fused=False, region_impl="masked")
    x = torch.randn(2, 64, 2, 4, 4, requires_grad=True)
    exclude = [*block.parameters(), *block.buffers(), x]
    kept = saved_bytes_by_unit(lambda: block(x), {"rnl": [block]}, exclude)
    assert kept["rnl"] == want


def test_hand_count_of_a_projection_bottleneck():
    # layer2.0-like: 8 frames, 256 -> width 128 -> 512 channels, 8x8 -> 4x4 (stride 2):
    # shifted copy 8*256*64; c1, a1 8*128*64; c2, a2 8*128*16; c3, out, downsample 8*512*16;
    # batch statistics 2 * (128 + 128 + 512 + 512)
    want = 4 * (8 * 256 * 64 + 2 * 8 * 128 * 64 + 2 * 8 * 128 * 16 + 3 * 8 * 512 * 16)
    want += 4 * 2 * (128 + 128 + 512 + 512)
    assert bottleneck_bytes(8, 256, 8, 128, 2, downsample=True, shifted=True) == want


@pytest.mark.parametrize("clips,frames,size", [(2, 4, 64), (3, 2, 96)])
def test_plain_keeps_what_the_published_code_keeps_unit_by_unit(clips, frames, size):
    torch.manual_seed(0)
    model, _, _ = bench_step.build("plain", frames, "cpu")
    model.train()
    x = torch.randn(clips * frames, 3, size, size)
    y = torch.randint(0, bench_saved.NUM_CLASS, (clips,))
    kept = saved_bytes_by_unit(
        lambda: torch.nn.functional.cross_entropy(model(x), y),
        bench_saved._units(model),
        [*model.parameters(), *model.buffers(), x, y],
        outside="head",
    )
    assert kept == published_step_bytes(clips, frames, size, bench_saved.NUM_CLASS)


def test_plain_holds_the_rnl_inputs_and_affinities_after_the_step_as_published():
    clips, frames, size = 2, 4, 64
    torch.manual_seed(0)
    model, _, _ = bench_step.build("plain", frames, "cpu")
    x = torch.randn(clips * frames, 3, size, size)
    model.train()
    model(x).sum().backward()
    blocks = [m for m in model.modules() if isinstance(m, RNLBlock)]
    held = sum(b.feature_maps.untyped_storage().nbytes() for b in blocks)
    held += sum(b.attention.untyped_storage().nbytes() for b in blocks)
    assert held == retained_bytes(clips, frames, size)


def test_recompute_holds_less_at_the_peak_of_a_step():
    # The allocator's peak (exact, independent of the machine's load) of a whole training step.
    peaks = {c: bench_saved.step_peak(c, 2, 4, 96) for c in bench_saved.PEAK_CONFIGS}
    assert peaks["fast fp32"] < 0.8 * peaks["fast fp32 no recompute"]
    assert peaks["fast fp32 checkpoint_blocks"] < peaks["fast fp32"]
    assert peaks["fast fp32 no recompute"] < peaks["plain"]
