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


def _bn_elements(cfg: dict, size: int) -> int:
    """Output elements of every BatchNorm of the model for one clip (what mmaction2's FLOP
    counter adds, 2 per element, to the multiply-adds)."""
    from ops.models import build_model

    with torch.device("meta"):
        model = build_model(**cfg, pretrain="scratch", print_spec=False, input_size=size).eval()
    total = [0]
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.register_forward_hook(
                lambda mod, a, out: total.__setitem__(0, total[0] + out.numel())
            )
    with torch.no_grad():
        model(torch.empty(1, cfg["num_segments"] * 3, size, size, device="meta"))
    return total[0]


@pytest.mark.parametrize("non_local, mmaction2", [(True, 59_308_244_992), (False, 43_455_873_024)])
def test_i3d_matches_mmaction2s_published_flops(non_local, mmaction2):
    # mmaction2's configs/recognition/i3d/README.md: NL I3D-R50 59.3 G, I3D-R50 43.5 G FLOPs.
    # Their tool (tools/analysis_tools/get_flops.py: mmengine's get_model_complexity_info on the
    # backbone, without the head) gives exactly 59,308,244,992 and 43,455,873,024 for clips of
    # 32 x 256 x 256 (run on mmaction2's models of the two configs); it counts BatchNorm as 2
    # FLOPs per element, which our multiply-adds leave out.
    cfg = dict(num_class=400, num_segments=32, modality="RGB", base_model="i3d_resnet50",
               dropout=0.5, non_local=non_local, nl_type="nl")  # fmt: skip
    cost = model_cost.model_cost(cfg, 256)
    assert cost.by_kind["linear"] == 2048 * 400
    assert cost.macs - cost.by_kind["linear"] + 2 * _bn_elements(cfg, 256) == mmaction2
    assert round(cost.params / 1e6, 1) == (35.4 if non_local else 28.0)


def test_nl_i3d_adds_exactly_its_five_non_local_blocks():
    cfg = dict(num_class=400, num_segments=32, modality="RGB", base_model="i3d_resnet50",
               dropout=0.5)  # fmt: skip
    plain = model_cost.model_cost(cfg, 224)
    nl = model_cost.model_cost(dict(cfg, non_local=True, nl_type="nl"), 224)

    def block(c: int, p: int) -> int:  # theta, phi, g and W convs on all P; attention P x P/4
        ci = c // 2
        return 4 * c * ci * p + 2 * p * (p // 4) * ci

    p2, p3 = 4 * 28 * 28, 4 * 14 * 14  # res3 / res4 positions: 32 frames -> 4, 224 px -> 28, 14
    added = 2 * block(512, p2) + 3 * block(1024, p3)
    assert nl.macs - plain.macs == added == nl.nonlocal_macs


def test_seed_comparison_table(capsys):
    assert model_cost.main(["--seed_comparison"]) == 0
    out = capsys.readouterr().out
    rows = model_cost.comparison_rows()
    assert [(r["model"], r["frames"], r["views"]) for r in rows] == [
        ("NL I3D-ResNet50", 32, 30),
        ("RNL TSM-ResNet50", 8, 30),
        ("RNL TSM-ResNet50", 16, 30),
    ]
    rnl8 = model_cost.model_cost(
        dict(num_class=400, num_segments=8, modality="RGB", base_model="resnet50", dropout=0.5,
             is_shift=True, non_local=True), 256,
    )  # fmt: skip
    assert rows[1]["GFLOPs_view"] == rnl8.gflops and rows[1]["GFLOPs_video"] == 30 * rnl8.gflops
    assert rows[0]["GFLOPs_view_224"] == pytest.approx(44.34, abs=0.01)
    assert "| NL I3D-ResNet50 | 32 x 10 x 3 | 35.40 | 44.3 | 59.1 | 30 | 1773 | 74.9% |" in out
