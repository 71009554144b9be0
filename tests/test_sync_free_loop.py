"""The training loop reads nothing from the device between its reading steps (issue 27, item 4).

`train_one_epoch` keeps the epoch's sums on the device and reads them only at a *reading step*:
every `--print-freq` iterations and the last (a log line), and every `FINITE_CHECK_EVERY`
iterations (the non-finite loss check). These tests prove it, and that nothing printed changed:

- on the CPU, every Python-level way of bringing a tensor's value to the host (`item`, `cpu`,
  `tolist`, `numpy`, `bool()`, `float()`, `int()`, `index()`) is wrapped with a counter while a
  tiny epoch trains (gradient accumulation, clipping, an EMA, a skipped batch, a run logger):
  0 reads in every iteration that neither prints nor checks, at most 2 at those that do;
- the figures (log lines, the `loss/step` scalar, the epoch's stats, which log.csv prints)
  equal the old per-step definition, computed here independently from the recorded losses and
  scores (`loss.item() * clips` summed in Python floats, top-k counted by ranking);
- a NaN loss between two checks is reported at the next check naming its own iteration, and an
  epoch ended by a stop request after a NaN raises instead of returning stats to be saved;
- where CUDA exists, `torch.cuda.set_sync_debug_mode("error")` over the same non-reading steps
  (skipped here: this machine has no GPU, so that part has not been run).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from ops.distributed import DistContext
from ops.engine.ema import WeightEMA
from ops.engine.lr_scheduler import WarmupSchedule
from ops.engine.state import RunState
from ops.engine.stop import StopRequest
from ops.engine.timed_save import SaveClock
from ops.engine.trainer import (
    FINITE_CHECK_EVERY,
    LoopSettings,
    NonFiniteLossError,
    TrainParts,
    train_one_epoch,
)

N, PRINT_FREQ, SKIPPED = 12, 5, 7  # iterations, --print-freq, the iteration whose batch is lost
READING = {i for i in range(N) if (i + 1) % PRINT_FREQ == 0 or i + 1 == N}  # {4, 9, 11}
READS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


def _ctx(device: str) -> DistContext:
    return DistContext(False, 0, 1, 0, 1, torch.device(device), None)


def _batches(device: str = "cpu") -> list:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(N):
        x, y = torch.randn(4, 3, 2, 2, generator=g), torch.randint(0, 7, (4,), generator=g)
        if device == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        out.append(None if i == SKIPPED else (x, y))  # None: every clip was unreadable
    return out


class Recording(nn.CrossEntropyLoss):
    """Cross-entropy that keeps each iteration's (scores, labels, loss) without reading them."""

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.nan_at = nan_at

    def forward(self, output, target):
        loss = super().forward(output, target)
        if len(self.calls) == self.nan_at:
            loss = loss * float("nan")
        self.calls.append((output.detach().clone(), target.clone(), loss.detach().clone()))
        return loss


class Log:
    """RunLogger's interface, keeping what it is given."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.scalars_at: list[tuple[dict, int]] = []

    def line(self, text: str) -> None:
        self.lines.append(text)

    def scalars(self, values: dict, step: int) -> None:
        self.scalars_at.append((values, step))


def _parts(device: str, criterion: nn.Module, stop: StopRequest | None = None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Linear(16, 7)).to(device)  # fmt: skip
    ema = WeightEMA(model, decay=0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    schedule = WarmupSchedule(lr=0.1, epochs=1, lr_type="cos", use_warmup=True, warmup_epochs=0.5)
    settings = LoopSettings(batch_multiplier=2, clip_gradient=1.0, print_freq=PRINT_FREQ)
    log = Log()
    parts = TrainParts(model, criterion.to(device), optimizer, schedule, settings, _ctx(device),
                       stop=stop, run_logger=log, after_step=ema.update)  # fmt: skip
    return parts, log


class Marked(list):
    """A loader that says which iteration the loop is in (`at[0]`) as it hands over a batch."""

    def __init__(self, batches, at: list, on_batch=None) -> None:
        super().__init__(batches)
        self.at, self.on_batch = at, on_batch

    def __iter__(self):
        for i, batch in enumerate(list.__iter__(self)):
            self.at[0] = i
            if self.on_batch is not None:
                self.on_batch(i)
            yield batch


def _counted_epoch(monkeypatch, criterion: nn.Module):
    """Train one epoch on the CPU with every host read counted per iteration."""
    parts, log = _parts("cpu", criterion)
    at = [-1]
    counts: dict[int, list[str]] = {}
    for name in READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            counts.setdefault(at[0], []).append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    loader = Marked(_batches(), at)
    stats = train_one_epoch(parts, loader, RunState(), iters_per_epoch=N)
    monkeypatch.undo()
    return stats, counts, log


def test_only_reading_steps_read_from_the_device(monkeypatch):
    assert FINITE_CHECK_EVERY > N  # so the reading steps here are the print steps
    stats, counts, _ = _counted_epoch(monkeypatch, nn.CrossEntropyLoss())
    assert stats.clips == 4 * (N - 1) and stats.skipped_batches == 1
    quiet = {i: counts.get(i, []) for i in range(-1, N) if i not in READING}
    assert all(not reads for reads in quiet.values()), quiet
    for i in READING:  # one copy of the sums (tolist); the last one also ends the epoch
        assert 1 <= len(counts.get(i, [])) <= 2, (i, counts.get(i))


def _old_topk(scores: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """Rows whose label is among the k highest scores: fewer than k scores beat the label's."""
    mine = scores.gather(1, labels.view(-1, 1))
    return int(((scores > mine).sum(dim=1) < k).sum())


