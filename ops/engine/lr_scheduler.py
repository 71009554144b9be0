"""Per-iteration learning-rate schedule of the published RNL / TSM recipes (SPEC.md section 7).

The epoch is a float (`epoch + iteration / iterations_per_epoch`, epochs counted from 0):
- warmup (`use_warmup`): linear from `lr / 10` at epoch 0 to `lr` at `warmup_epochs`;
- then `cos`: `0.5 * lr * (1 + cos(pi * (e - w) / (E - w)))` with `w = warmup_epochs` (0 without
  warmup), or `step`: `lr * 0.1 ** (number of lr_steps <= e)`.
Every parameter group gets `lr * lr_mult` and `weight_decay * decay_mult` (the groups come from
`TSN.get_optim_policies()`, ops/param_groups.py).

The schedule is a pure function of the position, so a checkpoint only needs the position
(epoch, iteration) to continue it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class WarmupSchedule:
    """The schedule's settings; `lr_at(epoch_float)` gives the base LR (before `lr_mult`)."""

    lr: float
    epochs: int
    lr_type: str = "step"
    lr_steps: Sequence[float] = field(default_factory=lambda: (20.0, 40.0))
    use_warmup: bool = False
    warmup_epochs: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.lr_type not in ("step", "cos"):
            raise ValueError(f"lr_type must be 'step' or 'cos', got {self.lr_type!r}")
        if self.use_warmup and not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"warmup_epochs {self.warmup_epochs} must be in [0, epochs={self.epochs})"
            )

    def lr_at(self, epoch: float) -> float:
        """Base learning rate at fractional epoch `epoch` (0 = start of training)."""
        warmup = self.warmup_epochs if self.use_warmup else 0.0
        if self.use_warmup and epoch < warmup:
            start = self.lr / 10
            return start + (epoch / warmup) * (self.lr - start)
        if self.lr_type == "cos":
            progress = (epoch - warmup) / (self.epochs - warmup)  # 0 -> 1 after warmup
            return 0.5 * self.lr * (1 + math.cos(math.pi * progress))
        decays = sum(1 for step in self.lr_steps if epoch >= step)
        return self.lr * 0.1**decays

    def apply(self, optimizer: torch.optim.Optimizer, epoch: float) -> float:
        """Set every group's lr and weight decay for position `epoch`; returns the base LR."""
        lr = self.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
            group["weight_decay"] = self.weight_decay * group.get("decay_mult", 1.0)
        return lr
