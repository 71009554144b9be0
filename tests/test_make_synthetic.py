"""tools/make_synthetic.py: deterministic, readable by TSNDataSet, class = direction of motion."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ops.dataset import TSNDataSet
from ops.dataset_config import return_dataset
from ops.synthetic import CLASSES, make_synthetic

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_videos_per_class=2, num_val_per_class=1, num_frames=(6, 9), size=(40, 32))


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def frames(video: Path) -> np.ndarray:
    paths = sorted(video.iterdir())
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in paths])


def test_same_seed_same_bytes(tmp_path):
    a = Path(make_synthetic(str(tmp_path / "a"), seed=3, **SMALL))
    b = Path(make_synthetic(str(tmp_path / "b"), seed=3, **SMALL))
    c = Path(make_synthetic(str(tmp_path / "c"), seed=4, **SMALL))
    fa = files(a)
    assert fa == files(b)
    assert fa != files(c)
    assert {Path(k).name for k in fa} >= {
        "category.txt",
        "train_videofolder.txt",
        "val_videofolder.txt",
    }


def test_layout_is_readable_by_the_dataset(tmp_path):
    make_synthetic(str(tmp_path), **SMALL)
    n, train, val, root, tmpl = return_dataset("synthetic", "RGB", data_root=str(tmp_path))
    assert n == 6
    ds = TSNDataSet(root, train, num_segments=4, image_tmpl=tmpl, num_class=n)
    assert len(ds) == 6 * 2
    assert sorted(r.label for r in ds.video_list) == sorted(list(range(6)) * 2)
    assert all(6 <= r.num_frames <= 9 for r in ds.video_list)
    images, label = ds[0]
    assert len(images) == 4 and images[0].size == (40, 32)
    assert len(TSNDataSet(root, val, num_segments=4, image_tmpl=tmpl, random_shift=False)) == 6
    assert sum(ds.bad_data_counts().values()) == 0


def centre(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: x and y of the centre of the pixels far from the background."""
    background = np.median(video, axis=0)  # the object moves, so the median is the background
    mask = np.abs(video - background).sum(axis=-1) > 60  # [F, H, W]
    ys, xs = np.mgrid[0 : video.shape[1], 0 : video.shape[2]]
    area = np.maximum(mask.sum(axis=(1, 2)), 1)
    return (mask * xs).sum(axis=(1, 2)) / area, (mask * ys).sum(axis=(1, 2)) / area


def test_classes_are_motion_directions_in_reversed_pairs(tmp_path):
    root = Path(make_synthetic(str(tmp_path), **SMALL)) / "frames"
    for i in range(2):
        right = frames(root / f"train_moving_right_{i:04d}")
        left = frames(root / f"train_moving_left_{i:04d}")
        # the same frames, played backwards: a per-frame model cannot separate the pair
        assert np.array_equal(left, right[::-1])
        cx, _ = centre(right)
        assert cx[-1] - cx[0] > 10 and np.all(np.diff(cx) > -1)

        down = frames(root / f"train_moving_down_{i:04d}")
        assert np.array_equal(frames(root / f"train_moving_up_{i:04d}"), down[::-1])
        _, cy = centre(down)
        assert cy[-1] - cy[0] > 8 and np.all(np.diff(cy) > -1)

        approach = frames(root / f"train_approaching_{i:04d}")
        assert np.array_equal(frames(root / f"train_receding_{i:04d}"), approach[::-1])
        # the object grows: ever more pixels differ from the first frame (small object)
        changed = (np.abs(approach - approach[0]).sum(axis=-1) > 60).sum(axis=(1, 2))
        assert changed[-1] > 3 * changed[1] and np.all(np.diff(changed) >= 0)


def test_reuse_replace_and_refuse(tmp_path):
    path = Path(make_synthetic(str(tmp_path), **SMALL))
    stamp = (path / "train_videofolder.txt").stat().st_mtime_ns
    make_synthetic(str(tmp_path), **SMALL)  # same arguments: nothing rewritten
    assert (path / "train_videofolder.txt").stat().st_mtime_ns == stamp
    make_synthetic(str(tmp_path), **(SMALL | dict(num_classes=2)))  # other arguments: replaced
    assert (path / "category.txt").read_text().split() == list(CLASSES[:2])
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]  # no temporary folder left

    foreign = tmp_path / "other"
    (foreign / "synthetic").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not written by"):
        make_synthetic(str(foreign), **SMALL)
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic(str(tmp_path), num_classes=3)


def test_cli(tmp_path):
    out = subprocess.run(
        [sys.executable, "tools/make_synthetic.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "--data_root" in out.stdout
    out = subprocess.run(
        [sys.executable, "tools/make_synthetic.py", "--data_root", str(tmp_path), "--videos_per_class",
         "1", "--val_per_class", "1", "--frames", "5", "--size", "32", "24", "--num_classes", "2"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = (tmp_path / "synthetic" / "train_videofolder.txt").read_text().split("\n")
    assert lines[:2] == ["train_moving_right_0000 5 0", "train_moving_left_0000 5 1"]
