"""One training epoch and one validation pass, as main.py runs them (every rank calls both).

Training follows the published recipe: gradients are accumulated over `batch_multiplier`
iterations (DDP gradient sync only on the last one, via `no_sync`), each loss divided by the
number of iterations in its group, the gradient norm clipped at `--gd`, and the LR set per
iteration by the schedule at the position of the optimizer step. A group whose last iteration
was skipped (too few readable clips) has its gradients, accumulated under `no_sync`, averaged over
the ranks by hand before the step, as DDP would have; a group whose iterations were all skipped
makes no optimizer step at all (nor any GradScaler call: fp16's scaler has nothing to unscale).

Every rank takes part in two tiny all-reduces per iteration, so all ranks always take the same
decisions: before the forward, "has anyone been asked to stop (SIGTERM / Ctrl-C)?" and "is
anyone's batch empty?"; after the backward, the summed loss / accuracy counts and "was any loss
NaN or Inf?". A stop request ends the epoch at the next optimizer-step boundary (so a checkpoint
written then is exactly resumable); a non-finite loss raises `NonFiniteLossError` before the
optimizer step, so the weights are never updated with it. Validation asks the same stop question
before every batch (while every rank still has one), so a stop during validation is honoured
within a batch.

What the loop needs comes grouped: `LoopSettings` (how it steps, from the command line),
`TrainParts` (what it acts on: model, loss, optimizer, schedule, ...) and the run's position
(`ops.checkpoint.RunState`). The batch reaches the device in `ops.utils.to_device` and the
forward runs under `ops.utils.autocast`, both shared with evaluation.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.utils.data import DataLoader

from ops.checkpoint import RunState
from ops.device_input import InputNorm
from ops.distributed import DistContext, all_reduce_min, all_reduce_sum, average_gradients
from ops.engine.data_wait import StepTimer
from ops.engine.lr_scheduler import WarmupSchedule
from ops.engine.run_logger import RunLogger
from ops.engine.stop import StopRequest, stop_signals_blocked
from ops.utils import autocast, progress, to_device, topk_correct

logger = logging.getLogger(__name__)


class NonFiniteLossError(Exception):
    """The training loss became NaN or Inf; the message names the epoch and step."""


@dataclass(frozen=True)
class LoopSettings:
    """How the loops step, fixed for a run (from the command line)."""

    batch_multiplier: int = 1  # iterations whose gradients are accumulated per optimizer step
    clip_gradient: float | None = None  # gradient-norm clipping (--gd), None: off
    amp: str = "off"  # autocast: off | fp16 | bf16
    channels_last: bool = False
    print_freq: int = 20  # iterations between progress lines
    min_batch: int = 1  # fewer readable clips in a batch: skipped on all ranks (BatchNorm1d: 2)
    input_norm: InputNorm | None = None  # the model's normalisation of uint8 clips (on the device)

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, min_batch: int = 1, input_norm: InputNorm | None = None
    ) -> LoopSettings:
        """The settings of main.py's flags, which have the names of the fields (--gd is
        clip_gradient), and the model's `min_batch` and `input_norm`."""
        flags = [f.name for f in fields(cls) if f.name not in ("min_batch", "input_norm")]
        return cls(
            **{name: getattr(args, name) for name in flags},
            min_batch=min_batch,
            input_norm=input_norm,
        )


@dataclass
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


