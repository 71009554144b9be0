"""Mixup and CutMix of whole clips, with soft targets (--mixup, --cutmix, --mix_prob,
--mix_switch_prob).

A training batch is `[N, T*C, H, W]`: the T frames of a clip are stacked on the channel axis. Clip
i and clip N-1-i form a pair (the batch reversed, as timm's "pair" mode pairs them; the middle
clip of an odd batch stays unmixed), with one decision and one draw per pair, used by both
clips: with probability `mix_prob` the pair is mixed at all; then CutMix with probability
`switch_prob` when both kinds are on. Each clip keeps lambda of itself and takes 1 - lambda of
its partner (for CutMix: the two clips swap the contents of one box). Mixup blends the two clips with
lambda ~ Beta(a, a); CutMix pastes one box of the partner clip, and because the box is cut over
the H and W axes of the `[T*C, H, W]` clip, every frame gets the very same box (never a box per
frame). CutMix's lambda is then the area kept, `1 - box area / (H*W)` (the box is clipped at the
border, as timm and the CutMix paper do).

Targets are soft: `lambda * onehot(y_i) + (1 - lambda) * onehot(y_partner)`; torch's
cross-entropy takes such probabilities and applies `--label_smoothing` on top of them (as timm's
Mixup does when given a smoothing). Training accuracy is counted against the dominant label (the
one with weight >= 0.5), which the log says.

timm's `Mixup` would do the target handling, but timm is a heavy dependency (it is not installed
here) and its per-element CutMix draws a box per element of a 4-D batch that it assumes to be
images; the clip-level logic is a few lines, so it is written here. The draws come from the
main process's global generators (torch), which are seeded per epoch and saved in mid-epoch
checkpoints (ops/engine/seeding.py), so a resumed run draws the same mixes.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


class ClipMix:
    """Mixup / CutMix of a batch of clips; call it as `data, soft, dominant = mix(data, target)`."""

    def __init__(
        self,
        num_class: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        switch_prob: float = 0.5,
    ) -> None:
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("ClipMix needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.num_class = num_class
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.mix_prob = mix_prob
        self.switch_prob = switch_prob if (mixup_alpha > 0 and cutmix_alpha > 0) else (
            1.0 if cutmix_alpha > 0 else 0.0
        )  # fmt: skip

    def draw(self, n: int, height: int, width: int) -> list[tuple[str, float, tuple | None]]:
        """Per clip i of a batch of n: (kind 'none' | 'mixup' | 'cutmix', lambda, box
        (y0, y1, x0, x1) or None), the same for clip i and its partner n-1-i. Drawn from
        torch's global generator, one draw per pair."""
        pairs = self._draw_pairs(n // 2, height, width)
        return pairs + [("none", 1.0, None)] * (n % 2) + pairs[::-1]

    def _draw_pairs(self, n: int, height: int, width: int) -> list[tuple[str, float, tuple | None]]:
        plans = []
        for _ in range(n):
            mixed = bool(torch.rand(()) < self.mix_prob)
            cut = bool(torch.rand(()) < self.switch_prob)
            if not mixed:
                plans.append(("none", 1.0, None))
                continue
            alpha = self.cutmix_alpha if cut else self.mixup_alpha
            lam = float(torch.distributions.Beta(alpha, alpha).sample())
            if not cut:
                plans.append(("mixup", lam, None))
                continue
            ratio = math.sqrt(1.0 - lam)
            cut_h, cut_w = int(height * ratio), int(width * ratio)
            cy = int(torch.randint(0, height, ()))
            cx = int(torch.randint(0, width, ()))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
            area = (y1 - y0) * (x1 - x0)
            plans.append(("cutmix", 1.0 - area / float(height * width), (y0, y1, x0, x1)))
        return plans

    def apply(
        self, data: torch.Tensor, target: torch.Tensor, plans: list[tuple[str, float, tuple | None]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mix `data` [N, T*C, H, W] (any leading layout whose last two axes are H, W) by
        `plans`; returns (mixed data, soft targets [N, K], dominant labels [N])."""
        partner = data.flip(0)
        mixed = data.clone()
        lams = torch.ones(data.size(0), dtype=torch.float32)
        for i, (kind, lam, box) in enumerate(plans):
            if kind == "mixup":
                mixed[i] = data[i] * lam + partner[i] * (1.0 - lam)
            elif kind == "cutmix":
                y0, y1, x0, x1 = box
                mixed[i, ..., y0:y1, x0:x1] = partner[i, ..., y0:y1, x0:x1]
            lams[i] = lam
        lams = lams.to(data.device)
        one_hot = F.one_hot(target, self.num_class).float()
        soft = lams[:, None] * one_hot + (1.0 - lams[:, None]) * one_hot.flip(0)
        dominant = torch.where(lams >= 0.5, target, target.flip(0))
        return mixed, soft, dominant

    def __call__(
        self, data: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.apply(data, target, self.draw(data.size(0), data.size(-2), data.size(-1)))
