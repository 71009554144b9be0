"""Fast training pixels (`--train_pixels fast`, the default for training): the same crops, a
faster decoder and resize.

The training transform of the published code (`GroupMultiScaleCrop` + `GroupRandomHorizontalFlip`
on PIL images, `ops/transforms.py`) spends most of a worker's time in PIL: decoding each JPEG
into a PIL image, copying it out, cropping and resizing it with PIL's bilinear filter. This path
keeps every random draw and changes only how the pixels are computed:

- The crop box and the flip are drawn by the same sampler with the same calls of Python's
  `random` (`GroupMultiScaleCrop._sample_crop_size`, then `random.random() < 0.5`), on the frame's
  full size, so a seeded run crops the same boxes and flips the same clips.
- Decoding (in the dataset's source, `FastFrameFolders`, so a frame that does not decode is
  replaced by the nearest readable one and counted exactly as in `ops/frames.py`): a JPEG
  (YCbCr or grey) is decoded by libjpeg-turbo through `torchvision.io.decode_jpeg`, which gives
  the pixels of PIL's decoder (same library, same integer IDCT and upsampling; tested) straight
  into a tensor, without PIL's image object and its copy. Where every crop the sampler can draw
  is at least twice the output size (frames far larger than the crop, e.g. 1280x720 frames for
  224 px crops), the JPEG is decoded at 1/2, 1/4 or 1/8 of its size by libjpeg's DCT scaling
  (PIL's `Image.draft`), the largest reduction that keeps every crop at least the output size;
  the box is then mapped to the reduced frame (rounded to its pixels). Anything else (PNG,
  CMYK or 12-bit JPEGs, a JPEG torchvision refuses) is decoded by PIL as before.
- Crop, resize, flip: the distinct frames' crops are resized together by torch's antialiased
  bilinear interpolation of uint8 images (the filter of PIL's bilinear resize, with different
  fixed-point rounding: within 2 grey levels of PIL, mean difference about 0.02), flipped and laid
  out as `[T*3, H, W]` uint8 in one copy.

The clip leaves the worker as uint8 (`ops/device_input.py` normalises it on the device), after
`--randaugment` if given (applied to the clip tensor, the same draw as on the PIL path).
`--train_pixels pil` keeps the published pixels. Validation and test time keep PIL (the
published accuracy was measured with it). RGB only: flow clips keep the PIL path.
"""

from __future__ import annotations

import io
import logging
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

from ops.frames import FrameFolders, _to_8bit, read_bytes, read_frame
from ops.randaugment import clip_randaugment
from ops.transforms import GroupMultiScaleCrop, GroupRandomHorizontalFlip
from ops.utils import distinct_items

logger = logging.getLogger(__name__)

__all__ = [
    "DecodedFrame",
    "FastFrameFolders",
    "FastTrainAugment",
    "decode_frame",
    "fast_train_augment",
    "jpeg_info",
    "use_fast_decoding",
]

