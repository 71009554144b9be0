"""One training epoch and one validation pass, as main.py runs them (every rank calls both).

Training follows the published recipe: gradients are accumulated over `batch_multiplier`
iterations (DDP gradient sync only on the last one, via `no_sync`), each loss divided by the
number of iterations in its group, the gradient norm clipped at `--gd`, and the LR set per
iteration by the schedule at the position of the optimizer step. A group whose last iteration
was skipped (too few readable clips) has its gradients, accumulated under `no_sync`, averaged over
the ranks by hand before the step, as DDP would have; a group whose iterations were all skipped
makes no optimizer step at all (nor any GradScaler call: fp16's scaler has nothing to unscale).

Every rank takes part in one tiny all-reduce per iteration, so all ranks always take the same
decisions: before the forward, "has anyone been asked to stop (SIGTERM / Ctrl-C)?", "is
anyone's batch too small?" and "is a --save_every checkpoint due by rank 0's clock?" (`_agree`;
in a single process these are host flags, nothing else).
A stop request ends the epoch at the next optimizer-step boundary (so a checkpoint written then is
exactly resumable).

No host-device synchronisation per step: the loss and accuracy sums, and "was any loss NaN or
Inf, first at which iteration?", are kept on the device (`EpochMeter.add`) and read with one copy,
summed over the ranks, only at a *reading step*: every `print_freq` iterations and the last (a
log line), every `FINITE_CHECK_EVERY` (20) iterations, and when the epoch ends (a stop included).
The sums are float64 and add the same values in the same order as the host's Python floats did,
so every printed and logged figure is as before (with several ranks the sums are added per rank
first, then over the ranks: a difference in the last bits at most). A non-finite loss raises
`NonFiniteLossError` at the next reading step, naming the epoch and the first bad iteration; the
optimizer steps since the previous reading may have used it, but the error comes before
`train_one_epoch` returns, so nothing is saved from those weights (a mid-epoch save must call
`EpochMeter.read` first; state.py also refuses non-finite weights). Between reading steps the
progress bar advances but keeps the last figures, and the timer's figures are host times
(ops/engine/data_wait.py). What still reads per step: torch's GradScaler (`--amp fp16`) checks
its inf flag at every optimizer step, and under NCCL `_agree`'s all-reduce goes through the
device. tests/test_sync_free_loop.py counts the reads.

Validation asks the same stop question before every batch (while every rank still has one), so
a stop during validation is honoured within a batch (`stop_agreed`).

Every pass hands its batches to the model through `model_batch` (ops.utils.to_device: the
transfer, the uint8 normalisation and --device_aug's decoding and augmentation), and its loader
comes from `make_loader` (ops/engine/loaders.py): training, validation, precise BN and the
demo's evaluation see their data the same way. What the loop needs comes grouped:
`LoopSettings` (how it steps, fixed for a run), `TrainParts` (what it acts on: model, loss,
optimizer, schedule, ...) and the run's position (`ops.engine.state.RunState`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ops.device_input import InputNorm
from ops.distributed import DistContext, all_reduce_min, all_reduce_sum, average_gradients
from ops.engine.data_wait import StepTimer
from ops.engine.lr_scheduler import WarmupSchedule
from ops.engine.run_logger import RunLogger
from ops.engine.state import RunState
from ops.engine.stop import StopRequest, stop_signals_blocked
from ops.engine.timed_save import SaveClock
from ops.utils import autocast, progress, to_device, topk_hits

if TYPE_CHECKING:
    from ops.engine.config import RunConfig

logger = logging.getLogger(__name__)


class NonFiniteLossError(Exception):
    """The training loss became NaN or Inf; the message names the epoch and step."""


@dataclass(frozen=True)
class LoopSettings:
    """How the loops step, fixed for a run."""

    batch_multiplier: int = 1  # iterations whose gradients are accumulated per optimizer step
    clip_gradient: float | None = None  # gradient-norm clipping (--gd), None: off
    amp: str = "off"  # autocast: off | fp16 | bf16
    channels_last: bool = False
    print_freq: int = 20  # iterations between progress lines
    min_batch: int = 1  # fewer readable clips in a batch: skipped on all ranks (BatchNorm1d: 2)
    input_norm: InputNorm | None = None  # the model's normalisation of uint8 clips (on the device)

    @classmethod
    def of(cls, cfg: RunConfig, min_batch: int, input_norm: InputNorm | None) -> LoopSettings:
        """The settings of a run, with the model's `min_batch` and `input_norm`."""
        return cls(
            batch_multiplier=cfg.optim.batch_multiplier,
            clip_gradient=cfg.optim.clip_gradient,
            amp=cfg.loop.amp,
            channels_last=cfg.loop.channels_last,
            print_freq=cfg.loop.print_freq,
            min_batch=min_batch,
            input_norm=input_norm,
        )


