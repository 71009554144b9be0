"""--ema DECAY: an exponential moving average of the weights, validated and saved beside them.

After every optimizer step, every floating-point parameter and buffer (BatchNorm running
statistics included, as timm's ModelEmaV2 does) of the EMA copy becomes
`ema = DECAY * ema + (1 - DECAY) * weights`; the first step copies the weights (the average
starts at the weights after step 1). The averaging is torch's own
`torch.optim.swa_utils.AveragedModel` with `get_ema_multi_avg_fn`, so nothing here re-implements
it. Integer buffers (BatchNorm's `num_batches_tracked`) are copied from the weights.

Under DDP every rank holds identical weights after each step, so every rank's EMA is identical
too and needs no communication; rank 0 saves it. The EMA is saved twice (ops/engine/state.py):
inside the training checkpoint (key ``ema``: its weights and the number of updates, so that
`--resume` continues it bit for bit), and as ``ckpt.ema.pth.tar``, a checkpoint like any other
whose ``state_dict`` is the EMA weights, so test_models.py, tools/predict.py and `--tune_from`
take it unchanged.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

logger = logging.getLogger(__name__)


class WeightEMA:
    """The EMA copy of `model` (the unwrapped TSN, not its DDP wrapper)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.source = model
        self.averaged = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True
        )
        self.averaged.eval()

    @property
    def module(self) -> nn.Module:
        """The averaged model (a TSN), to validate or save."""
        return self.averaged.module

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights in (after an optimizer step)."""
        self.averaged.update_parameters(self.source)
        # torch averages integer buffers too, rounding down (num_batches_tracked would stall):
        # copy them instead.
        for mine, theirs in zip(self.module.buffers(), self.source.buffers(), strict=True):
            if not mine.is_floating_point():
                mine.copy_(theirs)

    def state_dict(self) -> dict:
        """What the training checkpoint keeps (key ``ema``)."""
        return {
            "decay": self.decay,
            "updates": self.updates,
            "state_dict": self.module.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the average stored by `state_dict` (a resumed run)."""
        self.module.load_state_dict(state["state_dict"])
        self.averaged.n_averaged.fill_(int(state["updates"]))
        if float(state.get("decay", self.decay)) != self.decay:
            logger.warning(
                "--ema %s: the checkpoint's average was kept with decay %s; continuing with %s",
                self.decay, state.get("decay"), self.decay,
            )  # fmt: skip
