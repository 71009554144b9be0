"""tools/model_cost.py: multiply-add counts checked against counts worked out by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ops.region_conv import RegionConv3d
from ops.rnl import RNLBlock
from tools import model_cost


def test_conv_grouped_conv_and_linear_counts():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, groups=2))
    cost = model_cost.count_macs(net, torch.zeros(1, 3, 10, 10))
    # conv1: 8x10x10 outputs x 3x3x3 = 21600; conv2: 4x8x8 outputs x (8/2)x3x3 = 9216
    assert cost.by_kind == {"conv": 21600 + 9216}
    cost = model_cost.count_macs(nn.Linear(10, 5), torch.zeros(3, 10))
    assert cost.macs == 3 * 5 * 10


def test_region_conv_counts_as_depthwise_not_as_the_masked_grouped_conv():
    conv = RegionConv3d(64, (3, 7, 7))
    cost = model_cost.count_macs(conv, torch.zeros(1, 64, 2, 5, 5))
    # 64 x 2x5x5 outputs, each 3x7x7 products of its own channel
    assert cost.by_kind == {"region_conv": 64 * 50 * 147}
    assert cost.macs == 470400  # the masked grouped conv would do 32x this
    live, stored = model_cost.count_params(conv)
    assert live == 64 * 147  # one 3x7x7 kernel per channel
    assert stored == 2 * 64 * 32 * 147  # weight and mask in the published layout


@pytest.mark.parametrize(
    "shape, sub_sample, expected",
    [
        # C=8, C'=4, kernel 3x3x3, P = 2*3*3 = 18:
        # theta 4*18*8 = 576, region conv 4*18*27 = 1944, attention 2*18*18*4 = 2592,
        # W 8*18*4 = 576 -> 5688
        ((1, 8, 2, 3, 3), False, {"conv": 1152, "region_conv": 1944, "attention": 2592}),
        # P = 2*4*4 = 32, sources 2*2*2 = 8: theta 1024, region 3456, attention 2*32*8*4 = 2048,
        # W 1024; batch 2 doubles everything
        ((2, 8, 2, 4, 4), True, {"conv": 4096, "region_conv": 6912, "attention": 4096}),
    ],
)
def test_rnl_block_counts(shape, sub_sample, expected):
    block = RNLBlock(8, reduction=2, kernel_size=(3, 3, 3), sub_sample=sub_sample).eval()
    cost = model_cost.count_macs(block, torch.zeros(shape))
    assert cost.by_kind == expected
    assert cost.macs == sum(expected.values())


def test_tsm_resnet50_matches_the_published_cost():
    cfg = dict(num_class=400, num_segments=8, modality="RGB", base_model="resnet50", dropout=0.5)
    tsn = model_cost.model_cost(dict(cfg, is_shift=False), 224)
    tsm = model_cost.model_cost(dict(cfg, is_shift=True), 224)
    # TSM paper: 33 GFLOPs (8 x 4.1 G multiply-adds) and 24.3 M parameters; the shift is free.
    assert 32.5e9 < tsm.macs < 33.1e9
    assert tsm.macs == tsn.macs
    assert round(tsm.params / 1e6, 1) == 24.3


def test_rnl_resnet50_adds_exactly_its_five_blocks_and_the_gate():
    cfg = dict(num_class=400, num_segments=8, modality="RGB", base_model="resnet50", dropout=0.5)
    tsm = model_cost.model_cost(dict(cfg, is_shift=True), 224)
    rnl = model_cost.model_cost(dict(cfg, is_shift=True, non_local=True), 224)

    def block(c: int, p: int, k: int) -> int:  # theta + region conv + attention + W
        ci = c // 2
        return c * ci * p + ci * k * p + 2 * p * p * ci + ci * c * p

    p2, p3 = 8 * 28 * 28, 8 * 14 * 14  # positions after layer2 / layer3 at 224 px
    gate = 512 * p2 + 512 * 256 + 256 * 512 + 512 * p2  # score conv, two linears, weighted sum
    added = 2 * block(512, p2, 3 * 7 * 7) + 3 * block(1024, p3, 3 * 3 * 3) + gate
    assert rnl.macs - tsm.macs == added
    assert rnl.nonlocal_macs == added
    assert rnl.uncounted == []


def test_cli_prints_the_table_and_rejects_unknown_models(capsys):
    assert model_cost.main(["--arch", "resnet50", "--segments", "8", "--models", "TSM"]) == 0
    out = capsys.readouterr().out
    assert "| TSM | resnet50 | 8 | 224 | 24.33 |" in out
    assert model_cost.main(["--models", "TSM+XYZ"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model") and len(err.strip().splitlines()) == 1
