"""--precise_bn N: recompute the BatchNorm statistics over N training batches before validation.

During training a BatchNorm's running mean / variance is an exponential average of batch
statistics taken while the weights moved, so it lags behind the final weights (more so with the
RNL blocks' BatchNorm3d, whose statistics move with attention that is still learning). As
PySlowFast does (fvcore's `update_bn_stats`), the statistics are reset and recomputed with the
current weights, frozen: each BatchNorm's running mean becomes the mean of the N batch means and
its running variance the mean of the N (unbiased) batch variances it saw.

Only the BatchNorm layers that train are recomputed: with partial BN (TSN's default without
--npb) the frozen layers stay in eval mode during training and keep their statistics, here too.
(torch.optim.swa_utils.update_bn would reset the frozen ones as well, then leave them reset,
because TSN.train() puts them back in eval mode; hence this file.)

The batches come from their own loader (main.py: the training set with its augmentation, in a
seeded order per epoch, through the same collate and `model_batch` as the training loop, so
--device_aug's encoded clips are decoded and augmented on the device here too), so the training
loader's position, and with it exact resuming, is untouched; the forward passes run under
`torch.random.fork_rng`, so dropout draws here do not shift the training's random stream
either. Under DDP each rank averages its own N batches and the ranks then average their
statistics (all-reduce), so all replicas keep identical buffers (SyncBatchNorm already
synchronises them per batch). Before each batch the ranks agree (one all-reduce) whether anyone
was asked to stop and whether anyone's batch has fewer clips than the model needs
(`LoopSettings.min_batch`: BatchNorm1d cannot normalise one clip): a stop ends the pass on every
rank, a batch too small is skipped on every rank, so no rank is left waiting for the others.
The result of the pass does not depend on the statistics it replaces, so a pass cut short by a
stop is simply run again (main.py saves the trained epoch at the stop and reruns the pass on
resume).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from ops.distributed import DistContext, all_reduce_sum
from ops.engine.stop import StopRequest, stop_signals_blocked
from ops.engine.trainer import LoopSettings, batch_size_of, model_batch
from ops.utils import autocast, progress

logger = logging.getLogger(__name__)


def training_bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `model` that update their statistics in train mode (partial BN's
    frozen layers excluded)."""
    was_training = model.training
    model.train()  # TSN.train() re-freezes partial BN's layers
    layers = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    model.train(was_training)
    return layers


@torch.no_grad()
def precise_bn(
    model: nn.Module,
    batches: Iterable,
    num_batches: int,
    ctx: DistContext,
    settings: LoopSettings | None = None,
    stop: StopRequest | None = None,
) -> int:
    """Recompute `model`'s training BatchNorm statistics from up to `num_batches` of `batches`
    (`(data, target)` pairs or None for an all-unreadable batch); returns the batches used.
    The model is left in the mode it was in. `settings`: the loop's (amp, channels-last, the
    model's input normalisation, the smallest batch it takes); `stop`: end the pass early when
    any rank is asked to stop (the statistics are then partial: run the pass again)."""
    settings = LoopSettings() if settings is None else settings
    layers = training_bn_layers(model)
    if not layers:
        return 0
    was_training = model.training
    momenta = {m: m.momentum for m in layers}
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: the mean of the batch statistics
    used = 0
    model.train()
    bar = progress(total=num_batches, desc="precise BN", enabled=ctx.is_main)
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        with stop_signals_blocked(batches):  # loader workers start here (ops/engine/stop.py)
            batches = iter(batches)
        for batch in batches:
            if used >= num_batches:
                break
            # All ranks run the same forwards (SyncBatchNorm synchronises each one): a stop, or
            # a batch too small on any rank (its videos unreadable), is every rank's.
            stopping, too_small = _agree(stop, batch, settings.min_batch, ctx)
            if stopping:
                break
            if too_small:
                continue
            data, _ = model_batch(batch, ctx, settings)
            with autocast(ctx.device, settings.amp):
                model(data)
            used += 1
            bar.update(1)
    bar.close()
    for m, momentum in momenta.items():
        m.momentum = momentum
    if ctx.distributed:
        flat = torch.cat([torch.cat([m.running_mean, m.running_var]) for m in layers])
        flat = all_reduce_sum(flat.double(), ctx) / ctx.world_size
        offset = 0
        for m in layers:
            n = m.running_mean.numel()
            m.running_mean.copy_(flat[offset : offset + n])
            m.running_var.copy_(flat[offset + n : offset + 2 * n])
            offset += 2 * n
    model.train(was_training)
    if used < num_batches and ctx.is_main and not (stop is not None and stop.requested):
        logger.warning("--precise_bn %d: only %d batches were available", num_batches, used)
    return used


def _agree(
    stop: StopRequest | None, batch, min_batch: int, ctx: DistContext
) -> tuple[bool, bool]:
    """(has any rank been asked to stop, is any rank's batch smaller than `min_batch`)."""
    asked = stop is not None and stop.requested
    small = batch_size_of(batch) < min_batch
    flags = all_reduce_sum(torch.tensor([float(asked), float(small)], dtype=torch.float64), ctx)
    return bool(flags[0] > 0), bool(flags[1] > 0)