@dataclass(frozen=True)
class TrainParts:
    """What a training epoch acts on, built once by main.py."""

    model: nn.Module  # the model that trains: the DDP (and/or compile) wrapper when there is one
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: WarmupSchedule
    settings: LoopSettings
    ctx: DistContext
    scaler: torch.amp.GradScaler | None = None  # --amp fp16
    stop: StopRequest | None = None
    run_logger: RunLogger | None = None
    # --mixup / --cutmix: (data, target) -> (mixed data, soft targets for the loss, the dominant
    # labels the accuracy is counted against); None: the loss and accuracy see the labels.
    mix: Callable | None = None
    # --ema: called after each optimizer step (ops/engine/ema.py)
    after_step: Callable[[], None] | None = None
    # --save_every: rank 0's clock (ops/engine/timed_save.py); None: no timed saves
    save_clock: SaveClock | None = None


@dataclass
class EpochStats:
    """What one pass over a loader measured (averages over all ranks' clips)."""

    loss: float = 0.0
    top1: float = 0.0
    top5: float = 0.0
    clips: int = 0
    seconds: float = 0.0
    lr: float = 0.0
    skipped_batches: int = 0
    data_wait_share: float = 0.0  # training: share of the steps' time spent waiting for data
    # training: the iteration to resume from when a stop request ended the epoch;
    # validation: the batch before which a stop request ended it (the result is then partial)
    stopped_at: int | None = None

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0

    def metrics(self) -> tuple[float, float, float]:
        """(top-1, top-5, loss), as the published logs print them."""
        return self.top1, self.top5, self.loss


# --------------------------------------------------------------------------------------------
# Batches and stops, shared by every pass
# --------------------------------------------------------------------------------------------


