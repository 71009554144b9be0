"""The training loop measures per-step data wait and compute (ops/engine/data_wait.py) and warns
once per epoch when it waits on data more than 10 % of the time."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ops.distributed import DistContext
from ops.engine.data_wait import StepTimer
from ops.engine.lr_scheduler import WarmupSchedule
from ops.engine.state import RunState
from ops.engine.trainer import LoopSettings, TrainParts, train_one_epoch

CPU = DistContext(False, 0, 1, 0, 1, torch.device("cpu"), None)


class _Clock:
    """A clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_step_timer_splits_wait_and_compute_by_hand():
    clock = _Clock()
    t = StepTimer(clock=clock)
    t.start()
    clock.now = 5.0  # worker start-up: kept apart
    t.got_batch()
    clock.now = 6.0
    t.step_done()
    for wait, compute in [(0.5, 1.0), (0.1, 2.0), (0.4, 1.0)]:
        clock.now += wait
        t.got_batch()
        clock.now += compute
        t.step_done()
    assert t.startup_s == 5.0 and t.steps == 3
    assert t.wait_s == pytest.approx(1.0) and t.compute_s == pytest.approx(4.0)
    # 1 s of the last 3 steps' 5 s (the first step is start-up, left out)
    assert t.wait_share == pytest.approx(1.0 / 5.0)
    assert t.warning(3, workers=4) is not None  # 20 % > 10 %
    assert "-j, now 4" in t.warning(3, workers=4) and "--device_aug" in t.warning(3, 4)


class _Items(Dataset):
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        time.sleep(self.delay)  # a slow decoder
        return torch.full((4,), float(i)), i % 2


class _Net(nn.Module):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.delay = delay

    def forward(self, x):
        time.sleep(self.delay)  # a slow device
        return self.fc(x)


def _epoch(data_delay: float, compute_delay: float, caplog) -> tuple[float, list[str]]:
    model = _Net(compute_delay)
    loader = DataLoader(_Items(data_delay), batch_size=2)
    parts = TrainParts(
        model,
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        WarmupSchedule(0.1, 1),
        LoopSettings(print_freq=100),
        CPU,
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ops.engine.trainer"):
        stats = train_one_epoch(parts, loader, RunState(), len(loader))
    return stats.data_wait_share, [
        r.getMessage() for r in caplog.records if "waited" in r.getMessage()
    ]


def test_warning_fires_on_a_slow_loader(caplog):
    # each batch takes 2 x 0.1 s to load, each step ~0 s to compute
    share, warnings = _epoch(data_delay=0.1, compute_delay=0.0, caplog=caplog)
    assert share > 0.9
    assert len(warnings) == 1  # once per epoch, not per step
    assert "epoch 1" in warnings[0] and "-j, now 0" in warnings[0]


def test_no_warning_on_a_fast_loader(caplog):
    share, warnings = _epoch(data_delay=0.0, compute_delay=0.1, caplog=caplog)
    assert share < 0.1
    assert warnings == []
