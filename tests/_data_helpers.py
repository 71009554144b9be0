"""Tiny frame-folder datasets for the data-layer tests, including one with every bad input."""

from __future__ import annotations

import contextlib
import io
import signal
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 24, 16  # frame size of the grey test videos


def grey_value(k: int) -> int:
    """Grey level of frame k in `write_grey_video` (distinct per frame, robust to JPEG noise)."""
    return 8 + 8 * k  # frames 1..30


def frame_id(img: Image.Image) -> int:
    """Frame number of a decoded grey test frame."""
    return round((float(np.asarray(img, dtype=np.float32).mean()) - 8) / 8)


def jpeg_bytes(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_grey_video(folder: Path, n: int, tmpl: str = "img_{:05d}.jpg", mode: str = "RGB"):
    """Frames 1..n of uniform grey `grey_value(k)`."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = (H, W, 3) if mode == "RGB" else (H, W)
    for k in range(1, n + 1):
        arr = np.full(shape, grey_value(k), dtype=np.uint8)
        (folder / tmpl.format(k)).write_bytes(jpeg_bytes(arr))


def write_coded_video(folder: Path, n: int, width: int, height: int, tmpl: str = "img_{:05d}.png"):
    """Lossless frames: R = 10 * frame number, G = x coordinate, B = y coordinate."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    for k in range(1, n + 1):
        arr = np.stack([np.full_like(xx, 10 * k), xx, yy], axis=-1).astype(np.uint8)
        Image.fromarray(arr).save(folder / tmpl.format(k))


# line number -> (list line, kinds tools/check_data.py must report for it)
BAD_LIST = [
    ("v_good 8 0", []),
    ("v_fields 8", ["wrong_fields"]),
    ("v_nonint eight 0", ["bad_frame_count"]),
    ("v_badlabel 8 x", ["bad_label"]),
    ("v_range 8 7", ["label_range"]),
    ("v_nodir 8 1", ["missing_dir"]),
    ("v_missing 8 1", ["missing_frames"]),  # frame 3 deleted
    ("v_corrupt 8 2", ["corrupt_frames"]),  # frame 5 truncated
    ("v_toolong 12 0", ["frames_beyond_disk"]),  # only 8 frames on disk
    ("v_allbad 4 0", ["corrupt_frames"] * 4),  # garbage, empty, truncated, garbage
]
NUM_CLASS = 3


def build_bad_dataset(root: Path) -> tuple[Path, Path]:
    """A dataset with every kind of bad input; returns (frames root, list file)."""
    frames = root / "frames"
    for name in ("v_good", "v_fields", "v_nonint", "v_badlabel", "v_range", "v_missing"):
        write_grey_video(frames / name, 8)
    (frames / "v_missing" / "img_00003.jpg").unlink()
    write_grey_video(frames / "v_corrupt", 8)
    data = (frames / "v_corrupt" / "img_00005.jpg").read_bytes()
    (frames / "v_corrupt" / "img_00005.jpg").write_bytes(data[: len(data) // 2])
    write_grey_video(frames / "v_toolong", 8)
    allbad = frames / "v_allbad"
    allbad.mkdir(parents=True)
    rng = np.random.default_rng(0)
    (allbad / "img_00001.jpg").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (allbad / "img_00002.jpg").write_bytes(b"")
    good = jpeg_bytes(np.full((H, W, 3), 50, dtype=np.uint8))
    (allbad / "img_00003.jpg").write_bytes(good[: len(good) // 3])
    (allbad / "img_00004.jpg").write_bytes(b"not a jpeg at all")
    list_file = root / "list.txt"
    list_file.write_text("\n".join(line for line, _ in BAD_LIST) + "\n\n")
    return frames, list_file


@contextlib.contextmanager
def deadline(seconds: int, what: str = "the block"):
    """Fail (instead of hanging the suite) when the block takes longer than ``seconds`` (SIGALRM,
    main thread only)."""

    def fire(signum, frame):
        raise TimeoutError(f"{what}: took more than {seconds} s (a hang?)")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