def test_printed_and_returned_figures_equal_the_per_step_definition(monkeypatch):
    criterion = Recording()
    stats, _, log = _counted_epoch(monkeypatch, criterion)
    # The old loop, from the recorded iterations: per step loss.item() * clips added to a Python
    # float, hit counts added as ints; a line at every print step and the last.
    ran = [i for i in range(N) if i != SKIPPED]
    assert len(criterion.calls) == len(ran)
    loss_sum, c1, c5, clips = 0.0, 0, 0, 0
    expected_lines, expected_step_losses = [], []
    for i, (scores, labels, loss) in zip(ran, criterion.calls, strict=True):
        b = labels.numel()
        loss_sum += loss.item() * b
        c1 += _old_topk(scores, labels, 1)
        c5 += _old_topk(scores, labels, 5)
        clips += b
        if i in READING:
            expected_lines.append(
                f"Epoch: [1][{i + 1}/{N}], lr: "  # the lr: checked apart below
                + f"\tLoss {loss_sum / clips:.4f}\tPrec@1 {100.0 * c1 / clips:.3f}\t"
                f"Prec@5 {100.0 * c5 / clips:.3f}\t"
            )
            expected_step_losses.append((loss.item() * b / b, i + 1))
    got = [line.split(", lr: ")[0] + ", lr: \t" + line.split("\t", 1)[1] for line in log.lines]
    assert [g.split("clips/s")[0] for g in got] == expected_lines
    assert [(s["loss/step"], step) for s, step in log.scalars_at] == expected_step_losses
    assert (stats.loss, stats.top1, stats.top5, stats.clips) == (
        loss_sum / clips,
        100.0 * c1 / clips,
        100.0 * c5 / clips,
        clips,
    )
    # the printed LR is the step's base LR (a cosine after a warm-up: changes every step)
    assert [float(line.split(", lr: ")[1].split("\t")[0]) for line in log.lines] == [
        round(s["lr/step"], 5) for s, _ in log.scalars_at
    ]


def test_a_nan_between_checks_is_reported_at_the_next_one_naming_its_iteration(monkeypatch):
    parts, _ = _parts("cpu", Recording(nan_at=2))  # the 3rd loss: iteration 3
    at = [-1]
    with pytest.raises(NonFiniteLossError, match=r"loss became NaN at epoch 1, iteration 3/12"):
        train_one_epoch(parts, Marked(_batches(), at), RunState(), iters_per_epoch=N)
    assert at[0] == min(READING)  # raised at the first reading step after it (iteration 5)

    # after the last print step: the epoch's end reads it before returning anything
    parts, _ = _parts("cpu", Recording(nan_at=9))  # iteration 11 (iteration 8 was skipped)
    with pytest.raises(NonFiniteLossError, match=r"iteration 11/12"):
        train_one_epoch(parts, Marked(_batches(), at), RunState(), iters_per_epoch=N)


def test_a_stop_after_a_nan_raises_instead_of_returning_stats_to_save():
    # A stop request ends the epoch at a group boundary (iteration 7 here) and main.py saves
    # the position: a NaN at iteration 6 (not yet read) must end the run instead.
    stop = StopRequest()
    parts, _ = _parts("cpu", Recording(nan_at=5), stop=stop)

    def ask_to_stop(i: int) -> None:
        stop.requested = i >= 6

    loader = Marked(_batches(), [-1], on_batch=ask_to_stop)
    with pytest.raises(NonFiniteLossError, match=r"iteration 6/12"):
        train_one_epoch(parts, loader, RunState(), iters_per_epoch=N)
    # without the NaN the same stop returns the position to save
    stop = StopRequest()
    parts, _ = _parts("cpu", Recording(), stop=stop)
    loader = Marked(_batches(), [-1], on_batch=ask_to_stop)
    assert train_one_epoch(parts, loader, RunState(), iters_per_epoch=N).stopped_at == 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (not run on this machine)")
def test_cuda_sync_debug_mode_finds_no_synchronisation_between_reading_steps():
    # The first iteration warms CUDA up (handles, allocator) and is left out, as are the
    # reading steps, which synchronise by design.
    parts, _ = _parts("cuda", nn.CrossEntropyLoss())

    def mode(i: int) -> None:
        quiet = i > 0 and i not in READING and i - 1 not in READING
        torch.cuda.set_sync_debug_mode("error" if quiet else "default")

    try:
        loader = Marked(_batches("cuda"), [-1], on_batch=mode)
        stats = train_one_epoch(parts, loader, RunState(), iters_per_epoch=N)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert stats.clips == 4 * (N - 1)


def test_a_timed_save_after_a_nan_raises_before_the_weights_are_saved():
    # --save_every saves the position before an iteration (main.py's run.save): a NaN at
    # iteration 6, not yet read (the next reading step is later), must raise before that save.
    saved: list[int] = []
    clock = SaveClock(1e-9, is_main=True)  # due at every iteration
    parts = dataclasses.replace(_parts("cpu", Recording(nan_at=5))[0], save_clock=clock)
    with pytest.raises(NonFiniteLossError, match=r"iteration 6/12"):
        train_one_epoch(parts, _batches(), RunState(), iters_per_epoch=N, save_at=saved.append)
    assert saved == [2, 4]  # group starts before the NaN; the one at 6 raised instead
    # without the NaN the same clock saves at every group start but the first
    saved.clear()
    clock = SaveClock(1e-9, is_main=True)
    parts = dataclasses.replace(_parts("cpu", Recording())[0], save_clock=clock)
    train_one_epoch(parts, _batches(), RunState(), iters_per_epoch=N, save_at=saved.append)
    assert saved == list(range(2, N, 2))