def train_one_epoch(
    parts: TrainParts, loader: DataLoader, state: RunState, iters_per_epoch: int
) -> EpochStats:
    """Train epoch `state.epoch` (from 0) over `loader`, which yields its iterations
    `state.iteration .. iters_per_epoch - 1` (more than 0 after a mid-epoch resume).

    Batches with fewer than `settings.min_batch` clips (after the data layer dropped unreadable
    videos) are skipped on all ranks. Returns the epoch's stats; `stopped_at` is set when a stop
    request ended it early.
    """
    model, settings, ctx = parts.model, parts.settings, parts.ctx
    epoch, start_iter, n = state.epoch, state.iteration, iters_per_epoch
    model.train()
    distributed = ctx.distributed and hasattr(model, "no_sync")
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum = correct1 = correct5 = 0.0
    clips = 0
    skipped = 0
    ran = 0  # iterations of the current gradient-accumulation group that ran forward + backward
    lr: float = parts.schedule.lr_at(epoch + start_iter / n)
    stats = EpochStats()
    bar = progress(total=n, initial=start_iter, desc=f"epoch {epoch + 1}", enabled=ctx.is_main)
    start_time = time.perf_counter()
    parts.optimizer.zero_grad(set_to_none=True)
    timer = StepTimer()  # data wait vs compute, per step (ops/engine/data_wait.py)
    timer.start()
    with stop_signals_blocked(loader):  # loader workers start here (see ops/engine/stop.py)
        batches = iter(loader)
    for i, batch in enumerate(batches, start=start_iter):
        timer.got_batch()
        # The data layer's collate returns None when every clip of the batch was unreadable.
        data, target = batch if batch is not None else (torch.zeros(0), torch.zeros(0))
        group_start = (i // settings.batch_multiplier) * settings.batch_multiplier
        group_end = min(group_start + settings.batch_multiplier, n)
        # After a resume with another world size or batch the first group may start part-way.
        group_size = group_end - max(group_start, start_iter)
        last_in_group = i == group_end - 1

        # Agree on stopping (only at a group boundary) and on empty batches.
        stop_requested = parts.stop is not None and parts.stop.requested
        flags = all_reduce_sum(
            torch.tensor(
                [float(stop_requested), float(len(target) < settings.min_batch)],
                dtype=torch.float64,
            ),
            ctx,
        )
        if flags[0] > 0 and i == group_start:
            stats.stopped_at = i
            break
        if flags[1] > 0:
            # Some rank's batch lost (nearly) all its clips to unreadable videos: all ranks skip
            # it together (DDP needs every rank in every step), counted.
            skipped += 1
            if last_in_group:
                step_lr = _finish_group(parts, params, epoch + i / n, ran, distributed)
                lr, ran = (lr if step_lr is None else step_lr), 0
            timer.step_done()
            continue

        data = to_device(data, ctx.device, settings.channels_last, settings.input_norm)
        target = target.to(ctx.device, non_blocking=True)  # [B]
        loss_target = acc_target = target
        if parts.mix is not None:
            data, loss_target, acc_target = parts.mix(data, target)
        sync = contextlib.nullcontext() if (last_in_group or not distributed) else model.no_sync()
        with sync:
            with autocast(ctx.device, settings.amp):
                output = model(data)  # [B, K]
                loss = parts.criterion(output, loss_target)
            scaled = loss / group_size
            (parts.scaler.scale(scaled) if parts.scaler is not None else scaled).backward()
        ran += 1

        b = target.size(0)
        c1, c5 = topk_correct(output.detach().float(), acc_target)
        loss_value = loss.item()
        finite = math.isfinite(loss_value)
        totals = all_reduce_sum(
            torch.tensor(
                [loss_value * b if finite else 0.0, c1, c5, b, float(not finite)],
                dtype=torch.float64,
            ),
            ctx,
        )
        if totals[4] > 0:
            raise NonFiniteLossError(
                f"loss became {'NaN' if math.isnan(loss_value) else 'non-finite'} at epoch "
                f"{epoch + 1}, iteration {i + 1}/{n} (on {int(totals[4])} rank(s)); no checkpoint "
                "was written over the last good one: lower --lr, set --gd, or check the data"
            )
        loss_sum += float(totals[0])
        correct1 += float(totals[1])
        correct5 += float(totals[2])
        clips += int(totals[3])

        if last_in_group:
            # DDP has just all-reduced the whole group's gradients (this step ran in sync).
            lr, ran = _finish_group(parts, params, epoch + i / n, ran, False), 0

        timer.step_done()  # the loss has been read (.item()), so the device's work is done
        elapsed = time.perf_counter() - start_time
        avg_loss = loss_sum / max(clips, 1)
        top1 = 100.0 * correct1 / max(clips, 1)
        bar.update(1)
        bar.set_postfix(
            loss=f"{avg_loss:.4f}",
            top1=f"{top1:.1f}",
            clips_s=f"{clips / elapsed:.1f}",
            data=f"{100 * timer.wait_share:.0f}%",
            lr=f"{lr:.2e}",
        )
        if (i + 1) % settings.print_freq == 0 or i + 1 == n:
            line = (
                f"Epoch: [{epoch + 1}][{i + 1}/{n}], lr: {lr:.5f}\tLoss {avg_loss:.4f}\t"
                f"Prec@1 {top1:.3f}\tPrec@5 {100.0 * correct5 / max(clips, 1):.3f}\t"
                f"clips/s {clips / elapsed:.1f}\t{timer.summary()}"
            )
            if ctx.is_main and bar.disable:
                logger.info(line)
            if parts.run_logger is not None:
                parts.run_logger.line(line)
                step = epoch * n + i + 1
                parts.run_logger.scalars(
                    {
                        "loss/step": float(totals[0]) / max(int(totals[3]), 1),
                        "lr/step": lr,
                        "time/data_wait_s": timer.last_wait_s,
                        "time/compute_s": timer.last_compute_s,
                        "time/data_wait_share": timer.wait_share,
                    },
                    step,
                )
    bar.close()
    warning = timer.warning(epoch + 1, getattr(loader, "num_workers", 0))
    if warning is not None and ctx.is_main:
        logger.warning(warning)
        if parts.run_logger is not None:
            parts.run_logger.line(f"WARNING: {warning}")
    if skipped:
        logger.warning(
            "epoch %d: %d iteration(s) skipped: a batch had too few readable clips",
            epoch + 1,
            skipped,
        )
    stats.loss = loss_sum / max(clips, 1)
    stats.top1 = 100.0 * correct1 / max(clips, 1)
    stats.top5 = 100.0 * correct5 / max(clips, 1)
    stats.clips = clips
    stats.seconds = time.perf_counter() - start_time
    stats.lr = lr
    stats.skipped_batches = skipped
    stats.data_wait_share = timer.wait_share
    return stats


def _finish_group(
    parts: TrainParts, params: list[torch.Tensor], epoch_float: float, ran: int, unsynced: bool
) -> float | None:
    """End a gradient-accumulation group: the optimizer step, unless none of its iterations ran
    (then there are no gradients, and fp16's GradScaler would fail on a step without any).
    `unsynced`: the gradients were accumulated under DDP's no_sync and never all-reduced (the
    group's last iteration, which would have synchronised them, was skipped), so average them
    over the ranks first. Returns the base LR of the step, None when there was none."""
    if ran == 0:
        parts.optimizer.zero_grad(set_to_none=True)
        return None
    if unsynced:
        average_gradients(params, parts.ctx)
    return _optimizer_step(parts, params, epoch_float)


def _optimizer_step(parts: TrainParts, params: list[torch.Tensor], epoch_float: float) -> float:
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


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    settings: LoopSettings,
    ctx: DistContext,
    desc: str = "val",
    stop: StopRequest | None = None,
) -> EpochStats:
    """Loss and top-1/top-5 of `model` (unwrapped, eval mode) over every rank's shard of `loader`.

    With `stop`, the ranks agree before each batch whether a stop was requested (while every
    rank still has batches: shards may differ by one) and end early together; the result then
    has `stopped_at` set and covers only the batches before it.
    """
    model.eval()
    loss_sum = correct1 = correct5 = 0.0
    clips = 0
    stopped_at = None
    polls = all_reduce_min(len(loader), ctx) if stop is not None else 0
    bar = progress(total=len(loader), desc=desc, enabled=ctx.is_main)
    start_time = time.perf_counter()
    with stop_signals_blocked(loader):  # loader workers start here (see ops/engine/stop.py)
        batches = iter(loader)
    for index, batch in enumerate(batches):
        if index < polls:
            asked = torch.tensor([float(stop.requested)], dtype=torch.float64)
            if all_reduce_sum(asked, ctx)[0] > 0:
                stopped_at = index
                break
        if batch is None:  # every clip of the batch was unreadable (counted by the data layer)
            bar.update(1)
            continue
        data, target = batch
        data = to_device(data, ctx.device, settings.channels_last, settings.input_norm)
        target = target.to(ctx.device, non_blocking=True)
        with autocast(ctx.device, settings.amp):
            output = model(data)  # [B, K]
            loss = criterion(output, target)
        c1, c5 = topk_correct(output.float(), target)
        loss_sum += loss.item() * target.size(0)
        correct1 += c1
        correct5 += c5
        clips += target.size(0)
        bar.update(1)
    bar.close()
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
