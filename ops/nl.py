"""Classic non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018).

For ``x`` ``[N, C, T, H, W]`` with ``C' = C / reduction`` and ``P = T*H*W`` positions:

1. ``g = Conv3d_1x1(C -> C')(x)``; in the embedded-Gaussian and dot-product modes also
   ``theta, phi = Conv3d_1x1(C -> C')(x)`` each; in the Gaussian mode ``theta = phi = x``
   (no convolution, ``C`` channels).
2. with ``sub_sample`` phi and g are max-pooled (1, 2, 2): ``Ps = T*(H//2)*(W//2)`` sources.
3. the pairwise function between source ``m`` and target ``n``:
   ``embedded_gaussian``: ``a[m, n] = softmax_m(s * phi_m . theta_n)`` (``s = 1``, or
   ``1/sqrt(C')`` with ``use_scale``); ``gaussian``: ``softmax_m(x_m . x_n)``;
   ``dot_product``: ``(phi_m . theta_n) / Ps``.
4. ``y_n = sum_m a[m, n] g_m``; ``z = BN3d(Conv3d_1x1(C' -> C)(y)) + x`` with the BN at zero, so a
   new block is the identity.

The attention runs through the shared core (``ops/attention.py``): softmax through the fused
kernel, the dot product as ``(g phi^T) theta / Ps``; ``store_attention`` keeps the
``[N, Ps, P]`` matrix. These are the modes (and the sub-sampling) of mmcv's ``NonLocal3d``, which
mmaction2's non-local I3D models use; ``out_bias=False`` leaves out the bias of the output conv as
it does (the BN after it makes the bias redundant).

It is the baseline the RNL paper compares against (NL I3D-ResNet50). On the TSM models it keeps
its original settings and layout: embedded Gaussian, sub-sampled, output conv with a bias.
"""

from __future__ import annotations

import torch
from torch import nn

from ops.attention import OutputProjection, attention_macs, nonlocal_attention
from ops.blocks import register_block

MODES = ("embedded_gaussian", "dot_product", "gaussian")


class NonLocalBlock(nn.Module):
    """Args: in_channels ``C``; reduction ``C / C'``; sub_sample (pool phi and g); mode
    (``MODES``); use_scale (embedded Gaussian only: divide the affinity by ``sqrt(C')``);
    out_bias (bias of the output conv); fused attention (see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        reduction: int = 2,
        sub_sample: bool = True,
        fused: bool = True,
        mode: str = "embedded_gaussian",
        use_scale: bool = False,
        out_bias: bool = True,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown non-local mode {mode!r}: choose one of {MODES}")
        if use_scale and mode != "embedded_gaussian":
            raise ValueError(f"use_scale applies to the embedded_gaussian mode only, not {mode}")
        inter = in_channels // reduction
        self.in_channels, self.inter_channels = in_channels, inter
        self.sub_sample, self.fused, self.mode, self.use_scale = sub_sample, fused, mode, use_scale
        self.store_attention = False
        self.attention: torch.Tensor | None = None
        if mode != "gaussian":
            self.theta = nn.Conv3d(in_channels, inter, kernel_size=1)
            self.phi = nn.Conv3d(in_channels, inter, kernel_size=1)
        self.g = nn.Conv3d(in_channels, inter, kernel_size=1)
        self.pool = nn.MaxPool3d((1, 2, 2)) if sub_sample else nn.Identity()
        self.W = OutputProjection(inter, in_channels, bias=out_bias)  # zero BN: the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, h, w = x.shape
        if self.mode == "gaussian":
            q, k = x.flatten(2), self.pool(x).flatten(2)  # (N, C, P), (N, C, Ps)
        else:
            q = self.theta(x).flatten(2)  # (N, C', P)
            k = self.pool(self.phi(x)).flatten(2)  # (N, C', Ps)
        v = self.pool(self.g(x)).flatten(2)  # (N, C', Ps)
        y, self.attention = nonlocal_attention(
            q,
            k,
            v,
            "linear" if self.mode == "dot_product" else "softmax",
            self.fused,
            self.store_attention,
            scale=self.inter_channels**-0.5 if self.use_scale else 1.0,
        )  # (N, C', P)
        return self.W(y.reshape(n, self.inter_channels, t, h, w)) + x

    def macs(self, x: torch.Tensor) -> dict[str, int]:
        """Multiply-adds of the attention for input ``x`` (its convolutions count themselves)."""
        keys = self.in_channels if self.mode == "gaussian" else self.inter_channels
        return attention_macs(x.shape, self.inter_channels, self.sub_sample, key_channels=keys)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels} -> {self.inter_channels}, mode={self.mode}, "
            f"sub_sample={self.sub_sample}, fused={self.fused}"
        )


@register_block("nl")
def attach(
    channels: int,
    stage: int,
    first: bool,
    *,
    sub_sample: bool = True,
    mode: str = "embedded_gaussian",
    use_scale: bool = False,
    out_bias: bool = True,
    fused: bool = True,
    **_,
) -> dict[str, nn.Module]:
    """Block type ``nl`` (``ops/blocks.py``): one classic non-local block as ``.nl``
    after every chosen residual block (the same at every stage)."""
    block = NonLocalBlock(
        channels, 2, sub_sample, fused, mode=mode, use_scale=use_scale, out_bias=out_bias
    )
    return {"nl": block}


# Added for the I3D models (mmaction2's variants): recorded in a model's settings only when set,
# so the settings of the TSM models (and their checkpoints) stay {'sub_sample': ...}.
attach.recorded_if_set = ("mode", "use_scale", "out_bias")
