"""One training epoch and one validation pass, as main.py runs them (every rank calls both).

Training follows the published recipe: gradients are accumulated over `batch_multiplier`
iterations (DDP gradient sync only on the last one, via `no_sync`), each loss divided by the
number of iterations in its group, the gradient norm clipped at `--gd`, and the LR set per
iteration by the schedule at the position of the optimizer step.

Every rank takes part in two tiny all-reduces per iteration, so all ranks always take the same
decisions: before the forward, "has anyone been asked to stop (SIGTERM / Ctrl-C)?" and "is
anyone's batch empty?"; after the backward, the summed loss / accuracy counts and "was any loss
NaN or Inf?". A stop request ends the epoch at the next optimizer-step boundary (so a checkpoint
written then is exactly resumable); a non-finite loss raises `NonFiniteLossError` before the
optimizer step, so the weights are never updated with it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ops.distributed import DistContext, all_reduce_sum
from ops.lr_scheduler import WarmupSchedule
from ops.run_logger import RunLogger

logger = logging.getLogger(__name__)


class NonFiniteLossError(Exception):
    """The training loss became NaN or Inf; the message names the epoch and step."""


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the training loop polls (cluster preemption, Ctrl-C).

    The loop finishes the current optimizer step, saves a resumable checkpoint and exits cleanly.
    A second Ctrl-C while stopping raises KeyboardInterrupt at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def install(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        logger.warning(
            "%s received: stopping after the current optimizer step and saving a checkpoint",
            self.signal_name,
        )


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
    stopped_at: int | None = None  # iteration to resume from when a stop request ended the epoch

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0


def autocast(device: torch.device, amp: str):
    """Autocast context for `--amp off|fp16|bf16` (fp16 needs CUDA; bf16 also runs on CPU)."""
    if amp == "off":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a GPU: use --amp bf16 on CPU, or --amp off")
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _correct_topk(output: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Number of clips whose label is in the top-1 / top-5 predictions (k clipped to K)."""
    k = min(5, output.size(1))
    pred = output.topk(k, dim=1).indices  # [B, k]
    hit = pred.eq(target.view(-1, 1))  # [B, k]
    return float(hit[:, :1].any(dim=1).sum()), float(hit.any(dim=1).sum())


def _progress(total: int, initial: int, enabled: bool, desc: str):
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="it",
        dynamic_ncols=True,
        disable=not (enabled and sys.stderr.isatty()),
    )


