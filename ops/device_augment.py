"""The device data path (`--device_aug`): workers read, the device decodes and augments.

On a GPU the CPU workers are the usual bottleneck of video training: decoding JPEGs and resizing
crops with PIL costs most of a worker's time per clip. With this path a worker only
- reads each sampled frame's JPEG bytes (frame folders; `EncodedFrameFolders`) or decodes the
  sampled frames of a video file (video files: there are no per-frame bytes to hand over), and
- draws the training crop box and flip with the *same* seeded sampler as the PIL path
  (`GroupMultiScaleCrop._sample_crop_size`, then `random.random() < 0.5` for the flip, in the
  order `model.get_augmentation()` draws them), so a seeded run crops the same boxes;
and `EncodedBatch.to_model_input` (called by `ops.utils.to_device`, the one place the loops hand
data to the model) decodes the whole batch at once with `torchvision.io.decode_jpeg` (nvjpeg on
CUDA), crops, resizes with antialiased bilinear interpolation, flips and normalises on the
device. On a CPU the same code runs with device='cpu' (tests/test_device_augment.py).

Only the resampling differs from the PIL path: torch's antialiased bilinear resize of uint8
images follows PIL's filter but rounds its fixed-point arithmetic differently, and nvjpeg's IDCT
differs from libjpeg's; pixels agree within a few grey levels (the test states the bound). On a
CPU the resize is torch's uint8 kernel itself (`_resize`), on every torch / torchvision release
and every CPU; on CUDA, which has no uint8 kernel, it goes through float32 (torchvision's resize).
RGB only. Evaluation keeps the PIL path by default (the published accuracy was measured with
it); `DeviceTestViews` (`test_models.py --device_views`) cuts the test views on the device as an
option. A frame file that is not a JPEG is decoded in the worker (PIL) and travels as
pixels; a frame is checked by its header only, so a JPEG whose data is damaged fails in the batch
decode on the device.
"""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF2
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from ops.device_input import InputNorm
from ops.frames import FrameFolders, decode_bytes
from ops.transforms import (
    GroupFullResSample,
    GroupMultiScaleCrop,
    GroupOverSample,
    GroupRandomHorizontalFlip,
    scaled_size,
)
from ops.utils import distinct_items

__all__ = [
    "DeviceTestViews",
    "DeviceTrainAugment",
    "EncodedBatch",
    "EncodedClip",
    "EncodedFrame",
    "EncodedFrameFolders",
    "collate_encoded",
    "use_device_decoding",
]


@dataclass(frozen=True)
class EncodedFrame:
    """One frame as the worker hands it over: JPEG bytes (uint8 `[n]`) or, for anything else,
    decoded pixels (uint8 `[3, H, W]`), with its size (width, height)."""

    data: torch.Tensor
    size: tuple[int, int]

    @property
    def is_jpeg(self) -> bool:
        return self.data.dim() == 1

    @classmethod
    def from_file(cls, path: str) -> EncodedFrame:
        """The frame file's bytes if it is a baseline RGB / greyscale JPEG, else its pixels.
        Raises like `ops.frames.decode_image` for a file PIL cannot identify."""
        with open(path, "rb") as f:
            return cls.from_bytes(f.read())

    @classmethod
    def from_bytes(cls, raw: bytes) -> EncodedFrame:
        """``from_file`` of a frame file's bytes (a packed video's member)."""
        try:
            im = Image.open(io.BytesIO(raw))  # reads the header only
        except Exception as e:  # noqa: BLE001 - same handling as a PIL decode error
            raise OSError(f"not an image file PIL can read ({len(raw)} bytes): {e}") from None
        if im.format == "JPEG" and im.mode in ("RGB", "L"):
            return cls(torch.frombuffer(bytearray(raw), dtype=torch.uint8), im.size)
        return cls.from_image(decode_bytes(raw, "RGB"))

    @classmethod
    def of(cls, frame) -> EncodedFrame:
        """``frame`` itself when it is one already, else ``from_image(frame)``."""
        return frame if isinstance(frame, cls) else cls.from_image(frame)

    @classmethod
    def from_image(cls, im: Image.Image) -> EncodedFrame:
        """Decoded pixels (a video file's frame, a PNG frame)."""
        a = np.asarray(im.convert("RGB") if im.mode != "RGB" else im)
        return cls(torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))), im.size)