# A function (frame width, frame height) -> DCT reduction 1, 2, 4 or 8 for that frame.
ScaleFor = Callable[[int, int], int]


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded RGB frame: uint8 `pixels` `[h, w, 3]` (a tensor; a view for grey JPEGs) of a
    frame whose full size is `size` (width, height), decoded at 1/`scale` of it (1, 2, 4, 8)."""

    pixels: torch.Tensor
    size: tuple[int, int]
    scale: int = 1
    mode = "RGB"

    @classmethod
    def of(cls, frame) -> DecodedFrame:
        """``frame`` itself when it is one already, else ``from_image(frame)``."""
        return frame if isinstance(frame, cls) else cls.from_image(frame)

    @classmethod
    def from_image(cls, im: Image.Image) -> DecodedFrame:
        """A PIL image's pixels (video-file frames, frames PIL decoded), at full size."""
        rgb = im if im.mode == "RGB" else im.convert("RGB")
        return cls(torch.from_numpy(np.array(rgb)), rgb.size, 1)

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    def resize(self, size: tuple[int, int], resample=Image.BILINEAR) -> DecodedFrame:
        """The frame resized to full size `size` (PIL, as `ops.frames` resizes a frame whose size
        differs from the clip's first frame), kept at its reduction."""
        w, h = (-(-size[0] // self.scale), -(-size[1] // self.scale))
        pixels = np.ascontiguousarray(self.pixels.numpy())
        im = Image.fromarray(pixels).resize((w, h), resample)
        return DecodedFrame(torch.from_numpy(np.array(im)), tuple(size), self.scale)


def jpeg_info(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a baseline or progressive 8-bit JPEG's frame header;
    None for anything else (not a JPEG, 12-bit, lossless, arithmetic coded, a damaged header)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):  # baseline, extended, progressive Huffman
            if i + 10 > n or data[i + 4] != 8:
                return None
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return (w, h, data[i + 9]) if w and h else None
        if 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) or marker == 0xDA:
            return None  # another frame type, or scan data before any frame header
        i += 2 + length
    return None


def _pil_pixels(data: bytes, scale: int = 1) -> tuple[np.ndarray, tuple[int, int], int]:
    """PIL's decode of a frame file's bytes, as `ops.frames.decode_image` does the file (same
    errors, 16-bit data scaled to 8 bits), at 1/`scale` of its size for a JPEG (DCT scaling):
    (pixels `[h, w, 3]`, full size, the reduction PIL applied)."""
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise OSError(f"not an image file PIL can read ({len(data)} bytes)") from None
    size = im.size
    if scale > 1:
        im.draft("RGB", (size[0] // scale, size[1] // scale))
    im.load()
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        im = _to_8bit(im)
    done = round(size[0] / im.size[0]) if im.size != size else 1
    return np.array(im if im.mode == "RGB" else im.convert("RGB")), size, done


def decode_frame(data: bytes, scale_for: ScaleFor | None = None) -> DecodedFrame:
    """Decode one RGB frame file's bytes (see the module docstring); raises what PIL raises for a
    frame PIL cannot decode (`ops.frames` then replaces it by the nearest readable frame)."""
    info = jpeg_info(data)
    if info is not None and info[2] in (1, 3):
        w, h, comps = info
        scale = scale_for(w, h) if scale_for is not None else 1
        if scale == 1:
            try:
                with warnings.catch_warnings():
                    # torchvision 0.29 announces that its decoders move to TorchCodec.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                    mode = ImageReadMode.RGB if comps == 3 else ImageReadMode.GRAY
                    chw = decode_jpeg(buf, mode=mode)
            except RuntimeError:
                chw = None  # damaged data: PIL decides below (its error, or its pixels)
            if chw is not None and tuple(chw.shape[1:]) == (h, w):
                return DecodedFrame(chw.permute(1, 2, 0).expand(h, w, 3), (w, h), 1)
    else:
        scale = 1
    pixels, size, done = _pil_pixels(data, scale)
    return DecodedFrame(torch.from_numpy(pixels), size, done)


class FastFrameFolders(FrameFolders):
    """Frame folders whose RGB frames are decoded by `decode_frame` into `DecodedFrame`s; missing
    and undecodable frames are replaced and counted as in `FrameFolders`. `scale_for` chooses the
    DCT reduction of a frame from its size (`FastTrainAugment.dct_scale`). Flow frames decode as
    before (PIL). Both reading hooks of `FrameFolders` (a frame's files, a packed frame's members)
    decode this way."""

    def __init__(
        self,
        root_path: str,
        image_tmpl: str,
        modality: str,
        problems,
        scale_for: ScaleFor | None = None,
    ) -> None:
        super().__init__(root_path, image_tmpl, modality, problems)
        self.scale_for = scale_for

    def read_frame(self, paths: list[str], modality: str) -> list:
        if modality != "RGB":
            return read_frame(paths, modality)
        return [decode_frame(read_bytes(paths[0]), self.scale_for)]

    def read_frame_bytes(self, datas: list[bytes], modality: str) -> list:
        """A packed video's frame (its member bytes), decoded like a frame file."""
        if modality != "RGB":
            return super().read_frame_bytes(datas, modality)  # type: ignore[misc]
        return [decode_frame(datas[0], self.scale_for)]


class FastTrainAugment:
    """The training transform of this path: `GroupMultiScaleCrop` (+ `GroupRandomHorizontalFlip`
    with `flip`) with the same draws, resized by torch, then `randaugment` (a
    `ClipRandAugment`, optional) on the clip; returns uint8 `[T*3, H, W]` (as `Stack` +
    `ToUint8Tensor` after the PIL transforms). Frames: `DecodedFrame`s or PIL RGB images."""

    def __init__(
        self,
        input_size,
        scales: Sequence[float] | None = None,
        flip: bool = True,
        randaugment=None,
    ) -> None:
        self.crop = GroupMultiScaleCrop(input_size, scales)
        self.flip = flip
        self.randaugment = randaugment

    @classmethod
    def like(cls, augmentation, randaugment=None) -> FastTrainAugment | None:
        """The fast twin of a PIL training augmentation (`model.get_augmentation(flip)`: a
        `GroupMultiScaleCrop`, optionally followed by a non-flow `GroupRandomHorizontalFlip`),
        with its sampler settings; None for anything else (the caller keeps PIL)."""
        steps = list(getattr(augmentation, "transforms", [augmentation]))
        crop, rest = steps[0], steps[1:]
        flips = [t for t in rest if isinstance(t, GroupRandomHorizontalFlip) and not t.is_flow]
        if not isinstance(crop, GroupMultiScaleCrop) or len(flips) != len(rest) or len(rest) > 1:
            return None
        twin = cls(crop.input_size, crop.scales, flip=bool(flips), randaugment=randaugment)
        twin.crop = crop  # the same sampler settings (offsets, distortion)
        return twin

    def dct_scale(self, width: int, height: int) -> int:
        """The largest JPEG reduction (8, 4, 2, else 1) at which every crop the sampler can draw
        on a `width` x `height` frame still covers the output size."""
        crop = self.crop
        base = min(width, height)
        sizes = [int(base * s) for s in crop.scales]
        out_w, out_h = crop.input_size
        widths = [out_w if abs(s - out_w) < 3 else s for s in sizes]
        heights = [out_h if abs(s - out_h) < 3 else s for s in sizes]
        for scale in (8, 4, 2):
            if min(widths) >= out_w * scale and min(heights) >= out_h * scale:
                return scale
        return 1

    def __call__(self, images: Sequence) -> torch.Tensor:
        frames, index = distinct_items(images, DecodedFrame.of)
        crop_w, crop_h, off_w, off_h = self.crop._sample_crop_size(frames[0].size)
        flip = self.flip and random.random() < 0.5  # GroupRandomHorizontalFlip's draw
        out_w, out_h = self.crop.input_size
        crops = [_crop(f, off_w, off_h, crop_w, crop_h) for f in frames]  # [h, w, 3] views
        if len({c.shape for c in crops}) == 1:
            resized = _resize(torch.stack(crops), out_w, out_h)  # [U, out_h, out_w, 3]
        else:  # frames decoded at different reductions
            resized = torch.cat([_resize(c[None], out_w, out_h) for c in crops])
        hwc = resized.numpy()
        if flip:
            hwc = hwc[:, :, ::-1]
        if index != list(range(len(frames))):
            hwc = hwc[index]  # [T, out_h, out_w, 3], repeated frames copied here
        clip = torch.from_numpy(np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)))  # [T, 3, H, W]
        if self.randaugment is not None:
            clip = self.randaugment(clip)
        return clip.reshape(-1, out_h, out_w)

    def __repr__(self) -> str:
        return (
            f"FastTrainAugment(input_size={self.crop.input_size}, scales={self.crop.scales}, "
            f"flip={self.flip}, randaugment={self.randaugment!r})"
        )


def _crop(frame: DecodedFrame, x: int, y: int, w: int, h: int) -> torch.Tensor:
    """The box (x, y, w, h) of the full-size frame, in the frame's decoded pixels (a view)."""
    s = frame.scale
    if s == 1:
        return frame.pixels[y : y + h, x : x + w]
    ph, pw = frame.pixels.shape[:2]
    x0, y0 = min(round(x / s), pw - 1), min(round(y / s), ph - 1)
    x1, y1 = min(max(round((x + w) / s), x0 + 1), pw), min(max(round((y + h) / s), y0 + 1), ph)
    return frame.pixels[y0:y1, x0:x1]


def _resize(crops: torch.Tensor, out_w: int, out_h: int) -> torch.Tensor:
    """uint8 `[U, h, w, 3]` -> `[U, out_h, out_w, 3]` (a channels-last view): torch's
    antialiased bilinear resize (its uint8 kernel reads and writes channels-last)."""
    if tuple(crops.shape[1:3]) == (out_h, out_w):
        return crops
    x = crops.permute(0, 3, 1, 2)  # [U, 3, h, w], channels-last memory
    x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1)


