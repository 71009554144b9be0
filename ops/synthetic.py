"""The `synthetic` video dataset: moving objects whose class is the direction of motion.

Written by the demo (`python main.py` with no dataset), by `tools/make_synthetic.py` and by the
tests. Six classes, in time-reversed pairs:

    0 moving_right   1 moving_left   (the frames of 0, played backwards)
    2 moving_down    3 moving_up     (the frames of 2, played backwards)
    4 approaching    5 receding      (the frames of 4, played backwards)

Video i of an odd class is exactly video i of its partner class in reverse order, so both
classes contain the very same set of frames: a model that looks at frames one at a time (no
temporal modelling) cannot tell the two apart and tops out at 50% accuracy, while one that sees
the order of frames (TSM's shift, non-local blocks) can solve all six.

Each video: a static textured background, one square or disc of a random colour moving along a
straight line (or growing), 16-24 frames of 80x64 JPEG by default. The output is a pure function
of the arguments (same seed -> byte-identical files) and is written to a temporary folder that
is renamed into place, so an interrupted run leaves nothing half-written.

Layout (the `synthetic` entry of ops/dataset_config.py):
    <data_root>/synthetic/category.txt, train_videofolder.txt, val_videofolder.txt,
    <data_root>/synthetic/frames/<video>/img_00001.jpg ...
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ops.dataset_config import REGISTRY

logger = logging.getLogger(__name__)

CLASSES = ("moving_right", "moving_left", "moving_down", "moving_up", "approaching", "receding")
_ENTRY = REGISTRY["synthetic"]["RGB"]
_MARKER = "synthetic_config.json"  # parameters of the files present; also marks our folder


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    # A smooth colour gradient plus fixed fine texture: uint8 [H, W, 3].
    c0, c1 = rng.uniform(30, 225, size=(2, 3))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1.0) / 2.0  # [H, W] in 0..1
    img = c0 + (c1 - c0) * t[:, :, None]
    img += rng.normal(0.0, 8.0, size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _forward_video(
    rng: np.random.Generator, kind: str, num_frames: int, width: int, height: int
) -> np.ndarray:
    """Frames [F, H, W, 3] of a 'right', 'down' or 'approach' video (the even classes)."""
    bg = _background(rng, width, height)
    colour = np.where(bg.mean(axis=(0, 1)) > 128, rng.uniform(0, 70, 3), rng.uniform(185, 255, 3))
    disc = bool(rng.integers(2))
    short = min(width, height)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    size = rng.uniform(0.18, 0.28) * short
    if kind == "right":
        cy = rng.uniform(size / 2, height - size / 2)
        cx = np.linspace(size / 2, width - size / 2, num_frames) + rng.uniform(-2, 2)
        cy = np.full(num_frames, cy)
        sizes = np.full(num_frames, size)
    elif kind == "down":
        cx = rng.uniform(size / 2, width - size / 2)
        cy = np.linspace(size / 2, height - size / 2, num_frames) + rng.uniform(-2, 2)
        cx = np.full(num_frames, cx)
        sizes = np.full(num_frames, size)
    else:  # approach: grows from small to large around a fixed centre
        cx = np.full(num_frames, rng.uniform(0.35, 0.65) * width)
        cy = np.full(num_frames, rng.uniform(0.35, 0.65) * height)
        sizes = np.linspace(0.1 * short, 0.7 * short, num_frames)

    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        half = sizes[t] / 2
        if disc:
            mask = (xx - cx[t]) ** 2 + (yy - cy[t]) ** 2 <= half**2
        else:
            mask = (np.abs(xx - cx[t]) <= half) & (np.abs(yy - cy[t]) <= half)
        frame = bg.copy()
        frame[mask] = colour.astype(np.uint8)
        frames[t] = frame
    return frames


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _write_video(folder: Path, encoded: list[bytes]) -> None:
    folder.mkdir(parents=True)
    for k, data in enumerate(encoded, start=1):
        (folder / _ENTRY["image_tmpl"].format(k)).write_bytes(data)


def make_synthetic(
    data_root: str,
    num_videos_per_class: int = 40,
    num_val_per_class: int = 12,
    num_frames: int | tuple[int, int] = (16, 24),
    size: tuple[int, int] = (80, 64),
    seed: int = 0,
    num_classes: int = 6,
    quality: int = 90,
    overwrite: bool = False,
) -> str:
    """Write `<data_root>/synthetic` and return its path.

    num_videos_per_class / num_val_per_class: training / validation videos per class.
    num_frames: frames per video, or an inclusive (min, max) range drawn per video.
    size: (width, height) of the frames. num_classes: 2, 4 or 6 (the first classes above).
    An existing folder written with the same arguments is reused (nothing is rewritten) unless
    `overwrite`; one written with other arguments is replaced. A `synthetic` folder that this
    tool did not write is never touched.
    """
    if num_classes not in (2, 4, 6):
        raise ValueError(f"num_classes must be 2, 4 or 6 (time-reversed pairs), got {num_classes}")
    lo, hi = (num_frames, num_frames) if isinstance(num_frames, int) else tuple(num_frames)
    if not 1 <= lo <= hi:
        raise ValueError(f"num_frames must be >= 1 (or a range lo <= hi), got {num_frames}")
    width, height = (int(size[0]), int(size[1]))
    if width < 16 or height < 16:
        raise ValueError(f"size must be at least 16x16 pixels, got {width}x{height}")
    if num_videos_per_class < 1 or num_val_per_class < 1:
        raise ValueError("num_videos_per_class and num_val_per_class must be >= 1")

    config = {
        "num_videos_per_class": num_videos_per_class,
        "num_val_per_class": num_val_per_class,
        "num_frames": [lo, hi],
        "size": [width, height],
        "seed": seed,
        "num_classes": num_classes,
        "quality": quality,
        "version": 1,
    }
    root = Path(data_root)
    target = root / "synthetic"
    marker = target / _MARKER
    if target.exists():
        if not marker.is_file():
            raise FileExistsError(
                f"{target} exists and was not written by tools/make_synthetic.py (ops/synthetic.py); "
                "move it away or choose another --data_root"
            )
        if not overwrite and json.loads(marker.read_text()) == config:
            logger.info("synthetic dataset already present at %s", target)
            return str(target)

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=root))
    try:
        _write_dataset(tmp, config, lo, hi, width, height)
        (tmp / _MARKER).write_text(json.dumps(config, indent=1) + "\n")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=".synthetic-old-", dir=root))
            os.replace(target, old / "synthetic")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote synthetic dataset to %s", target)
    return str(target)


def make_tiny(data_root: str, num_videos_per_class: int = 4) -> str:
    """The smallest useful dataset, for tests and smoke checks: 2 classes x `num_videos_per_class`
    training and 2 validation videos of 8-10 frames, 40x32 px. Returns `data_root`."""
    make_synthetic(
        str(data_root),
        num_videos_per_class=num_videos_per_class,
        num_val_per_class=2,
        num_frames=(8, 10),
        size=(40, 32),
        num_classes=2,
        seed=0,
    )
    return str(data_root)


def _write_dataset(out: Path, config: dict, lo: int, hi: int, width: int, height: int) -> None:
    rng = np.random.default_rng(config["seed"])
    classes = CLASSES[: config["num_classes"]]
    kinds = ("right", "down", "approach")
    frames_dir = out / Path(_ENTRY["root_path"]).name
    lists = {"train": [], "val": []}
    counts = {"train": config["num_videos_per_class"], "val": config["num_val_per_class"]}
    for split in ("train", "val"):
        for pair in range(len(classes) // 2):
            for i in range(counts[split]):
                n = int(rng.integers(lo, hi + 1))
                video = _forward_video(rng, kinds[pair], n, width, height)
                encoded = [_jpeg(f, config["quality"]) for f in video]
                for label, order in ((2 * pair, encoded), (2 * pair + 1, encoded[::-1])):
                    name = f"{split}_{classes[label]}_{i:04d}"
                    _write_video(frames_dir / name, order)
                    lists[split].append(f"{name} {n} {label}")
    (out / Path(_ENTRY["classes"]).name).write_text("\n".join(classes) + "\n")
    (out / Path(_ENTRY["train_list"]).name).write_text("\n".join(lists["train"]) + "\n")
    (out / Path(_ENTRY["val_list"]).name).write_text("\n".join(lists["val"]) + "\n")