class EncodedFrameFolders(FrameFolders):
    """Frame folders whose frames stay encoded (`EncodedFrame`); missing frames are replaced by
    the nearest readable one, counted, as in `FrameFolders`."""

    @staticmethod
    def read_frame(paths: list[str], modality: str) -> list[EncodedFrame]:
        if modality != "RGB":
            raise ValueError("--device_aug supports RGB only")
        return [EncodedFrame.from_file(paths[0])]

    @staticmethod
    def read_frame_bytes(datas: list[bytes], modality: str) -> list[EncodedFrame]:
        if modality != "RGB":
            raise ValueError("--device_aug supports RGB only")
        return [EncodedFrame.from_bytes(datas[0])]


def use_device_decoding(dataset) -> None:
    """Make a `TSNDataSet` (RGB) hand over encoded frames: its frame-folder source keeps the JPEG
    bytes; a video-file source still decodes (its frames become pixels in `DeviceTrainAugment`)."""
    if dataset.modality != "RGB":
        raise ValueError("--device_aug supports RGB only (flow flips invert the x images)")
    source = dataset.source
    if isinstance(source, FrameFolders):
        dataset.source = EncodedFrameFolders(
            source.root_path, source.image_tmpl, source.modality, source.problems
        )


@dataclass
class EncodedClip:
    """A clip's frames (`frames[index[t]]` is frame t; repeated frames are stored once) and its
    views: each a crop box `(x, y, w, h)` and a flip, resized to `out_size` (w, h). Training has
    one view; test time resizes the frames to `scale` (w, h) first and cuts several views of
    `out_size` from them, stacked crop-major as the PIL test transforms do."""

    frames: list[EncodedFrame]
    index: list[int]
    views: list[tuple[tuple[int, int, int, int], bool]]
    out_size: tuple[int, int]
    scale: tuple[int, int] | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.views[0][0]

    @property
    def flip(self) -> bool:
        return self.views[0][1]


class DeviceTrainAugment:
    """The worker half of the device path: draws `GroupMultiScaleCrop`'s box (and the flip) with
    Python's `random`, exactly as the PIL transform `model.get_augmentation(flip)` would, and
    returns an `EncodedClip`. Frames may be `EncodedFrame`s or PIL images (video files)."""

    def __init__(self, input_size, scales: Sequence[float] | None = None, flip: bool = True):
        self.crop = GroupMultiScaleCrop(input_size, scales)
        self.flip = flip

    @classmethod
    def like(cls, augmentation) -> DeviceTrainAugment:
        """The device twin of a PIL training augmentation (`model.get_augmentation(flip)`: a
        `GroupMultiScaleCrop`, optionally followed by `GroupRandomHorizontalFlip`); anything
        else cannot be reproduced on the device and is refused."""
        steps = list(getattr(augmentation, "transforms", [augmentation]))
        crop, rest = steps[0], steps[1:]
        flips = [t for t in rest if isinstance(t, GroupRandomHorizontalFlip)]
        if not isinstance(crop, GroupMultiScaleCrop) or len(flips) != len(rest) or len(rest) > 1:
            names = ", ".join(type(t).__name__ for t in steps)
            raise ValueError(
                f"--device_aug reproduces a multi-scale crop and a flip only, not {names}: "
                "drop --device_aug or the other augmentations"
            )
        twin = cls(crop.input_size, crop.scales, flip=bool(flips))
        twin.crop = crop  # the same sampler settings (offsets, distortion)
        return twin

    def __call__(self, images: Sequence) -> EncodedClip:
        frames, index = distinct_items(images, EncodedFrame.of)
        crop_w, crop_h, off_w, off_h = self.crop._sample_crop_size(frames[0].size)
        flip = self.flip and random.random() < 0.5  # GroupRandomHorizontalFlip's draw
        box = (off_w, off_h, crop_w, crop_h)
        return EncodedClip(frames, index, [(box, flip)], self.crop.input_size)


