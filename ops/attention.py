"""The attention core shared by the non-local blocks (RNL and the classic embedded-Gaussian one).

``y_n = sum_m a[m, n] v_m`` with ``a[m, n] = softmax_m(k_m . q_n)`` (no scaling), or
``relu(k_m . q_n) / P_source``. Softmax attention runs through ``F.scaled_dot_product_attention``
with ``scale=1`` unless the caller wants the affinity matrix back: the fused kernel never
materialises the ``P x P_source`` matrix. Its inputs are made contiguous in ``[N, P, C]`` first,
because strided inputs silently send the CPU kernel down the math path (PERF_NOTES).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("softmax", "relu")


class OutputProjection(nn.Sequential):
    """The non-local blocks' output ``W``: ``Conv3d_1x1(C' -> C)`` then ``BN3d(C)``, whose scale
    and shift start at zero so that a new block adds nothing to its input (the identity). The
    parts are ``W.0`` and ``W.1``, as in the published checkpoints."""

    def __init__(self, inter_channels: int, channels: int) -> None:
        super().__init__(
            nn.Conv3d(inter_channels, channels, kernel_size=1), nn.BatchNorm3d(channels)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self[1].weight)
        nn.init.zeros_(self[1].bias)


def attention_macs(x_shape: torch.Size, inter_channels: int, sub_sample: bool) -> dict[str, int]:
    """Multiply-adds of a non-local block's attention on input ``[N, C, T, H, W]``: the affinity
    ``[Ps, C'] x [C', P]`` and the aggregation ``[C', Ps] x [Ps, P]`` (``Ps = T*(H//2)*(W//2)``
    with ``sub_sample``), counted by ``tools/model_cost.py``."""
    n, _, t, h, w = x_shape
    p_src = t * (h // 2) * (w // 2) if sub_sample else t * h * w
    return {"attention": 2 * n * t * h * w * p_src * inter_channels}


def _positions_last(t: torch.Tensor) -> torch.Tensor:
    """``[N, C, P]`` -> contiguous ``[N, 1, P, C]`` (one attention head)."""
    return t.transpose(1, 2).unsqueeze(1).contiguous()


def nonlocal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    activation: str = "softmax",
    fused: bool = True,
    return_attention: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attend from targets to sources.

    Args:
        q: targets ``[N, Cq, P]``; k: sources ``[N, Cq, Ps]``; v: values ``[N, Cv, Ps]``.
        activation: ``'softmax'`` over the sources, or ``'relu'`` divided by ``Ps``.
        fused: use the fused kernel for softmax (ignored when ``return_attention``).
        return_attention: also return the normalised affinity ``[N, Ps, P]``.

    Returns:
        ``(y [N, Cv, P], attention or None)``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown attention activation {activation!r}: choose one of {ACTIVATIONS}"
        )
    if fused and activation == "softmax" and not return_attention:
        y = F.scaled_dot_product_attention(
            _positions_last(q), _positions_last(k), _positions_last(v), scale=1.0
        )
        return y.squeeze(1).transpose(1, 2), None  # (N, Cv, P)
    a = torch.bmm(k.transpose(1, 2), q)  # (N, Ps, P): source m, target n
    a = F.softmax(a, dim=1) if activation == "softmax" else F.relu(a) / a.shape[1]
    return torch.bmm(v, a), (a.detach() if return_attention else None)