def model_batch(
    batch: tuple, ctx: DistContext, settings: LoopSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(data, target)` of a loader's batch on the device, as the model takes them: moved,
    normalised from uint8 and, for --device_aug's encoded clips, decoded and augmented there
    (ops.utils.to_device), channels-last with --channels_last."""
    data, target = batch[0], batch[1]
    data = to_device(data, ctx.device, settings.channels_last, settings.input_norm)
    return data, target.to(ctx.device, non_blocking=True)


def batch_size_of(batch: tuple | None) -> int:
    """Clips in a loader's batch (0 for None: every video of the batch was unreadable)."""
    return 0 if batch is None else len(batch[1])


def stop_agreed(stop: StopRequest | None, ctx: DistContext) -> bool:
    """Whether any rank has been asked to stop (every rank calls this: a collective)."""
    if not ctx.distributed:  # a host flag: no tensor, nothing read
        return stop is not None and stop.requested
    asked = torch.tensor([float(stop is not None and stop.requested)], dtype=torch.float64)
    return bool(all_reduce_sum(asked, ctx)[0] > 0)


def _agree(parts: TrainParts, batch: tuple | None) -> tuple[bool, bool, bool]:
    """(has any rank been asked to stop, is any rank's batch too small, is a timed save due by
    rank 0's clock): one all-reduce."""
    stop = parts.stop is not None and parts.stop.requested
    small = batch_size_of(batch) < parts.settings.min_batch
    due = parts.save_clock is not None and parts.save_clock.due()  # False on ranks other than 0
    if not parts.ctx.distributed:  # host flags: no tensor, nothing read
        return stop, small, due
    local = torch.tensor([float(stop), float(small), float(due)], dtype=torch.float64)
    flags = all_reduce_sum(local, parts.ctx)
    return bool(flags[0] > 0), bool(flags[1] > 0), bool(flags[2] > 0)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """The gradient-accumulation group of iteration `i`: iterations [start, end) of the epoch,
    of which `size` run in this process (after a resume the first group may start part-way)."""

    start: int
    end: int
    size: int

    @classmethod
    def of(cls, i: int, multiplier: int, n: int, first: int) -> Group:
        start = (i // multiplier) * multiplier
        end = min(start + multiplier, n)
        return cls(start, end, end - max(start, first))

    def last(self, i: int) -> bool:
        return i == self.end - 1


def train_one_epoch(
    parts: TrainParts,
    loader: Iterable,
    state: RunState,
    iters_per_epoch: int,
    save_at: Callable[[int], object] | None = None,
) -> EpochStats:
    """Train epoch `state.epoch` (from 0) over `loader`, which yields its iterations
    `state.iteration .. iters_per_epoch - 1` (more than 0 after a mid-epoch resume).

    `save_at(i)`: save the position before iteration `i` (every rank calls it at the same `i`),
    called when `parts.save_clock` says a save is due (--save_every), at the next optimizer-step
    boundary past the epoch's first iteration.

    Batches with fewer than `settings.min_batch` clips (after the data layer dropped unreadable
    videos) are skipped on all ranks. Returns the epoch's stats; `stopped_at` is set when a stop
    request ended it early.
    """
    settings, n, first = parts.settings, iters_per_epoch, state.iteration
    parts.model.train()
    meter = EpochMeter(parts, state.epoch, first, n)
    unsynced = parts.ctx.distributed and hasattr(parts.model, "no_sync")
    ran = 0  # iterations of the current gradient-accumulation group that ran forward + backward
    parts.optimizer.zero_grad(set_to_none=True)
    meter.timer.start()
    with stop_signals_blocked(loader):  # loader workers start here (see ops/engine/stop.py)
        batches = iter(loader)
    for i, batch in enumerate(batches, start=first):
        meter.timer.got_batch()
        group = Group.of(i, settings.batch_multiplier, n, first)
        stop, too_small, save = _agree(parts, batch)
        if stop and i == group.start:  # only at a group boundary: exactly resumable
            meter.stopped_at = i
            break
        if save and save_at is not None and i == group.start and i > first:
            if not meter.fresh:  # a NaN since the last reading raises here, before it is saved
                meter.read()
            save_at(i)  # the stop's exact position, saved by the clock; training goes on
            if parts.save_clock is not None:
                parts.save_clock.reset()
        if too_small:  # some rank lost (nearly) all its clips: all skip it together, counted
            meter.skipped += 1
            if group.last(i):
                meter.stepped(finish_group(parts, state.epoch + i / n, ran, unsynced))
                ran = 0
            meter.timer.step_done()
            continue
        loss, output, acc_target = forward_backward(parts, batch, group, last=group.last(i))
        ran += 1
        meter.add(i, loss, output, acc_target)
        if group.last(i):  # DDP has just all-reduced the whole group's gradients
            meter.stepped(finish_group(parts, state.epoch + i / n, ran, False))
            ran = 0
        meter.timer.step_done()  # host time: the device may still be computing (nothing read)
        meter.show(i)
    return meter.finish(getattr(loader, "num_workers", 0))


def forward_backward(
    parts: TrainParts, batch: tuple, group: Group, last: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One iteration's forward and backward (its loss divided by the group's size; DDP's
    gradient sync only on the group's last iteration). Returns (loss, output, the labels the
    accuracy counts)."""
    data, target = model_batch(batch, parts.ctx, parts.settings)
    loss_target = acc_target = target
    if parts.mix is not None:
        data, loss_target, acc_target = parts.mix(data, target)
    model = parts.model
    distributed = parts.ctx.distributed and hasattr(model, "no_sync")
    sync = contextlib.nullcontext() if (last or not distributed) else model.no_sync()
    with sync:
        with autocast(parts.ctx.device, parts.settings.amp):
            output = model(data)  # [B, K]
            loss = parts.criterion(output, loss_target)
        scaled = loss / group.size
        (parts.scaler.scale(scaled) if parts.scaler is not None else scaled).backward()
    return loss, output, acc_target


def finish_group(parts: TrainParts, epoch_float: float, ran: int, unsynced: bool) -> float | None:
    """End a gradient-accumulation group: the optimizer step, unless none of its iterations ran
    (then there are no gradients, and fp16's GradScaler would fail on a step without any).
    `unsynced`: the gradients were accumulated under DDP's no_sync and never all-reduced (the
    group's last iteration, which would have synchronised them, was skipped), so average them
    over the ranks first. Returns the base LR of the step, None when there was none."""
    if ran == 0:
        parts.optimizer.zero_grad(set_to_none=True)
        return None
    params = [p for p in parts.model.parameters() if p.requires_grad]
    if unsynced:
        average_gradients(params, parts.ctx)
    return optimizer_step(parts, params, epoch_float)


def optimizer_step(parts: TrainParts, params: list[torch.Tensor], epoch_float: float) -> float:
    """Clip, set the LR for this position, step, zero the gradients; returns the base LR."""
    optimizer, scaler = parts.optimizer, parts.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    if parts.settings.clip_gradient is not None:
        nn.utils.clip_grad_norm_(params, parts.settings.clip_gradient)
    lr = parts.schedule.apply(optimizer, epoch_float)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if parts.after_step is not None:
        parts.after_step()
    return lr


FINITE_CHECK_EVERY = 20  # iterations between the checks of the loss (and at print steps, the end)


class EpochMeter:
    """One training epoch's running sums over all ranks, its progress bar, log lines and
    scalars, and its data-wait timer (ops/engine/data_wait.py).

    The sums stay on the device (float64: the same additions, in the same order, as the host's
    Python floats did) and are read, with one copy, only at a *reading step*: a print step
    (every `print_freq` iterations and the last), every `FINITE_CHECK_EVERY` iterations, and when
    the epoch ends (`finish`, a stop included). Reading also checks the loss: a NaN / Inf loss on
    any rank since the last reading raises `NonFiniteLossError` naming the first such iteration."""

    def __init__(self, parts: TrainParts, epoch: int, first: int, n: int) -> None:
        self.parts, self.epoch, self.n = parts, epoch, n
        device = parts.ctx.device
        # on the device, this rank's: (loss x clips, top-1 hits, top-5 hits) summed over the
        # epoch; the last step's loss x clips; (iteration, is NaN) of the first non-finite loss
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.last_loss = torch.zeros(1, dtype=torch.float64, device=device)
        self.first_bad = torch.full((2,), -1.0, dtype=torch.float64, device=device)
        self.local_clips = self.last_clips = 0  # this rank's, known on the host
        self.fresh = True  # nothing added since the last reading
        self.i = first
        # as of the last reading, summed over the ranks
        self.loss_sum = self.correct1 = self.correct5 = 0.0
        self.clips = self.skipped = 0
        self.last = (0.0, 0)  # the last step's (loss x clips, clips)
        self.lr: float = parts.schedule.lr_at(epoch + first / n)
        self.stopped_at: int | None = None
        self.timer = StepTimer()
        self.start = time.perf_counter()
        self.bar = progress(
            total=n, initial=first, desc=f"epoch {epoch + 1}", enabled=parts.ctx.is_main
        )

    def stepped(self, lr: float | None) -> None:
        """An optimizer step ran at base LR `lr` (None: the group made none)."""
        self.lr = self.lr if lr is None else lr

    def reading_step(self, i: int) -> bool:
        """Whether the sums are read after iteration `i` (a print or a check step)."""
        done = i + 1
        return (
            done % self.parts.settings.print_freq == 0
            or done == self.n
            or (done % FINITE_CHECK_EVERY == 0)
        )

    def add(self, i: int, loss: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> None:
        """Count one iteration on the device (nothing is read), then, at a reading step, read
        the sums (`read`: a NaN / Inf loss raises before the group's optimizer step)."""
        b = target.size(0)
        value = loss.detach().to(torch.float64)
        finite = torch.isfinite(value)
        summed = torch.where(finite, value * b, 0.0).view(1)
        hits = topk_hits(output.detach().float(), target).to(torch.float64)
        self.sums += torch.cat([summed, hits])
        self.last_loss = summed
        newly_bad = (self.first_bad[0] < 0) & ~finite
        seen = torch.stack([value.new_full((), float(i)), value.isnan().to(torch.float64)])
        self.first_bad = torch.where(newly_bad, seen, self.first_bad)
        self.local_clips += b
        self.last_clips = b
        self.i, self.fresh = i, False
        if self.reading_step(i):
            self.read()

    def read(self) -> None:
        """Bring the sums to the host (one copy; summed over the ranks: one all-reduce) and
        check the loss: `NonFiniteLossError` when any rank saw a NaN / Inf since the epoch began
        (every rank calls this at the same iterations: a collective)."""
        loss_sum, c1, c5, last, bad_at, bad_nan = torch.cat(
            [self.sums, self.last_loss, self.first_bad]
        ).tolist()
        totals = [loss_sum, c1, c5, self.local_clips, last, self.last_clips, float(bad_at >= 0)]
        ctx = self.parts.ctx
        if ctx.distributed:
            totals = all_reduce_sum(torch.tensor(totals, dtype=torch.float64), ctx).tolist()
        self.fresh = True
        if totals[6] > 0:
            first = all_reduce_min(int(bad_at) if bad_at >= 0 else self.n, ctx)
            what = "NaN" if bad_nan > 0 and int(bad_at) == first else "non-finite"
            raise NonFiniteLossError(
                f"loss became {what} at epoch {self.epoch + 1}, iteration {first + 1}/{self.n} "
                f"(on {int(totals[6])} rank(s)); no checkpoint was written over the last good "
                "one: lower --lr, set --gd, or check the data"
            )
        self.loss_sum, self.correct1, self.correct5 = totals[0], totals[1], totals[2]
        self.clips = int(totals[3])
        self.last = (totals[4], int(totals[5]))

    def averages(self) -> tuple[float, float, float]:
        """(loss, top-1, top-5) so far."""
        n = max(self.clips, 1)
        return self.loss_sum / n, 100.0 * self.correct1 / n, 100.0 * self.correct5 / n

    def show(self, i: int) -> None:
        """The bar after iteration `i`; at a reading step its figures, and every `print_freq`
        iterations (and the last) a log line (without a bar) and the step's scalars."""
        self.bar.update(1)
        if not self.reading_step(i):  # the bar's figures wait for the next reading
            return
        elapsed = time.perf_counter() - self.start
        loss, top1, top5 = self.averages()
        self.bar.set_postfix(
            loss=f"{loss:.4f}",
            top1=f"{top1:.1f}",
            clips_s=f"{self.clips / elapsed:.1f}",
            data=f"{100 * self.timer.wait_share:.0f}%",
            lr=f"{self.lr:.2e}",
        )
        if (i + 1) % self.parts.settings.print_freq and i + 1 != self.n:
            return
        line = (
            f"Epoch: [{self.epoch + 1}][{i + 1}/{self.n}], lr: {self.lr:.5f}\tLoss {loss:.4f}\t"
            f"Prec@1 {top1:.3f}\tPrec@5 {top5:.3f}\t"
            f"clips/s {self.clips / elapsed:.1f}\t{self.timer.summary()}"
        )
        if self.parts.ctx.is_main and self.bar.disable:
            logger.info(line)
        log = self.parts.run_logger
        if log is not None:
            log.line(line)
            scalars = {
                "loss/step": self.last[0] / max(self.last[1], 1),
                "lr/step": self.lr,
                "time/data_wait_s": self.timer.last_wait_s,
                "time/compute_s": self.timer.last_compute_s,
                "time/data_wait_share": self.timer.wait_share,
            }
            log.scalars(scalars, self.epoch * self.n + i + 1)

    def finish(self, workers: int) -> EpochStats:
        """Close the bar, warn about a loader that could not keep up and about skipped
        iterations, and return the epoch's stats (read and checked: a NaN / Inf loss since the
        last reading raises `NonFiniteLossError` here, before anything can be saved)."""
        self.bar.close()
        if not self.fresh:
            self.read()
        warning = self.timer.warning(self.epoch + 1, workers)
        if warning is not None and self.parts.ctx.is_main:
            logger.warning(warning)
            if self.parts.run_logger is not None:
                self.parts.run_logger.line(f"WARNING: {warning}")
        if self.skipped:
            logger.warning(
                "epoch %d: %d iteration(s) skipped: a batch had too few readable clips",
                self.epoch + 1,
                self.skipped,
            )
        loss, top1, top5 = self.averages()
        return EpochStats(
            loss=loss,
            top1=top1,
            top5=top5,
            clips=self.clips,
            seconds=time.perf_counter() - self.start,
            lr=self.lr,
            skipped_batches=self.skipped,
            data_wait_share=self.timer.wait_share,
            stopped_at=self.stopped_at,
        )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Iterable,
    criterion: nn.Module,
    settings: LoopSettings,
    ctx: DistContext,
    desc: str = "val",
    stop: StopRequest | None = None,
    outputs: list | None = None,
) -> EpochStats:
    """Loss and top-1/top-5 of `model` (unwrapped, eval mode) over every rank's shard of `loader`.

    With `stop`, the ranks agree before each batch whether a stop was requested (while every
    rank still has batches: shards may differ by one) and end early together; the result then
    has `stopped_at` set and covers only the batches before it. `outputs`: a list that receives
    each batch's `(scores [B, K] float32, labels [B])` on the CPU (the demo's evaluation).
    """
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # loss x clips, top-1, top-5
    clips = 0
    kept = []  # (scores, labels) on the device, copied to the host at the end
    stopped_at = None
    polls = all_reduce_min(len(loader), ctx) if stop is not None else 0
    bar = progress(total=len(loader), desc=desc, enabled=ctx.is_main)
    start_time = time.perf_counter()
    with stop_signals_blocked(loader):  # loader workers start here (see ops/engine/stop.py)
        batches = iter(loader)
    for index, batch in enumerate(batches):
        if index < polls and stop_agreed(stop, ctx):
            stopped_at = index
            break
        if batch is None:  # every clip of the batch was unreadable (counted by the data layer)
            bar.update(1)
            continue
        data, target = model_batch(batch, ctx, settings)
        with autocast(ctx.device, settings.amp):
            output = model(data)  # [B, K]
            loss = criterion(output, target)
        summed = (loss.to(torch.float64) * target.size(0)).view(1)
        sums += torch.cat([summed, topk_hits(output.float(), target).to(torch.float64)])
        clips += target.size(0)
        if outputs is not None:
            kept.append((output.float(), target))
        bar.update(1)
    bar.close()
    loss_sum, correct1, correct5 = sums.tolist()  # the pass's one read
    if outputs is not None:
        outputs.extend((scores.cpu(), labels.cpu()) for scores, labels in kept)
    totals = all_reduce_sum(
        torch.tensor([loss_sum, correct1, correct5, clips], dtype=torch.float64), ctx
    )
    n = max(int(totals[3]), 1)
    return EpochStats(
        loss=float(totals[0]) / n,
        top1=100.0 * float(totals[1]) / n,
        top5=100.0 * float(totals[2]) / n,
        clips=int(totals[3]),
        seconds=time.perf_counter() - start_time,
        stopped_at=stopped_at,
    )