class DeviceTestViews:
    """The worker half of the device path at test time (an option; PIL is the default): the
    views of `ops.evaluation.build_test_transform` (1 = resize + centre crop, 3 = along the
    longer side, 5 = corners + centre, 10 = those and their mirrors), at the offsets the PIL
    transforms use, on frames resized (on the device) so that the shorter side is `scale_size`."""

    def __init__(self, test_crops: int, scale_size: int, crop_size: int) -> None:
        if test_crops not in (1, 3, 5, 10):
            raise ValueError(f"--test_crops must be one of (1, 3, 5, 10), got {test_crops}")
        self.test_crops, self.scale_size, self.crop_size = test_crops, scale_size, crop_size

    def views(self, image_w: int, image_h: int) -> list[tuple[tuple[int, int, int, int], bool]]:
        crop = self.crop_size
        if crop > image_w or crop > image_h:
            raise ValueError(
                f"test crop {crop}x{crop} is larger than the scaled frame {image_w}x{image_h}"
            )
        if self.test_crops == 1:  # torchvision's centre crop rounding
            offsets = [(int(round((image_w - crop) / 2.0)), int(round((image_h - crop) / 2.0)))]
        elif self.test_crops == 3:
            offsets = GroupFullResSample(crop).offsets(image_w, image_h, crop, crop)
        else:
            offsets = GroupOverSample(crop).offsets(image_w, image_h, crop, crop)
        flips = (False, True) if self.test_crops == 10 else (False,)
        return [((x, y, crop, crop), flip) for x, y in offsets for flip in flips]

    def __call__(self, images: Sequence) -> EncodedClip:
        frames, index = distinct_items(images, EncodedFrame.of)
        scale = scaled_size(*frames[0].size, self.scale_size)
        views = self.views(*scale)
        return EncodedClip(frames, index, views, (self.crop_size, self.crop_size), scale)


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 `[N, 3, H, W]` to `height` x `width`.

    On a CPU, torch's uint8 kernel (PIL's fixed-point filter), called directly: torchvision < 0.24
    sends uint8 images on CPUs that report AVX512 through float32 instead (it tested for "AVX2"
    only), which put 13% of the pixels of noisy test frames a grey level off PIL's instead of 2%,
    and made `--device_aug`'s first training loss 3.4% off the PIL path's (now equal). Elsewhere
    (CUDA has no uint8 kernel) torchvision's resize, which goes through float32."""
    if x.device.type == "cpu":
        return F.interpolate(
            x, size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )
    return TF2.resize(x, [height, width], antialias=True)


@dataclass
class EncodedBatch:
    """A batch of `EncodedClip`s; `to_model_input` gives the float `[B, T*3, H, W]` batch."""

    clips: list[EncodedClip]

    def __len__(self) -> int:
        return len(self.clips)

    def decode(self, device: torch.device | str) -> list[list[torch.Tensor]]:
        """Every clip's distinct frames as uint8 `[3, H, W]` on `device`; all JPEGs of the batch
        in one `decode_jpeg` call (one nvjpeg batch on CUDA)."""
        jpegs = [f.data for c in self.clips for f in c.frames if f.is_jpeg]
        with warnings.catch_warnings():
            # torchvision 0.29 announces that its decoders will move to TorchCodec; the API
            # works, and the move is this one call.
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device) if jpegs else []
        decoded = iter(decoded)
        return [
            [next(decoded) if f.is_jpeg else f.data.to(device, non_blocking=True) for f in c.frames]
            for c in self.clips
        ]

    def augment(self, device: torch.device | str) -> torch.Tensor:
        """uint8 `[B, views*T*3, H, W]` on `device`: (scale,) crop, resize (antialiased
        bilinear), flip; views crop-major."""
        out = []
        for clip, frames in zip(self.clips, self.decode(device)):
            x_all = torch.stack(frames)  # [U, 3, H0, W0]
            if clip.scale is not None:
                x_all = _resize(x_all, clip.scale[1], clip.scale[0])
            out_w, out_h = clip.out_size
            views = []
            for (x, y, w, h), flip in clip.views:
                crops = x_all[:, :, y : y + h, x : x + w]  # [U, 3, h, w]
                if (w, h) != (out_w, out_h):
                    crops = _resize(crops, out_h, out_w)
                if flip:
                    crops = crops.flip(-1)
                views.append(crops[clip.index].reshape(-1, out_h, out_w))  # [T*3, H, W]
            out.append(torch.cat(views))
        return torch.stack(out)

    def to_model_input(self, device: torch.device | str, norm: InputNorm) -> torch.Tensor:
        """The normalised float batch on `device` (what `ops.utils.to_device` returns)."""
        return norm(self.augment(device))


def collate_encoded(batch: list):
    """DataLoader collate_fn of the device path: `(EncodedBatch, labels)` (more fields, e.g. an
    index, are stacked as usual); drops skipped videos (None), None if all were skipped."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    rest = torch.utils.data.default_collate([item[1:] for item in kept])
    return (EncodedBatch([item[0] for item in kept]), *rest)
