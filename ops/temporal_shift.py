"""Temporal Shift Module (Lin et al., "TSM: Temporal Shift Module for Efficient Video
Understanding", ICCV 2019).

A 2-D network sees a clip as a batch of frames ``[N*T, C, H, W]``. The shift moves a fraction of
the channels one step along time so that the following 2-D convolution mixes neighbouring frames
at zero FLOPs. With ``fold = C // shift_div``:

* channels ``[0, fold)`` at time t take the value from t+1 (zero at the last step),
* channels ``[fold, 2*fold)`` take the value from t-1 (zero at the first step),
* the other channels are unchanged.

Placements (``make_temporal_shift``):

* ``blockres`` (the published setting): the shift is applied to the input of ``conv1`` of each
  residual block, inside the residual branch; the identity path sees the unshifted tensor. The
  wrapped conv appears in the state_dict as ``layerX.Y.conv1.net.weight``. For ResNets whose layer3
  has 23 or more blocks (ResNet-101, -152) only every other block (0, 2, 4, ...) is shifted.
* ``block``: the whole block's input is shifted (``layerX.Y.net.*``).

``TemporalPool`` halves T before layer2 with a max-pool over time (kernel 3, stride 2, pad 1).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def temporal_shift(x: torch.Tensor, n_segment: int, fold_div: int = 8) -> torch.Tensor:
    """Out-of-place temporal shift of ``x`` ``[N*T, C, H, W]``; returns a new tensor."""
    nt, c, h, w = x.shape
    x = x.view(nt // n_segment, n_segment, c, h, w)  # (N, T, C, H, W)
    fold = c // fold_div
    out = torch.empty_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]  # t <- t+1
    out[:, -1, :fold] = 0
    out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]  # t <- t-1
    out[:, 0, fold : 2 * fold] = 0
    out[:, :, 2 * fold :] = x[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


class _Shift(torch.autograd.Function):
    """``temporal_shift`` whose backward is the shift's adjoint: one gradient-sized tensor.

    Autograd through the slice copies of ``temporal_shift`` builds, in the backward, a zero-filled
    input-sized tensor per copy (five) and adds them up; on a CPU each is a fresh allocation the
    kernel faults in page by page. The adjoint writes the same values once (each input element
    receives the gradient of the one output it went to, or zero), so the gradients are the same.
    """

    @staticmethod
    def forward(ctx, x, n_segment, fold_div):
        ctx.conf = (n_segment, fold_div)
        return temporal_shift(x, n_segment, fold_div)

    @staticmethod
    def backward(ctx, grad_out):
        return _shift_adjoint(grad_out, *ctx.conf), None, None


class _ShiftConv2d(torch.autograd.Function):
    """``conv2d(temporal_shift(x))`` that keeps ``x`` for the backward instead of the shifted copy.

    A plain shift followed by a convolution keeps the shifted tensor alive until the backward (the
    convolution needs its input for the weight gradient). That tensor is as large as the block
    input, which stays alive anyway (the previous ReLU keeps it), so the backward re-shifts ``x``
    (a cheap copy) instead: one activation-sized tensor less per shifted block. The convolution
    itself is not recomputed. Under autocast the convolution runs in the output's dtype, and the
    backward casts the re-shifted input and the weight the same way.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, n_segment, fold_div, stride, padding, dilation, groups):
        y = F.conv2d(
            temporal_shift(x, n_segment, fold_div), weight, bias, stride, padding, dilation, groups
        )
        ctx.save_for_backward(x, weight)
        ctx.conf = (n_segment, fold_div, stride, padding, dilation, groups, bias is not None)
        ctx.out_dtype = y.dtype
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        n_segment, fold_div, stride, padding, dilation, groups, has_bias = ctx.conf
        xs = temporal_shift(x, n_segment, fold_div).to(ctx.out_dtype)
        grad_xs, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out,
            xs,
            weight.to(ctx.out_dtype),
            [weight.shape[0]] if has_bias else None,
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0, 0],
            groups,
            [
                ctx.needs_input_grad[0],
                ctx.needs_input_grad[1],
                has_bias and ctx.needs_input_grad[2],
            ],
        )
        grad_x = (
            _shift_adjoint(grad_xs.to(x.dtype), n_segment, fold_div)
            if grad_xs is not None
            else None
        )
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


