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
seeded order per epoch), so the training loader's position, and with it exact resuming, is
untouched; the forward passes run under `torch.random.fork_rng`, so dropout draws here do not
shift the training's random stream either. Under DDP each rank averages its own N batches and
the ranks then average their statistics (all-reduce), so all replicas keep identical buffers
(SyncBatchNorm already synchronises them per batch).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from ops.distributed import DistContext, all_reduce_sum
from ops.engine.stop import stop_signals_blocked
from ops.utils import autocast, progress, to_device

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
    amp: str = "off",
    channels_last: bool = False,
    norm=None,
) -> int:
    """Recompute `model`'s training BatchNorm statistics from up to `num_batches` of `batches`
    (`(data, target)` pairs or None for an all-unreadable batch); returns the batches used.
    The model is left in the mode it was in. ``norm`` is the model's ``InputNorm`` for uint8 (or
    ``--device_aug`` encoded) batches, as in the training loop (``ops.utils.to_device``)."""
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
            # Every rank skips a batch that is empty on any rank (all its videos unreadable),
            # so all ranks run the same forwards (SyncBatchNorm synchronises each one).
            empty = torch.tensor([float(batch is None)], dtype=torch.float64)
            if all_reduce_sum(empty, ctx)[0] > 0:
                continue
            data = to_device(batch[0], ctx.device, channels_last, norm)
            with autocast(ctx.device, amp):
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
    if used < num_batches and ctx.is_main:
        logger.warning("--precise_bn %d: only %d batches were available", num_batches, used)
    return used
