"""Clips travel as uint8 and become the model's float input on the device, in one place.

DataLoader workers end their transform with `ToUint8Tensor` instead of
`ToTorchFormatTensor` + `GroupNormalize`: the clip stays uint8 `[N*C, H, W]` (TSM's layout), a
quarter of the bytes of float32 through the workers' shared memory, pinned memory and PCIe.
`ops.utils.to_device` (what the training loop, validation and test-time evaluation all call)
moves the batch and, for a uint8 batch, applies `InputNorm`: `x / 255`, then `(x - mean) / std`
per channel, in float32.

The result is bit-identical to the float path: `ToTorchFormatTensor` + `GroupNormalize` do the
same three IEEE float32 operations (uint8 -> float is exact, then a division by 255, a
subtraction and a division, each correctly rounded on CPUs and on CUDA, which PyTorch does not
build with fast-math) in the same order on the same values; tests/test_device_input.py checks it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = ["InputNorm", "ToUint8Tensor"]


class ToUint8Tensor:
    """uint8 `[N, H, W, C]` clip (from `Stack`, or one PIL image) -> uint8 `[N*C, H, W]`.

    The layout of `ToTorchFormatTensor`, without the float conversion and the division by 255
    (they happen on the device, `InputNorm`)."""

    def __call__(self, pic) -> torch.Tensor:
        if isinstance(pic, Image.Image):
            pic = np.asarray(pic)
            pic = pic[:, :, None] if pic.ndim == 2 else pic
        if not isinstance(pic, np.ndarray) or pic.ndim not in (3, 4) or pic.dtype != np.uint8:
            raise ValueError("ToUint8Tensor expects a PIL image or a uint8 [N, H, W, C] array")
        src = torch.from_numpy(np.ascontiguousarray(pic))
        if src.dim() == 3:
            src = src.unsqueeze(0)
        n, h, w, c = src.shape
        return src.permute(0, 3, 1, 2).reshape(n * c, h, w)  # one copy to [N, C, H, W]


@dataclass(frozen=True)
class InputNorm:
    """The model's input normalisation (SPEC.md section 1): `(x / 255 - mean[c]) / std[c]`,
    channel c = index % len(mean), applied to a uint8 batch `[B, N*C, H, W]` on its device."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean {self.mean} and std {self.std} must have the same length > 0")

    @classmethod
    def find(cls, model: nn.Module) -> InputNorm | None:
        """The normalisation of a TSN model, also through DDP / DataParallel / torch.compile /
        autocast wrappers (anything holding the model as `.module`, `._orig_mod` or `.model`);
        None for a model that does not say (it can then only take float clips)."""
        m = model
        for _ in range(8):
            if hasattr(m, "input_mean") and hasattr(m, "input_std"):
                return cls(tuple(map(float, m.input_mean)), tuple(map(float, m.input_std)))
            m = next(
                (getattr(m, a) for a in ("module", "_orig_mod", "model") if hasattr(m, a)), None
            )
            if m is None:
                break
        return None

    @classmethod
    def of(cls, model: nn.Module) -> InputNorm:
        """`find`, or a ValueError for a model without `input_mean` / `input_std`."""
        norm = cls.find(model)
        if norm is None:
            raise ValueError(
                f"{type(model).__name__} has no input_mean / input_std: cannot normalise uint8 "
                "clips for it"
            )
        return norm

    def __call__(self, data: torch.Tensor) -> torch.Tensor:
        """uint8 `[B, N*C, H, W]` (or `[N*C, H, W]`) -> normalised float32 of the same shape."""
        if data.dtype != torch.uint8:
            raise ValueError(f"InputNorm expects a uint8 batch, got {data.dtype}")
        c = len(self.mean)
        if data.dim() not in (3, 4) or data.size(-3) % c != 0:
            raise ValueError(
                f"InputNorm expects [B, N*{c}, H, W] uint8 clips, got {tuple(data.shape)}"
            )
        out = data.contiguous().to(torch.float32).div_(255)
        h, w = out.shape[-2:]
        view = out.view(-1, c, h, w)  # [B*N, C, H, W]
        mean, std = _mean_std(self.mean, self.std, out.device)
        view.sub_(mean).div_(std)
        return out


@functools.lru_cache(maxsize=64)
def _mean_std(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """`mean` and `std` as float32 `[C, 1, 1]` tensors on `device`, built once per device (a
    tensor built from a list on a GPU is a host-to-device copy, which waits for the device: once
    per run, not once per batch). Read-only by convention: `InputNorm` only reads them."""
    c = len(mean)
    return (
        torch.tensor(mean, dtype=torch.float32, device=device).view(c, 1, 1),
        torch.tensor(std, dtype=torch.float32, device=device).view(c, 1, 1),
    )


def norm_from(mean: Sequence[float], std: Sequence[float]) -> InputNorm:
    """`InputNorm` of plain lists (the model's `input_mean` / `input_std`)."""
    return InputNorm(tuple(map(float, mean)), tuple(map(float, std)))