def _shift_adjoint(g: torch.Tensor, n_segment: int, fold_div: int) -> torch.Tensor:
    """Out-of-place adjoint (backward) of ``temporal_shift``: channels ``[0, fold)`` move one
    step later in time, ``[fold, 2*fold)`` one step earlier, zeros where nothing came from."""
    nt, c, h, w = g.shape
    g5 = g.view(nt // n_segment, n_segment, c, h, w)
    fold = c // fold_div
    out = torch.empty_like(g5)
    out[:, 1:, :fold] = g5[:, :-1, :fold]
    out[:, 0, :fold] = 0
    out[:, :-1, fold : 2 * fold] = g5[:, 1:, fold : 2 * fold]
    out[:, -1, fold : 2 * fold] = 0
    out[:, :, 2 * fold :] = g5[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


def shift_adjoint_add_(acc: torch.Tensor, g: torch.Tensor, n_segment: int, fold_div: int) -> None:
    """``acc += _shift_adjoint(g)`` in place, without building the adjoint (``acc``, ``g``
    ``[N*T, C, H, W]``): a gradient that meets another one at the shift's input (the identity
    path of a residual block) takes the shifted one without an input-sized temporary."""
    nt, c, h, w = g.shape
    a5 = acc.view(nt // n_segment, n_segment, c, h, w)
    g5 = g.view(nt // n_segment, n_segment, c, h, w)
    fold = c // fold_div
    a5[:, 1:, :fold] += g5[:, :-1, :fold]
    a5[:, :-1, fold : 2 * fold] += g5[:, 1:, fold : 2 * fold]
    a5[:, :, 2 * fold :] += g5[:, :, 2 * fold :]


def _input_channels(net: nn.Module) -> int | None:
    """Channels of the tensor ``net`` receives: those of its first convolution."""
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


def check_shift_div(n_div: int, channels: int | None) -> None:
    """Refuse a ``shift_div`` that shifts no channel of a ``channels``-channel input
    (``fold = 0``, a negative fold, a division by 0) or every channel (``2 * fold >= C``):
    either silently turns the TSM into something else."""
    if n_div >= 1 and (channels is None or 0 < 2 * (channels // n_div) < channels):
        return
    limit = f" and <= {channels}, the channels of the narrowest shifted layer" if channels else ""
    raise ValueError(
        f"--shift_div {n_div} shifts {'no' if n_div > 2 else 'every'} channel: it must be >= 3"
        f"{limit} (8 as published)"
    )


class TemporalShift(nn.Module):
    """Shift the input over time, then apply the wrapped module ``net`` (kept as ``.net`` so the
    state_dict matches the published ``conv1.net.weight`` layout).

    ``recompute=True`` (a fast path for training) fuses the shift into a wrapped ``Conv2d`` so the
    shifted copy is not kept for the backward (see ``_ShiftConv2d``); results are identical. Where
    the block around it recomputes the shift already (``ops/recompute.py``), ``fuse_conv`` is
    switched off and the shift's backward is still its adjoint (``_Shift``), not autograd through
    the slice copies.
    """

    def __init__(
        self,
        net: nn.Module,
        n_segment: int = 8,
        n_div: int = 8,
        recompute: bool = False,
    ):
        super().__init__()
        check_shift_div(n_div, _input_channels(net))
        self.net = net
        self.n_segment = n_segment
        self.fold_div = n_div
        self.recompute = recompute
        self.fuse_conv = recompute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.net
        if not (self.recompute and torch.is_grad_enabled()):
            return conv(temporal_shift(x, self.n_segment, self.fold_div))
        if self.fuse_conv and isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros":
            return _ShiftConv2d.apply(
                x,
                conv.weight,
                conv.bias,
                self.n_segment,
                self.fold_div,
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
            )
        return conv(_Shift.apply(x, self.n_segment, self.fold_div))

    def extra_repr(self) -> str:
        return (
            f"n_segment={self.n_segment}, fold_div={self.fold_div}, recompute={self.recompute}"
            + (", fuse_conv=False" if self.recompute and not self.fuse_conv else "")
        )


class TemporalPool(nn.Module):
    """Max-pool over time (kernel 3, stride 2, padding 1) before ``net``: T frames in, T/2 out."""

    def __init__(self, net: nn.Module, n_segment: int):
        super().__init__()
        self.net = net
        self.n_segment = n_segment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        n = nt // self.n_segment
        x = x.view(n, self.n_segment, c, h, w).transpose(1, 2)  # (N, C, T, H, W)
        x = F.max_pool3d(x, kernel_size=(3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0))
        x = x.transpose(1, 2).contiguous().view(-1, c, h, w)  # (N*T/2, C, H, W)
        return self.net(x)


def make_temporal_shift(
    net: nn.Module,
    n_segment: int,
    n_div: int = 8,
    place: str = "blockres",
    temporal_pool: bool = False,
    recompute: bool = False,
) -> None:
    """Insert temporal shifts into a torchvision-style ResNet ``net`` in place.

    ``place`` is ``blockres`` or ``block`` (see the module docstring). With ``temporal_pool`` the
    stages after layer1 see ``n_segment // 2`` frames and layer2 is wrapped in ``TemporalPool``.
    ``recompute`` selects the memory-saving shift+conv of ``TemporalShift`` (same results).
    """
    if place not in ("blockres", "block"):
        raise ValueError(f"unknown shift place {place!r}: use 'blockres' or 'block'")
    if not all(hasattr(net, f"layer{i}") for i in range(1, 5)):
        raise ValueError(
            f"temporal shift placement needs a ResNet with layer1..layer4, got {type(net).__name__}"
        )
    segments = [n_segment] + [n_segment // 2 if temporal_pool else n_segment] * 3
    # Deep ResNets (ResNet-101/152: 23+ blocks in layer3) shift only every other block.
    n_round = 2 if len(net.layer3) >= 23 else 1
    for stage, this_segment in zip(range(1, 5), segments):
        layer = getattr(net, f"layer{stage}")
        for i in range(len(layer)):
            if place == "block":
                layer[i] = TemporalShift(
                    layer[i], n_segment=this_segment, n_div=n_div, recompute=recompute
                )
            elif i % n_round == 0:
                layer[i].conv1 = TemporalShift(
                    layer[i].conv1, n_segment=this_segment, n_div=n_div, recompute=recompute
                )
    logger.debug(
        "temporal shift: place=%s div=%d segments=%s every %d block(s)",
        place,
        n_div,
        segments,
        n_round,
    )
    if temporal_pool:
        net.layer2 = TemporalPool(net.layer2, n_segment)