def use_fast_decoding(dataset, augment: FastTrainAugment) -> None:
    """Make a `TSNDataSet` (RGB frame folders) decode its frames for `augment` (its transform):
    `FastFrameFolders` with `augment.dct_scale`. Video files keep their source (PyAV frames
    are PIL images, which `FastTrainAugment` takes as they are)."""
    source = dataset.source
    if dataset.modality == "RGB" and type(source) is FrameFolders:
        dataset.source = FastFrameFolders(
            source.root_path,
            source.image_tmpl,
            source.modality,
            source.problems,
            scale_for=augment.dct_scale,
        )


def fast_train_augment(
    train_pixels: str, modality: str, augmentation, randaugment: tuple[int, int] | None
) -> FastTrainAugment | None:
    """The training transform of `--train_pixels fast` for `augmentation` (the model's
    `get_augmentation(flip)`) and `--randaugment` (None: off); None where PIL's pixels are kept:
    `--train_pixels pil`, flow clips, or an augmentation this path does not reproduce (logged)."""
    if train_pixels == "pil":
        return None
    if train_pixels != "fast":
        raise ValueError(f"--train_pixels must be 'fast' or 'pil', got {train_pixels!r}")
    extra = clip_randaugment(randaugment)  # [] or [ClipRandAugment]
    fast = FastTrainAugment.like(augmentation, extra[0] if extra else None)
    if modality != "RGB" or fast is None:
        what = "flow clips" if modality != "RGB" else f"the augmentation {augmentation!r}"
        logger.info("--train_pixels fast: %s keep PIL's training pixels (RGB crop+flip only)", what)
        return None
    logger.info("training pixels: fast (ops/fast_augment.py; --train_pixels pil for PIL's)")
    return fast
