"""Region-based non-local (RNL) block (Huang and Bors, "Region-based Non-local Operation for Video
Classification", arXiv 2007.09033).

For a block output ``x`` ``[N, C, T, H, W]`` with ``C' = C / reduction`` and ``P = T*H*W``:

1. ``theta = Conv3d_1x1(C -> C')(x)``                                   ``[N, C', T, H, W]``
2. region features ``r = DW(theta)``: a depthwise 3-D conv (``RegionConv3d``; kernel
   ``(3, 7, 7)`` in layer2, ``(3, 3, 3)`` in layer3)
3. affinity ``A[m, n] = r_m . r_n`` between source ``m`` and target ``n`` (no scaling),
   ``softmax`` over the source index ``m`` (or ``relu(A) / P_source``)
4. ``y_n = sum_m A[m, n] theta_m``: the values are theta, not r
5. ``z = BN3d(Conv3d_1x1(C' -> C)(y)) + x``; the BN starts at zero, so a new block is the identity.

Options: ``activation='relu'``, ``use_norm`` (L2-normalise r over channels), ``sub_sample``
(max-pool (1, 2, 2) of the source side: keys r and values theta).

Softmax without scaling is attention with query = key = r, value = theta and scale 1, so with
``fused=True`` the block runs the fused kernel of ``ops/attention.py`` and never materialises the
``P x P`` matrix (P = 6272 in layer2 at 8 frames, 224 px). The explicit path is used for the relu
variant and whenever ``store_attention`` is set, in which case the normalised
``[N, P_source, P]`` affinity is kept in ``self.attention`` for visualisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ops.attention import ACTIVATIONS, OutputProjection, attention_macs, nonlocal_attention
from ops.blocks import register_block
from ops.channel_gate import ChannelGate
from ops.region_conv import RegionConv3d

# Region conv kernel per ResNet stage (layer1..layer4) of the residual block the RNL block follows:
# published for res3 (layer2) and res4 (layer3); layer1 and layer4 take their neighbour's. This is
# the default of `attach` below; a run can choose others with
# --nl_options '{"kernels": [[3,5,5], [3,5,5], [3,3,3], [3,3,3]]}', and the kernels used are
# recorded in the checkpoint's model settings.
STAGE_KERNELS = ((3, 7, 7), (3, 7, 7), (3, 3, 3), (3, 3, 3))


class RNLBlock(nn.Module):
    """Region-based non-local operation; attribute names follow the published checkpoints.

    Optimizer groups (``ops/param_groups.py``): as any attached block, biases in ``nl_bias`` and
    the other parameters in ``nl_weight``, except for the published quirk declared in
    ``optim_groups``: the released code registered the region conv's fixed mask before its weight
    and took "first parameter = weight, second = bias", so the region kernel trained as a bias
    (lr x2, no weight decay).

    Args:
        in_channels: ``C`` of the block output.
        reduction: ``C / C'`` (2 in the published model).
        kernel_size: region conv kernel ``(kt, kh, kw)``; all ones means no region conv (r = theta).
        activation: ``'softmax'`` (published) or ``'relu'`` (``relu(A) / P_source``).
        sub_sample: max-pool (1, 2, 2) the source side.
        use_norm: L2-normalise the region features over channels.
        fused: run softmax attention through ``scaled_dot_product_attention``.
        region_impl: ``'depthwise'`` or ``'masked'`` (see ``RegionConv3d``).
    """

    optim_groups = {"penta.weight": "nl_bias"}  # the published quirk (see above)

    def __init__(
        self,
        in_channels: int,
        reduction: int = 2,
        kernel_size=(3, 7, 7),
        activation: str = "softmax",
        sub_sample: bool = False,
        use_norm: bool = False,
        fused: bool = True,
        region_impl: str = "depthwise",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown RNL activation {activation!r}: choose one of {ACTIVATIONS}")
        inter = in_channels // reduction
        self.in_channels, self.inter_channels = in_channels, inter
        self.activation, self.sub_sample, self.use_norm, self.fused = (
            activation,
            sub_sample,
            use_norm,
            fused,
        )
        self.store_attention = False
        self.attention: torch.Tensor | None = None
        self.theta = nn.Conv3d(in_channels, inter, kernel_size=1)
        has_region = any(int(k) > 1 for k in kernel_size)
        self.penta = RegionConv3d(inter, kernel_size, impl=region_impl) if has_region else None
        self.W = OutputProjection(inter, in_channels)  # zero-initialised: starts as identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, h, w = x.shape
        theta = self.theta(x)  # (N, C', T, H, W)
        r = self.penta(theta) if self.penta is not None else theta  # (N, C', T, H, W)
        if self.use_norm:
            r = F.normalize(r, p=2, dim=1)
        r_src, v = (
            (F.max_pool3d(r, (1, 2, 2)), F.max_pool3d(theta, (1, 2, 2)))
            if self.sub_sample
            else (r, theta)
        )

        queries = r.flatten(2)
        y, self.attention = nonlocal_attention(
            queries,
            r_src.flatten(2) if self.sub_sample else queries,  # the same tensor: self-attention
            v.flatten(2),
            self.activation,
            self.fused,
            self.store_attention,
        )  # (N, C', P)
        y = y.reshape(n, self.inter_channels, t, h, w)
        return self.W(y) + x

    def macs(self, x: torch.Tensor) -> dict[str, int]:
        """Multiply-adds of the attention for input ``x`` (its convolutions count themselves)."""
        return attention_macs(x.shape, self.inter_channels, self.sub_sample)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels} -> {self.inter_channels}, activation={self.activation!r}, "
            f"sub_sample={self.sub_sample}, use_norm={self.use_norm}, fused={self.fused}"
        )


def check_kernels(kernels) -> tuple[tuple[int, int, int], ...]:
    """The region kernels of ``--nl_options``: 4 ``(kt, kh, kw)``, one per ResNet stage, of odd
    sizes >= 1 (the region conv pads ``(k - 1) / 2`` on each side, which keeps the shape only for
    odd sizes); a one-line ``ValueError`` otherwise."""
    if not isinstance(kernels, (list, tuple)) or len(kernels) != 4:
        raise ValueError(
            f"'kernels' must be 4 kernels (kt, kh, kw), one per ResNet stage layer1..layer4, "
            f"got {kernels!r}"
        )
    for k in kernels:
        ints = isinstance(k, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in k
        )
        if not ints or len(k) != 3:
            raise ValueError(
                f"each of the 4 'kernels' must be (kt, kh, kw), three integers, got {k!r}"
            )
        if any(v < 1 or v % 2 == 0 for v in k):
            raise ValueError(
                f"region kernel sizes must be odd and >= 1 (padding (k - 1) / 2 keeps the "
                f"shape only then), got {list(k)}"
            )
    return tuple(tuple(k) for k in kernels)


@register_block("rnl")
def attach(
    channels: int,
    stage: int,
    first: bool,
    *,
    kernels=STAGE_KERNELS,
    activation: str = "softmax",
    sub_sample: bool = False,
    use_norm: bool = False,
    fused: bool = True,
    region_impl: str = "depthwise",
    **_,
) -> dict[str, nn.Module]:
    """Block type ``rnl`` (``ops/blocks.py``): the published RNL parts after the residual
    block of ResNet ``stage`` with ``channels`` outputs: the channel gate before the first RNL
    block (``first``), then the RNL operation with that stage's region kernel. Keyword-only
    arguments are the block's settings (``--nl_options``) and fast-path switches; options meant
    for other block types are ignored."""
    kernels = check_kernels(kernels)
    parts: dict[str, nn.Module] = {}
    if first:
        parts["cg"] = ChannelGate(channels, reduction=2)
    parts["nl"] = RNLBlock(
        channels,
        reduction=2,
        kernel_size=kernels[stage - 1],
        activation=activation,
        sub_sample=sub_sample,
        use_norm=use_norm,
        fused=fused,
        region_impl=region_impl,
    )
    return parts
