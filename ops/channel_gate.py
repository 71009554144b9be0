"""Global-context channel gate that precedes the first RNL block (Huang and Bors, 2020).

For ``x`` ``[N, C, T, H, W]``: a 1x1x1 conv scores every position, a softmax over all ``T*H*W``
positions turns the scores into weights ``w``, the context ``c = sum_p w_p x_p`` ``[N, C]`` goes
through ``Linear(C -> C/r) -> BN1d -> ReLU -> Linear(C/r -> C)`` and the result is added to every
position. The last Linear starts at zero, so a new gate is the identity. Parameter names
(``W_k``, ``W_v1``, ``bn1``, ``W_v2``) are those of the published checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ops.blocks import register_block


class ChannelGate(nn.Module):
    """Args: channels ``C``; reduction ``r`` of the bottleneck (2 in the published model).

    Optimizer groups (``ops/param_groups.py``): the published code put only the ``.nl`` part of
    an attached block in the non-local groups, so the gate (attached as ``.cg``) trained like the
    backbone's layers: convolution and linear weights in ``normal_weight``, their biases in
    ``normal_bias``, the BN in ``bn``. ``optim_groups`` keeps that recipe.
    """

    optim_groups = {
        "W_k.weight": "normal_weight",
        "W_k.bias": "normal_bias",
        "W_v1.weight": "normal_weight",
        "W_v1.bias": "normal_bias",
        "bn1.weight": "bn",
        "bn1.bias": "bn",
        "W_v2.weight": "normal_weight",
        "W_v2.bias": "normal_bias",
    }

    def __init__(self, channels: int, reduction: int = 2):
        super().__init__()
        hidden = channels // reduction
        self.W_k = nn.Conv3d(channels, 1, kernel_size=1)
        self.W_v1 = nn.Linear(channels, hidden)
        self.bn1 = nn.BatchNorm1d(hidden, eps=1e-5, momentum=0.01)
        self.W_v2 = nn.Linear(hidden, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.W_v2.weight)
        nn.init.zeros_(self.W_v2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        w = F.softmax(self.W_k(x).reshape(n, 1, -1), dim=2)  # (N, 1, P)
        context = torch.bmm(x.reshape(n, c, -1), w.transpose(1, 2)).view(n, c)  # (N, C)
        g = self.W_v2(F.relu(self.bn1(self.W_v1(context))))  # (N, C)
        return x + g.view(n, c, 1, 1, 1)

    def macs(self, x: torch.Tensor) -> dict[str, int]:
        """Multiply-adds of the context ``sum_p w_p x_p`` for input ``x``: ``C`` per position (the
        score conv and the linear layers count themselves)."""
        return {"gate": x.numel()}


@register_block("gc")
def attach(channels: int, stage: int, first: bool, **_) -> dict[str, nn.Module]:
    """Block type ``gc`` (``ops/blocks.py``): the channel gate alone, as ``.cg``."""
    return {"cg": ChannelGate(channels, reduction=2)}
