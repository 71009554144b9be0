"""Classic embedded-Gaussian non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018).

For ``x`` ``[N, C, T, H, W]`` with ``C' = C / reduction``:
``theta, phi, g = Conv3d_1x1(C -> C')(x)`` each; with ``sub_sample`` phi and g are max-pooled
(1, 2, 2); ``a[m, n] = softmax_m(phi_m . theta_n)`` (no scaling);
``y_n = sum_m a[m, n] g_m``; ``z = BN3d(Conv3d_1x1(C' -> C)(y)) + x`` with the BN at zero, so a
new block is the identity. The attention runs through the same fused kernel as RNL
(``ops/attention.py``); ``store_attention`` keeps the ``[N, P_source, P]`` matrix.

It is the baseline the RNL paper compares against (NL I3D-ResNet50). Sub-sampling is on by
default, as in the I3D non-local models.
"""

from __future__ import annotations

import torch
from torch import nn

from ops.attention import OutputProjection, attention_macs, nonlocal_attention
from ops.blocks import register_block


class NonLocalBlock(nn.Module):
    """Args: in_channels ``C``; reduction ``C / C'``; sub_sample (pool phi and g); fused attention."""

    def __init__(
        self, in_channels: int, reduction: int = 2, sub_sample: bool = True, fused: bool = True
    ):
        super().__init__()
        inter = in_channels // reduction
        self.in_channels, self.inter_channels = in_channels, inter
        self.sub_sample, self.fused = sub_sample, fused
        self.store_attention = False
        self.attention: torch.Tensor | None = None
        self.theta = nn.Conv3d(in_channels, inter, kernel_size=1)
        self.phi = nn.Conv3d(in_channels, inter, kernel_size=1)
        self.g = nn.Conv3d(in_channels, inter, kernel_size=1)
        self.pool = nn.MaxPool3d((1, 2, 2)) if sub_sample else nn.Identity()
        self.W = OutputProjection(inter, in_channels)  # zero-initialised: starts as identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, h, w = x.shape
        q = self.theta(x).flatten(2)  # (N, C', P)
        k = self.pool(self.phi(x)).flatten(2)  # (N, C', Ps)
        v = self.pool(self.g(x)).flatten(2)  # (N, C', Ps)
        y, self.attention = nonlocal_attention(q, k, v, "softmax", self.fused, self.store_attention)
        return self.W(y.reshape(n, self.inter_channels, t, h, w)) + x

    def macs(self, x: torch.Tensor) -> dict[str, int]:
        """Multiply-adds of the attention for input ``x`` (its convolutions count themselves)."""
        return attention_macs(x.shape, self.inter_channels, self.sub_sample)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.inter_channels}, sub_sample={self.sub_sample}, fused={self.fused}"


@register_block("nl")
def attach(
    channels: int, stage: int, first: bool, *, sub_sample: bool = True, fused: bool = True, **_
) -> dict[str, nn.Module]:
    """Block type ``nl`` (``ops/blocks.py``): one classic non-local block as ``.nl``
    after every chosen residual block (the same at every stage)."""
    return {"nl": NonLocalBlock(channels, reduction=2, sub_sample=sub_sample, fused=fused)}
