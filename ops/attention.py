"""The attention core shared by the non-local blocks (RNL and the classic non-local one).

``y_n = sum_m a[m, n] v_m`` with ``a[m, n] = softmax_m(s * k_m . q_n)`` (``s = 1``: no scaling,
unless the caller asks), ``relu(k_m . q_n) / P_source``, or ``(k_m . q_n) / P_source`` (the
'linear' activation: the dot-product non-local block). Softmax attention runs through
``F.scaled_dot_product_attention`` unless the caller wants the affinity matrix back: the fused
kernel never materialises the ``P x P_source`` matrix; fused linear attention computes
``(v k^T) q / P_source``, which does not either. Its inputs are made contiguous in ``[N, P, C]`` first,
because strided inputs silently send the CPU kernel down the math path (PERF_NOTES).

Which kernel really runs depends on the device, dtype and head dimension (the RNL-R50 blocks
have C' = 256 and 512; CUDA's flash kernel takes at most 256, and if the memory-efficient one is
refused too, PyTorch silently falls back to the math path, which materialises ``P x P``):
``sdpa_kernel_used`` asks, and ``record_attention_shapes`` collects a model's attention shapes
from one forward pass, for main.py's start-up report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ops import self_attention

ACTIVATIONS = ("softmax", "relu", "linear")

_recording: list | None = None  # shapes of the fused calls, inside record_attention_shapes()


class OutputProjection(nn.Sequential):
    """The non-local blocks' output ``W``: ``Conv3d_1x1(C' -> C)`` then ``BN3d(C)``, whose scale
    and shift start at zero so that a new block adds nothing to its input (the identity). The
    parts are ``W.0`` and ``W.1``, as in the published checkpoints. ``bias=False`` leaves out
    the conv's bias (which the BN makes redundant), as mmcv's ``NonLocal3d`` does."""

    def __init__(self, inter_channels: int, channels: int, bias: bool = True) -> None:
        super().__init__(
            nn.Conv3d(inter_channels, channels, kernel_size=1, bias=bias),
            nn.BatchNorm3d(channels),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self[1].weight)
        nn.init.zeros_(self[1].bias)


def attention_macs(
    x_shape: torch.Size, inter_channels: int, sub_sample: bool, key_channels: int | None = None
) -> dict[str, int]:
    """Multiply-adds of a non-local block's attention on input ``[N, C, T, H, W]``: the affinity
    ``[Ps, Ck] x [Ck, P]`` and the aggregation ``[C', Ps] x [Ps, P]`` (``Ps = T*(H//2)*(W//2)``
    with ``sub_sample``; ``Ck = key_channels``, by default ``C'``), counted by
    ``tools/model_cost.py``, as the explicit computation does them."""
    n, _, t, h, w = x_shape
    p_src = t * (h // 2) * (w // 2) if sub_sample else t * h * w
    ck = inter_channels if key_channels is None else key_channels
    return {"attention": n * t * h * w * p_src * (ck + inter_channels)}


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
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attend from targets to sources.

    Args:
        q: targets ``[N, Cq, P]``; k: sources ``[N, Cq, Ps]``; v: values ``[N, Cv, Ps]``.
        activation: ``'softmax'`` over the sources, ``'relu'`` divided by ``Ps``, or
            ``'linear'`` (the affinity divided by ``Ps``).
        fused: use the fused kernel for softmax, the ``(v k^T) q`` order for linear (ignored
            when ``return_attention``).
        return_attention: also return the normalised affinity ``[N, Ps, P]``.
        scale: factor of the affinity before the softmax (1: none, as the published blocks).

    Returns:
        ``(y [N, Cv, P], attention or None)``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown attention activation {activation!r}: choose one of {ACTIVATIONS}"
        )
    if fused and activation == "softmax" and not return_attention:
        q4, v4 = _positions_last(q), _positions_last(v)
        k4 = q4 if k is q else _positions_last(k)
        if _recording is not None:
            _recording.append((tuple(q4.shape), tuple(k4.shape), tuple(v4.shape), k4 is q4))
        if scale == 1.0 and self_attention.usable(q4, k4, v4):
            y = self_attention.attend(q4, v4)  # queries are keys: a cheaper backward
        else:
            y = F.scaled_dot_product_attention(q4, k4, v4, scale=scale)
        return y.squeeze(1).transpose(1, 2), None  # (N, Cv, P)
    if fused and activation == "linear" and not return_attention:
        vk = torch.bmm(v, k.transpose(1, 2))  # (N, Cv, Cq): no P x Ps matrix
        return torch.bmm(vk, q) / k.shape[2], None  # (N, Cv, P)
    a = torch.bmm(k.transpose(1, 2), q)  # (N, Ps, P): source m, target n
    if activation == "softmax":
        a = F.softmax(a * scale if scale != 1.0 else a, dim=1)
    else:
        a = (F.relu(a) if activation == "relu" else a) / a.shape[1]
    return torch.bmm(v, a), (a.detach() if return_attention else None)


@contextlib.contextmanager
def record_attention_shapes() -> Iterator[list[tuple]]:
    """Collect ``(q, k, v, queries_are_keys)`` of every fused softmax attention call made inside
    (shapes ``[N, 1, P, C]``; e.g. one forward pass of a model on the meta device, which computes
    nothing)."""
    global _recording
    previous, _recording = _recording, []
    try:
        yield _recording
    finally:
        _recording = previous


# The fused kernels in the order PyTorch prefers them, by the names the report uses.
SDPA_KERNELS = ("flash", "efficient", "cudnn", "math")


def _backend(name: str):
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]


def _runs(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether kernel `name` alone computes the attention forward and backward here."""
    from torch.nn.attention import sdpa_kernel

    try:
        with sdpa_kernel([_backend(name)]):
            y = F.scaled_dot_product_attention(q, k, v, scale=1.0)
            if q.requires_grad:
                y.sum().backward()
    except RuntimeError:
        return False
    return True


def sdpa_kernel_used(
    q_shape: tuple,
    k_shape: tuple,
    v_shape: tuple,
    dtype: torch.dtype,
    device: torch.device | str,
    training: bool = True,
) -> str:
    """The kernel ``F.scaled_dot_product_attention`` runs for contiguous inputs of these shapes:
    'flash', 'efficient', 'cudnn' or 'math' (the ``P x P`` matrix is materialised).

    Asks PyTorch's own dispatcher (``torch._fused_sdp_choice``, what a call would pick) and
    checks that the kernel it names runs forward and backward at these sizes; where that private
    function is missing or its choice fails, tries the kernels in PyTorch's order of preference
    and reports the first that runs. The probe uses batch 1 of the given positions and zeros, so
    it draws no random numbers. On CPU 'flash' is PyTorch's CPU flash kernel.
    """

    def tensor(shape: tuple) -> torch.Tensor:
        return torch.zeros((1, *shape[1:]), dtype=dtype, device=device, requires_grad=training)

    q, k, v = tensor(q_shape), tensor(k_shape), tensor(v_shape)
    chooser = getattr(torch, "_fused_sdp_choice", None)
    if chooser is not None:
        try:
            index = int(chooser(q, k, v, scale=1.0))
        except RuntimeError:
            index = -1
        choice = next((n for n in SDPA_KERNELS if int(_backend(n)) == index), None)
        if choice is not None and _runs(choice, q, k, v):
            return choice
    for name in SDPA_KERNELS:
        if _runs(name, q, k, v):
            return name
    return "none"
