"""Test fixtures for the evaluation tests: a tiny TSM-layout dataset, small checkpoints, and an
independent re-implementation of the test-time pipeline (SPEC.md sections 4-5).

The reference pipeline below is written from the SPEC, not from ops/: it picks frame numbers with
the SPEC formulas, decodes JPEGs with PIL, resizes the shorter side with PIL bilinear, cuts the
crops by their pixel offsets, normalises with numpy and runs the model on one view at a time.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# (folder, frames, label, (width, height)): landscape and portrait frames (3 crops run along the
# longer side), a long video (> 64 frames, so dense clips have distinct starts) and one shorter
# than the number of segments (the short-video branch of the formulas).
VIDEOS = [
    ("vid_a", 11, 0, (120, 90)),
    ("vid_b", 3, 1, (84, 100)),
    ("vid_c", 70, 2, (120, 90)),
]
CLASSES = ["left", "right", "spin"]


# --------------------------------------------------------------------------- data
def frame_pixels(video: int, frame: int, size: tuple[int, int]) -> np.ndarray:
    """Deterministic, spatially varied content (so that different crops give different inputs)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(1000 * video + frame)
    r = (xx * 255 // max(w - 1, 1) + 7 * frame) % 256
    g = (yy * 255 // max(h - 1, 1) + 31 * video) % 256
    b = rng.integers(0, 256, size=(h, w))
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def write_synthetic_dataset(data_root: str, videos=VIDEOS) -> str:
    """The `synthetic` dataset's TSM layout under `data_root`; returns the val list path."""
    base = os.path.join(data_root, "synthetic")
    os.makedirs(os.path.join(base, "frames"), exist_ok=True)
    with open(os.path.join(base, "category.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    lines = []
    for v, (name, frames, label, size) in enumerate(videos):
        folder = os.path.join(base, "frames", name)
        os.makedirs(folder, exist_ok=True)
        for i in range(1, frames + 1):
            Image.fromarray(frame_pixels(v, i, size)).save(
                os.path.join(folder, f"img_{i:05d}.jpg"), quality=95
            )
        lines.append(f"{name} {frames} {label}")
    for split in ("train", "val"):
        with open(os.path.join(base, f"{split}_videofolder.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return os.path.join(base, "val_videofolder.txt")


# --------------------------------------------------------------------------- checkpoints
def small_model_config(num_segments: int = 4, non_local: bool = True, input_size: int = 32):
    return dict(
        num_class=len(CLASSES),
        num_segments=num_segments,
        modality="RGB",
        base_model="resnet18",
        dropout=0.5,
        pretrain="scratch",
        is_shift=True,
        shift_div=8,
        shift_place="blockres",
        non_local=non_local,
        input_size=input_size,
        print_spec=False,
    )


def make_model(seed: int, **cfg):
    """A TSN with random weights large enough that views give clearly different scores."""
    from ops.models import TSN

    torch.manual_seed(seed)
    model = TSN(**cfg)
    with torch.no_grad():
        model.new_fc.weight.normal_(0.0, 0.5)
        model.new_fc.bias.normal_(0.0, 0.1)
        for name, p in model.named_parameters():
            # RNL output BNs start at zero (identity blocks): give them weight so RNL matters.
            if ".nl.W.1." in name:
                p.normal_(0.0, 0.5)
    return model.eval()


def save_published(path: str, model) -> None:
    """A published-format checkpoint: `module.` keys, settings only in the file name."""
    state = {
        "epoch": 10,
        "arch": model.base_model_name,
        "state_dict": {"module." + k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": {"state": {}, "param_groups": []},
        "best_prec1": 12.5,
    }
    torch.save(state, path)


# --------------------------------------------------------------------------- reference pipeline
def test_frame_numbers(
    num_frames: int, num_segments: int, dense: bool = False, twice: bool = False
) -> list[list[int]]:
    """1-based frame numbers of every test clip (SPEC.md section 4)."""
    if dense:
        stride = 64 // num_segments
        last_start = max(1, num_frames - 64 + 1) - 1
        starts = [int(s) for s in np.linspace(0, last_start, 10)]
        return [[(s + i * stride) % num_frames + 1 for i in range(num_segments)] for s in starts]
    tick = num_frames / num_segments
    clips = [[int(tick / 2 + tick * i) + 1 for i in range(num_segments)]]
    if twice:
        clips.append([int(tick * i) + 1 for i in range(num_segments)])
    return clips


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return img.resize(new, Image.BILINEAR)


def crop_boxes(width: int, height: int, crop: int, test_crops: int) -> list[tuple[int, int, bool]]:
    """(left, top, flipped) of every crop, in the order the views are produced."""
    if test_crops == 1:
        return [(int(round((width - crop) / 2)), int(round((height - crop) / 2)), False)]
    ws, hs = (width - crop) // 4, (height - crop) // 4
    if test_crops == 3:  # along the longer side (SPEC section 5): portrait -> top/bottom/centre
        if height > width:
            return [(2 * ws, 0, False), (2 * ws, 4 * hs, False), (2 * ws, 2 * hs, False)]
        return [(0, 2 * hs, False), (4 * ws, 2 * hs, False), (2 * ws, 2 * hs, False)]
    five = [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)]
    if test_crops == 5:
        return [(x, y, False) for x, y in five]
    return [(x, y, f) for x, y in five for f in (False, True)]


def to_input(img: Image.Image) -> np.ndarray:
    a = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0  # [H, W, 3]
    return ((a - MEAN) / STD).transpose(2, 0, 1)  # [3, H, W]


@torch.no_grad()
def reference_scores(
    model,
    data_root: str,
    num_segments: int,
    test_crops: int,
    full_res: bool = False,
    dense: bool = False,
    twice: bool = False,
    softmax: bool = False,
    videos=VIDEOS,
) -> np.ndarray:
    """Video scores `[videos, classes]`: the mean over views of each view's logits (or softmax).

    The views of one video are assembled here by hand and run through the model as one batch
    of independent rows (the model treats every row alone in eval mode).
    """
    input_size = model.input_size
    scale = input_size * 256 // 224
    crop = scale if full_res else input_size
    out = []
    for name, frames, _, _ in videos:
        folder = os.path.join(data_root, "synthetic", "frames", name)
        views = []
        for clip in test_frame_numbers(frames, num_segments, dense, twice):
            images = [
                resize_shorter(Image.open(os.path.join(folder, f"img_{n:05d}.jpg")), scale)
                for n in clip
            ]
            w, h = images[0].size
            for left, top, flip in crop_boxes(w, h, crop, test_crops):
                frames_in = []
                for img in images:
                    c = img.crop((left, top, left + crop, top + crop))
                    if flip:
                        c = c.transpose(Image.FLIP_LEFT_RIGHT)
                    frames_in.append(to_input(c))
                views.append(np.concatenate(frames_in, axis=0))  # [T*3, crop, crop]
        logits = model(torch.from_numpy(np.stack(views))).double()  # [views, K]
        per_view = torch.softmax(logits, dim=1) if softmax else logits
        out.append(per_view.mean(dim=0).numpy())
    return np.stack(out)


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str = "scores") -> None:
    """Scores agree to float32 rounding, and are not all equal (so the check means something)."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert np.ptp(expected) > 1e-3, f"degenerate reference {what}"
    err = np.abs(actual - expected).max()
    tol = 1e-4 * max(1.0, float(np.abs(expected).max()))
    assert err <= tol, f"{what} differ by {err:.3g} (tolerance {tol:.3g})"
    assert math.isfinite(err)
