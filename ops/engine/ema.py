"""--ema DECAY: an exponential moving average of the weights, validated and saved beside them.

After every optimizer step, every floating-point parameter and buffer (BatchNorm running
statistics included, as timm's ModelEmaV2 does) of the EMA copy becomes
`ema = DECAY * ema + (1 - DECAY) * weights`; the first step copies the weights (the average
starts at the weights after step 1). The averaging is torch's own
`torch.optim.swa_utils.AveragedModel` with `get_ema_multi_avg_fn`; `update` calls that function
itself (bit for bit what `AveragedModel.update_parameters` computes) so that a step reads nothing
from the device: torch's method asks its step counter `n_averaged` "is this the first update?"
and copies it to the device every step, a host-device synchronisation per step on a GPU; here the
count is also kept on the host. Integer buffers (BatchNorm's `num_batches_tracked`) are copied
from the weights.

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
        self._updates = 0  # n_averaged, on the host

    @property
    def module(self) -> nn.Module:
        """The averaged model (a TSN), to validate or save."""
        return self.averaged.module

    @property
    def updates(self) -> int:
        return self._updates

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights in (after an optimizer step): the first update copies them;
        later ones lerp the floating-point tensors with torch's EMA function and copy the integer
        buffers (torch would average those too, rounding down: num_batches_tracked would stall)."""
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*self.source.parameters(), *self.source.buffers()]
        floats: dict[torch.dtype, tuple[list, list]] = {}
        for a, b in zip(mine, theirs, strict=True):
            if self._updates == 0 or not a.is_floating_point():
                a.detach().copy_(b.detach())
            else:
                pair = floats.setdefault(a.dtype, ([], []))
                pair[0].append(a.detach())
                pair[1].append(b.detach().to(a.device))
        for ema_list, model_list in floats.values():
            self.averaged.multi_avg_fn(ema_list, model_list, None)
        self.averaged.n_averaged += 1  # saved with the module; no read
        self._updates += 1

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
        self._updates = int(state["updates"])
        self.averaged.n_averaged.fill_(self._updates)
        if float(state.get("decay", self.decay)) != self.decay:
            logger.warning(
                "--ema %s: the checkpoint's average was kept with decay %s; continuing with %s",
                self.decay, state.get("decay"), self.decay,
            )  # fmt: skip
