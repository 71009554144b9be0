"""The region aggregation of RNL: a depthwise 3-D convolution stored in the published layout.

The published RNL code computes the depthwise convolution as a *grouped* convolution with
``groups = max(C // 32, 1)`` whose weight ``[C, C // groups, kt, kh, kw]`` is multiplied by a fixed
0/1 ``mask`` so that output channel ``i`` only sees input channel ``i``. The kernel of channel ``i``
is therefore ``weight[i, i % (C // groups)]`` and everything else in ``weight`` is dead.

``RegionConv3d`` keeps that layout (``mask`` registered before ``weight``, both parameters, as in the
published state_dict) so the published checkpoints load unchanged, but by default computes the
convolution as a true depthwise conv3d on the gathered ``[C, 1, kt, kh, kw]`` kernel: the same
result with 1/32 of the arithmetic. ``impl='masked'`` runs the published computation, for
benchmarks and equivalence tests. Gradients agree too: the gather scatters the kernel gradient back
to exactly the entries the mask keeps, the rest get zero, as with the masked product.

The input gradient of a stride-1 convolution with ``(k - 1) / 2`` zero padding is the same
depthwise convolution of the output gradient with the kernel flipped in every dimension. On the CPU
the backward kernel for depthwise 3-D convolutions is several times slower than the forward one
(0.35 s against 0.06 s of CPU time for the 3x7x7 layer2 kernel, 256 channels, 2 clips of 8x28x28),
so ``DepthwiseConv3d`` computes the input gradient as that forward convolution; the kernel gradient
is left to PyTorch.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

IMPLS = ("depthwise", "masked")


class DepthwiseConv3d(torch.autograd.Function):
    """``conv3d(x, weight, padding=(k - 1) / 2, groups=C)`` (stride 1, odd kernel, no bias) whose
    input gradient is computed as a forward convolution with the flipped kernel (see above)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, padding: tuple) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv3d(x, weight, None, 1, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        channels, padding = x.shape[1], ctx.padding
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv3d(grad, weight.flip(2, 3, 4), None, 1, padding, 1, channels)
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1, 1], list(padding), [1, 1, 1], False, [0, 0, 0],
                channels, [False, True, False],
            )[1]  # fmt: skip
        return grad_x, grad_w, None


class RegionConv3d(nn.Module):
    """Depthwise 3-D convolution, zero padding ``(k - 1) // 2``, no bias.

    Args:
        channels: input = output channels ``C``.
        kernel_size: ``(kt, kh, kw)``, odd sizes.
        impl: ``'depthwise'`` (gathered kernel, ``groups=C``) or ``'masked'`` (the published
            masked grouped convolution).
    """

    # The CPU depthwise path's layout (see forward); ops/bf16_guard.py turns it off for a layer
    # whose bf16 kernel is wrong in channels-last.
    cpu_channels_last = True

    def __init__(self, channels: int, kernel_size=(3, 7, 7), impl: str = "depthwise"):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"unknown region conv impl {impl!r}: choose one of {IMPLS}")
        self.channels = channels
        self.kernel_size = tuple(int(k) for k in kernel_size)
        if len(self.kernel_size) != 3 or any(k < 1 or k % 2 == 0 for k in self.kernel_size):
            raise ValueError(
                f"region conv kernel sizes must be three odd sizes >= 1 (kt, kh, kw), got "
                f"{self.kernel_size}: padding (k - 1) / 2 keeps the shape only for odd sizes"
            )
        self.padding = tuple((k - 1) // 2 for k in self.kernel_size)
        self.groups = max(channels // 32, 1)
        if channels % self.groups:
            raise ValueError(
                f"region conv needs channels divisible by {self.groups}, got {channels}"
            )
        self.per_group = channels // self.groups
        self.impl = impl
        mask = torch.zeros(channels, self.per_group, *self.kernel_size)
        mask[torch.arange(channels), torch.arange(channels) % self.per_group] = 1.0
        # Registration order (mask, then weight) is the published state_dict order.
        self.mask = nn.Parameter(mask, requires_grad=False)
        self.weight = nn.Parameter(torch.empty(channels, self.per_group, *self.kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Xavier-uniform on the full (masked) layout, then zero the dead entries, as published.
        fan_in = self.per_group * math.prod(self.kernel_size)
        fan_out = self.channels * math.prod(self.kernel_size)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        with torch.no_grad():
            self.weight.uniform_(-bound, bound).mul_(self.mask)

    def depthwise_weight(self) -> torch.Tensor:
        """The live kernels as a ``[C, 1, kt, kh, kw]`` depthwise weight."""
        idx = torch.arange(self.channels, device=self.weight.device)
        return self.weight[idx, idx % self.per_group].unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, T, H, W) -> same
        if self.impl == "masked":
            return F.conv3d(x, self.weight * self.mask, None, 1, self.padding, 1, self.groups)
        if x.device.type == "cpu":
            # The CPU depthwise conv3d kernel is ~3x faster on channels-last input (PERF_NOTES);
            # the output stays channels-last, which also makes the attention's [N, P, C] view
            # of it contiguous for free.
            x = x.contiguous(
                memory_format=torch.channels_last_3d
                if self.cpu_channels_last
                else torch.contiguous_format
            )
        # Under autocast a convolution runs in the autocast dtype, whatever x's dtype (as
        # F.conv3d would); the custom Function then runs with autocast off, in that dtype. The
        # meta device (the start-up shape probe) has no autocast.
        no_autocast: contextlib.AbstractContextManager = contextlib.nullcontext()
        if x.device.type != "meta":
            if torch.is_autocast_enabled(x.device.type):
                x = x.to(torch.get_autocast_dtype(x.device.type))
            no_autocast = torch.autocast(x.device.type, enabled=False)
        with no_autocast:
            weight = self.depthwise_weight().to(x.dtype)
            if torch.jit.is_tracing() or not torch.is_grad_enabled():
                # No backward to speed up; a traced export (TorchScript, ONNX) cannot hold a
                # Python autograd Function.
                return F.conv3d(x, weight, None, 1, self.padding, 1, self.channels)
            return DepthwiseConv3d.apply(x, weight, self.padding)

    def macs(self, x: torch.Tensor) -> dict[str, int]:
        """Multiply-adds of the depthwise convolution it computes (``kt*kh*kw`` per output element),
        not of the published masked grouped one (32x more)."""
        return {"region_conv": x.numel() * math.prod(self.kernel_size)}

    def live_params(self) -> int:
        """Entries of the published layout that the convolution uses: one kernel per channel (the
        rest of ``weight`` is dead and ``mask`` is fixed)."""
        return self.channels * math.prod(self.kernel_size)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, impl={self.impl!r}"
