"""RandAugment over a whole clip (--randaugment N,M): ops and magnitudes drawn once per clip and
applied to every frame of it, so that the clip stays temporally consistent (a frame-wise draw
would make brightness or rotation flicker from frame to frame, which a video model reads as
motion).

The augmentation itself is torchvision's `transforms.v2.RandAugment`: given a clip as one tensor
`[T, C, H, W]` it draws its N ops (and the sign of signed magnitudes) once per call and applies
them to the whole tensor, i.e. to every frame alike. Ops whose result depends on the image
(autocontrast, equalize) still compute their statistics per frame, as they would on the frames
of any video. M is torchvision's magnitude bin in 0..30 (of 31), e.g. 9 as in the RandAugment
paper's ImageNet setting.

Randomness comes from torch's global generator, which the training dataset wrapper seeds per clip
from (seed, epoch, index) (`ops.engine.seeding.SeededDataset`), so the draws are reproducible and
a resumed run draws the same ones. In main.py it runs after the multi-scale crop and flip, on the
uint8 frames, before they become a normalised float tensor.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2


class ClipRandAugment:
    """RandAugment with one draw per clip. Takes the clip as a list of PIL RGB frames (returned
    as such) or as a uint8 tensor `[T, C, H, W]` (returned as such)."""

    def __init__(self, num_ops: int, magnitude: int) -> None:
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.augment = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)

    def __call__(self, clip: list[Image.Image] | torch.Tensor) -> list[Image.Image] | torch.Tensor:
        if isinstance(clip, torch.Tensor):
            return self.augment(clip)
        frames = torch.from_numpy(np.stack([np.asarray(img.convert("RGB")) for img in clip]))
        out = self.augment(frames.permute(0, 3, 1, 2))  # [T, 3, H, W], one draw for all T
        return [Image.fromarray(f) for f in out.permute(0, 2, 3, 1).numpy()]

    def __repr__(self) -> str:
        return f"ClipRandAugment(num_ops={self.num_ops}, magnitude={self.magnitude})"


def clip_randaugment(spec: tuple[int, int] | None) -> list:
    """The transforms of `--randaugment N,M`: [ClipRandAugment] or [] when off."""
    return [] if spec is None else [ClipRandAugment(*spec)]