def train_one_epoch(
    *,
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: WarmupSchedule,
    epoch: int,
    iters_per_epoch: int,
    start_iter: int,
    batch_multiplier: int,
    clip_gradient: float | None,
    ctx: DistContext,
    stop: StopRequest,
    amp: str = "off",
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    run_logger: RunLogger | None = None,
    print_freq: int = 20,
    min_batch: int = 1,
    on_step: Callable[[int, int], None] | None = None,
) -> EpochStats:
    """Train over `loader` (which yields iterations `start_iter .. iters_per_epoch - 1`).

    `model` is the DDP-wrapped model when distributed. `epoch` counts from 0. Batches with fewer
    than `min_batch` clips (after the data layer dropped unreadable videos) are skipped on all
    ranks, e.g. 2 for models with a BatchNorm1d (the RNL channel gate). `on_step(epoch, i)`
    is called after every optimizer step (used by tests to inject faults). Returns the epoch's
    stats; `stopped_at` is set when a stop request ended it early.
    """
    model.train()
    distributed = ctx.distributed and hasattr(model, "no_sync")
    params = [p for p in model.parameters() if p.requires_grad]
    n = iters_per_epoch
    loss_sum = correct1 = correct5 = 0.0
    clips = 0
    skipped = 0
    lr = schedule.lr_at(epoch + start_iter / n)
    stats = EpochStats()
    bar = _progress(n, start_iter, ctx.is_main, desc=f"epoch {epoch + 1}")
    start_time = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    i = start_iter - 1
    for i, batch in enumerate(loader, start=start_iter):
        # The data layer's collate returns None when every clip of the batch was unreadable.
        data, target = batch if batch is not None else (torch.zeros(0), torch.zeros(0))
        group_start = (i // batch_multiplier) * batch_multiplier
        group_size = min(batch_multiplier, n - group_start)
        last_in_group = i == group_start + group_size - 1

        # Agree on stopping (only at a group boundary) and on empty batches.
        flags = all_reduce_sum(
            torch.tensor(
                [float(stop.requested), float(len(target) < min_batch)], dtype=torch.float64
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
                _optimizer_step(optimizer, params, schedule, epoch + i / n, clip_gradient, scaler)
            continue

        data = data.to(ctx.device, non_blocking=True)  # [B, T*C, H, W]
        target = target.to(ctx.device, non_blocking=True)  # [B]
        if channels_last:
            data = data.contiguous(memory_format=torch.channels_last)
        sync = contextlib.nullcontext() if (last_in_group or not distributed) else model.no_sync()
        with sync:
            with autocast(ctx.device, amp):
                output = model(data)  # [B, K]
                loss = criterion(output, target)
            scaled = loss / group_size
            (scaler.scale(scaled) if scaler is not None else scaled).backward()

        b = target.size(0)
        c1, c5 = _correct_topk(output.detach().float(), target)
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
            lr = _optimizer_step(optimizer, params, schedule, epoch + i / n, clip_gradient, scaler)
            if on_step is not None:
                on_step(epoch, i)

        elapsed = time.perf_counter() - start_time
        avg_loss = loss_sum / max(clips, 1)
        top1 = 100.0 * correct1 / max(clips, 1)
        bar.update(1)
        bar.set_postfix(
            loss=f"{avg_loss:.4f}",
            top1=f"{top1:.1f}",
            clips_s=f"{clips / elapsed:.1f}",
            lr=f"{lr:.2e}",
        )
        if (i + 1) % print_freq == 0 or i + 1 == n:
            line = (
                f"Epoch: [{epoch + 1}][{i + 1}/{n}], lr: {lr:.5f}\tLoss {avg_loss:.4f}\t"
                f"Prec@1 {top1:.3f}\tPrec@5 {100.0 * correct5 / max(clips, 1):.3f}\t"
                f"clips/s {clips / elapsed:.1f}"
            )
            if ctx.is_main and bar.disable:
                logger.info(line)
            if run_logger is not None:
                run_logger.line(line)
                step = epoch * n + i + 1
                run_logger.scalars(
                    {"loss/step": float(totals[0]) / max(int(totals[3]), 1), "lr/step": lr}, step
                )
    bar.close()
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
    return stats


def _optimizer_step(
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
    schedule: WarmupSchedule,
    epoch_float: float,
    clip_gradient: float | None,
    scaler: torch.amp.GradScaler | None,
) -> float:
    """Clip, set the LR for this position, step, zero the gradients; returns the base LR."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_gradient is not None:
        nn.utils.clip_grad_norm_(params, clip_gradient)
    lr = schedule.apply(optimizer, epoch_float)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return lr


@torch.no_grad()
def validate(
    *,
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    ctx: DistContext,
    amp: str = "off",
    channels_last: bool = False,
    desc: str = "val",
) -> EpochStats:
    """Loss and top-1/top-5 of `model` (unwrapped, eval mode) over every rank's shard of `loader`."""
    model.eval()
    loss_sum = correct1 = correct5 = 0.0
    clips = 0
    bar = _progress(len(loader), 0, ctx.is_main, desc=desc)
    start_time = time.perf_counter()
    for batch in loader:
        if batch is None:  # every clip of the batch was unreadable (counted by the data layer)
            bar.update(1)
            continue
        data, target = batch
        data = data.to(ctx.device, non_blocking=True)
        target = target.to(ctx.device, non_blocking=True)
        if channels_last:
            data = data.contiguous(memory_format=torch.channels_last)
        with autocast(ctx.device, amp):
            output = model(data)  # [B, K]
            loss = criterion(output, target)
        c1, c5 = _correct_topk(output.float(), target)
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
    )
