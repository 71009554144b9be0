"""The per-iteration LR schedule against hand-computed values (SPEC.md section 7)."""

import pytest
import torch

from ops.engine.lr_scheduler import WarmupSchedule


def kinetics_recipe() -> WarmupSchedule:
    # The published Kinetics command: --lr 0.02 --wd 2e-4 --use_warmup --warmup_epochs 5
    # --lr_type cos --epochs 100.
    return WarmupSchedule(
        lr=0.02, epochs=100, lr_type="cos", use_warmup=True, warmup_epochs=5, weight_decay=2e-4
    )


@pytest.mark.parametrize(
    "epoch, expected",
    [
        (0.0, 0.002),  # warmup starts at lr / 10
        (2.5, 0.011),  # half-way: 0.002 + 0.5 * (0.02 - 0.002)
        (4.9, 0.002 + 0.98 * 0.018),
        (5.0, 0.02),  # cosine starts at the full lr
        (52.5, 0.01),  # (52.5 - 5) / 95 = 0.5: cos(pi/2) = 0, half the lr
        (100.0, 0.0),
    ],
)
def test_warmup_then_cosine(epoch, expected):
    assert kinetics_recipe().lr_at(epoch) == pytest.approx(expected, abs=1e-12)


def test_cosine_without_warmup_ignores_warmup_epochs():
    s = WarmupSchedule(lr=0.1, epochs=10, lr_type="cos", use_warmup=False, warmup_epochs=5)
    assert s.lr_at(0.0) == pytest.approx(0.1)
    # 0.5 * 0.1 * (1 + cos(pi / 4)) with cos(pi / 4) = sqrt(2) / 2
    assert s.lr_at(2.5) == pytest.approx(0.05 * (1 + 2**0.5 / 2))


@pytest.mark.parametrize(
    "epoch, expected",
    [(0.0, 0.1), (19.99, 0.1), (20.0, 0.01), (39.5, 0.01), (40.0, 0.001), (49.0, 0.001)],
)
def test_step_decay(epoch, expected):
    s = WarmupSchedule(lr=0.1, epochs=50, lr_type="step", lr_steps=[20, 40])
    assert s.lr_at(epoch) == pytest.approx(expected)


def test_step_with_warmup():
    s = WarmupSchedule(lr=0.1, epochs=50, lr_steps=[20, 40], use_warmup=True, warmup_epochs=1)
    assert s.lr_at(0.5) == pytest.approx(0.01 + 0.5 * 0.09)
    assert s.lr_at(1.0) == pytest.approx(0.1)
    assert s.lr_at(25.0) == pytest.approx(0.01)


def test_per_iteration_values_within_an_epoch():
    # Something-V1 command: warmup 1 epoch of 4 iterations, lr 0.02.
    s = WarmupSchedule(lr=0.02, epochs=50, lr_type="cos", use_warmup=True, warmup_epochs=1)
    got = [s.lr_at(0 + i / 4) for i in range(4)]
    assert got == pytest.approx([0.002, 0.0065, 0.011, 0.0155])


def test_apply_uses_group_multipliers():
    w = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(2))
    fc = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD(
        [
            {"params": [w], "lr_mult": 1, "decay_mult": 1, "name": "weight"},
            {"params": [b], "lr_mult": 2, "decay_mult": 0, "name": "bias"},
            {"params": [fc], "lr_mult": 5, "decay_mult": 1, "name": "lr5_weight"},
        ],
        lr=1.0,
        momentum=0.9,
        weight_decay=0.0,
    )
    base = kinetics_recipe().apply(opt, 2.5)
    assert base == pytest.approx(0.011)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.011, 0.022, 0.055])
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([2e-4, 0.0, 2e-4])


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="lr_type"):
        WarmupSchedule(lr=0.1, epochs=10, lr_type="linear")
    with pytest.raises(ValueError, match="warmup_epochs"):
        WarmupSchedule(lr=0.1, epochs=5, use_warmup=True, warmup_epochs=5)
