"""The device data path (ops/device_augment.py) with device='cpu': the same crop boxes and flips
as the PIL path for the same seed, pixels within one grey level of it, and a real DataLoader with
workers feeding the training loop through `ops.utils.to_device`."""

from __future__ import annotations

import csv
import io
import os
import random

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader

from ops.dataset import TSNDataSet
from ops.device_augment import (
    DeviceTrainAugment,
    EncodedBatch,
    EncodedFrame,
    collate_encoded,
    use_device_decoding,
)
from ops.device_input import InputNorm, ToUint8Tensor
from ops.transforms import GroupMultiScaleCrop, GroupRandomHorizontalFlip, Stack
from ops.utils import to_device
from tests._eval_helpers import frame_pixels

SCALES = [1, 0.875, 0.75, 0.66]
SIZES = [(120, 90), (84, 100), (171, 128)]  # landscape, portrait, another aspect
NORM = InputNorm((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    for v, size in enumerate(SIZES):
        os.makedirs(root / f"v{v}")
        for i in range(1, 9):
            Image.fromarray(frame_pixels(v, i, size)).save(
                root / f"v{v}" / f"img_{i:05d}.jpg", quality=90
            )
    # a PNG frame folder: not a JPEG, so the worker decodes it and hands over pixels
    os.makedirs(root / "png")
    for i in range(1, 9):
        Image.fromarray(frame_pixels(7, i, (96, 80))).save(root / "png" / f"img_{i:05d}.png")
    (root / "list.txt").write_text("".join(f"v{v} 8 {v}\n" for v in range(len(SIZES))))
    return root


def _datasets(root, flip: bool = True):
    augs = [GroupMultiScaleCrop(64, SCALES)] + ([GroupRandomHorizontalFlip()] if flip else [])
    pil_tf = torchvision.transforms.Compose([*augs, Stack(), ToUint8Tensor()])
    pil = TSNDataSet(str(root), str(root / "list.txt"), num_segments=4, transform=pil_tf)
    dev = TSNDataSet(
        str(root),
        str(root / "list.txt"),
        num_segments=4,
        transform=DeviceTrainAugment(64, SCALES, flip=flip),
    )
    use_device_decoding(dev)
    return pil, dev


def _item(ds, i, seed):
    random.seed(seed)
    np.random.seed(seed)  # the frame sampling draws from numpy
    return ds[i][0]


@pytest.mark.parametrize("flip", [True, False])
def test_same_boxes_and_flips_as_the_pil_path_for_the_same_seed(frames_root, flip):
    pil, dev = _datasets(frames_root, flip=flip)
    boxes, flips = set(), set()
    for seed in range(10):
        for i in range(len(SIZES)):
            expected = _item(pil, i, seed)  # uint8 [T*3, 64, 64]
            clip = _item(dev, i, seed)
            assert all(f.is_jpeg for f in clip.frames)  # the worker did not decode
            # The PIL crop of the box the device path drew, made here by hand, is the PIL path's
            # output exactly: same frames, same box, same flip.
            x, y, w, h = clip.box
            by_hand = []
            for k in clip.index:
                raw = io.BytesIO(clip.frames[k].data.numpy().tobytes())  # the bytes it read
                im = Image.open(raw).convert("RGB")
                im = im.crop((x, y, x + w, y + h)).resize((64, 64), Image.BILINEAR)
                if clip.flip:
                    im = im.transpose(Image.FLIP_LEFT_RIGHT)
                by_hand.append(np.asarray(im).transpose(2, 0, 1))
            assert torch.equal(expected, torch.from_numpy(np.concatenate(by_hand)))
            boxes.add(clip.box)
            flips.add(clip.flip)
            # Pixels: only the resampling differs (PIL vs torchvision's antialiased bilinear).
            got = EncodedBatch([clip]).augment("cpu")[0]
            diff = (got.int() - expected.int()).abs()
            assert diff.max() <= 1, f"seed {seed} video {i}: {diff.max()} grey levels apart"
            assert diff.float().mean() < 0.3
    assert len(boxes) > 10  # the seeds cover many boxes ...
    assert flips == ({True, False} if flip else {False})  # ... and both flips


def test_non_jpeg_frames_travel_as_pixels(frames_root):
    frame = EncodedFrame.from_file(str(frames_root / "png" / "img_00001.png"))
    assert not frame.is_jpeg and frame.size == (96, 80)
    assert torch.equal(frame.data.permute(1, 2, 0), torch.from_numpy(frame_pixels(7, 1, (96, 80))))


def test_flow_is_refused_with_a_clear_error(frames_root):
    ds = TSNDataSet(
        str(frames_root),
        str(frames_root / "list.txt"),
        modality="Flow",
        image_tmpl="flow_{}_{:05d}.jpg",
        num_segments=2,
    )
    with pytest.raises(ValueError, match="RGB only"):
        use_device_decoding(ds)


def test_loader_workers_feed_the_device_path_through_to_device(frames_root):
    """A real DataLoader (2 workers, the device path's collate) gives `[B, T*3, 64, 64]` float
    clips, normalised as the PIL path's clips are, to one grey level / std."""
    pil, dev = _datasets(frames_root)

    class Seeded(torch.utils.data.Dataset):
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            random.seed(i)
            np.random.seed(i)
            return self.ds[i]

    loader = DataLoader(Seeded(dev), batch_size=3, num_workers=2, collate_fn=collate_encoded)
    (batch, labels) = next(iter(loader))
    assert isinstance(batch, EncodedBatch) and labels.tolist() == [0, 1, 2]
    x = to_device(batch, torch.device("cpu"), norm=NORM)
    assert x.shape == (3, 12, 64, 64) and x.dtype == torch.float32
    expected = to_device(
        torch.stack([Seeded(pil)[i][0] for i in range(3)]), torch.device("cpu"), norm=NORM
    )
    one_level = 1 / 255 / min(NORM.std)
    assert (x - expected).abs().max() <= one_level + 1e-6
    with pytest.raises(ValueError, match="norm"):
        to_device(batch, torch.device("cpu"))


def test_main_trains_with_device_aug_and_real_workers(data_root, tmp_path, monkeypatch):
    """`main.py --device_aug -j 2` as a user runs it: the same seed gives the same crops as the PIL
    path, so the first epoch's training loss matches it to the resampling difference."""
    import main as train_main
    from tests.test_main import tiny_args

    extra = ["--epochs", "1", "--workers", "2", "--dropout", "0"]
    pil = train_main.main(tiny_args(data_root, str(tmp_path / "pil"), *extra))
    batches = []
    augment = EncodedBatch.augment

    def counted(self, device):
        batches.append(len(self))
        return augment(self, device)

    monkeypatch.setattr(EncodedBatch, "augment", counted)
    dev = train_main.main(tiny_args(data_root, str(tmp_path / "dev"), *extra, "--device_aug"))
    assert batches == [2, 2, 2, 2]  # every training batch went through the device path

    def first_loss(run, out):
        with open(tmp_path / out / "log" / run["run_name"] / "log.csv") as f:
            return float(next(csv.DictReader(f))["train_loss"])

    a, b = first_loss(pil, "pil"), first_loss(dev, "dev")
    assert b == pytest.approx(a, rel=1e-2)  # the resampling differs by a grey level at most


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    """The evaluation tests' data and a published-format checkpoint (tests/_eval_helpers.py)."""
    from tests import _eval_helpers as H

    root = tmp_path_factory.mktemp("equivalence")
    H.write_synthetic_dataset(str(root / "data"))
    model = H.make_model(0, **H.small_model_config())
    weights = str(
        root / "TSM_synthetic_RGB_resnet18_shift8_blockres_avg_segment4_e50_cos_nl_lr0.01.pth.tar"
    )
    H.save_published(weights, model)
    return str(root / "data"), weights, model


@pytest.mark.parametrize(("crops", "dense"), [(3, True), (10, False)])
def test_test_models_device_views_score_difference_on_the_equivalence_data(
    equivalence, tmp_path, monkeypatch, capsys, crops, dense
):
    """`test_models.py --device_views` on a published-format checkpoint and the evaluation tests'
    data: scores within 5e-3 of the PIL reference (scores ~10 in size: measured up to 2e-3),
    same top-1 for every video; the default (PIL) path stays equal to the reference."""
    import test_models
    from tests import _eval_helpers as H

    monkeypatch.setattr(test_models, "setup_logging", lambda rank=0: None)
    data_root, weights, model = equivalence
    expected = H.reference_scores(model, data_root, 4, crops, dense=dense)
    scores = {}
    for flag in ([], ["--device_views"]):
        out = str(tmp_path / f"scores{len(flag)}.npz")
        argv = ["synthetic", f"--weights={weights}", "--test_segments=4", f"--test_crops={crops}"]
        argv += ["-j", "0", "--input_size=32", "--batch_size=3", "--data_root", data_root]
        argv += ["--save_scores", out, "--device", "cpu"]
        argv += ["--dense_sample"] * dense
        code = test_models.cli([*argv, *flag])
        assert code == 0, capsys.readouterr().err[-2000:]
        scores[bool(flag)] = np.load(out)["scores"]
    H.assert_close(scores[False], expected)  # PIL: the published evaluation
    diff = np.abs(scores[True] - expected).max()
    assert 0 < diff <= 5e-3, diff
    assert (scores[True].argmax(1) == expected.argmax(1)).all()


def test_video_files_are_decoded_in_the_worker_and_augmented_on_the_device(tmp_path):
    """Video files (an H.264 mp4 from libx264): the worker decodes the sampled frames (there are no
    per-frame bytes), the device crops, resizes and flips them: within one grey level of PIL."""
    import av

    from ops.dataset_config import VIDEO_TMPL

    with av.open(str(tmp_path / "v.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 72, "yuv420p"
        for t in range(12):
            frame = av.VideoFrame.from_ndarray(frame_pixels(3, t + 1, (96, 72)), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    (tmp_path / "list.txt").write_text("v.mp4 0\n")
    aug = [GroupMultiScaleCrop(48, SCALES), GroupRandomHorizontalFlip()]
    common = dict(num_segments=4, image_tmpl=VIDEO_TMPL)
    pil_tf = torchvision.transforms.Compose([*aug, Stack(), ToUint8Tensor()])
    pil = TSNDataSet(str(tmp_path), str(tmp_path / "list.txt"), transform=pil_tf, **common)
    dev_tf = DeviceTrainAugment.like(torchvision.transforms.Compose(aug))
    dev = TSNDataSet(str(tmp_path), str(tmp_path / "list.txt"), transform=dev_tf, **common)
    use_device_decoding(dev)
    flips = set()
    for seed in range(6):
        expected = _item(pil, 0, seed)
        clip = _item(dev, 0, seed)
        assert not any(f.is_jpeg for f in clip.frames)  # decoded pixels
        flips.add(clip.flip)
        got = EncodedBatch([clip]).augment("cpu")[0]
        assert (got.int() - expected.int()).abs().max() <= 1
    assert flips == {True, False}


def _one_pixel_frames(folder) -> None:
    for jpg in sorted(folder.iterdir()):
        buf = io.BytesIO()
        Image.fromarray(np.full((1, 1, 3), 120, np.uint8)).save(buf, format="JPEG")
        jpg.write_bytes(buf.getvalue())


@pytest.mark.parametrize("device_aug", [True, False])
def test_frames_too_small_to_crop_are_one_line_per_video(tmp_path, device_aug):
    # 1x1 frames: the multi-scale crop's scales give 0-pixel boxes. With --device_aug that was
    # a raw reshape traceback; the PIL path trained on black crops without a word.
    import main as train_main
    from ops.synthetic import make_tiny
    from tests.test_main import tiny_args
    from tests.test_run_safety import one_line_exit, run_dir

    root = tmp_path / "data"
    make_tiny(root)
    frames = root / "synthetic" / "frames"
    lines = (root / "synthetic" / "train_videofolder.txt").read_text().splitlines()
    _one_pixel_frames(frames / lines[0].split()[0])  # one training video of 1x1 frames
    extra = ["--epochs", "1", "--workers", "0", *(["--device_aug"] if device_aug else [])]
    argv = tiny_args(str(root), str(tmp_path / "out"), *extra)
    train_main.main(argv)  # trains, skipping (and counting) that video
    log = os.path.join(
        tmp_path, "out", "log", os.path.basename(run_dir(str(tmp_path / "out"), argv))
    )
    with open(os.path.join(log, "log.csv")) as f:
        assert [row["skipped_videos"] for row in csv.DictReader(f)] == ["1"]
    for line in lines[1:]:  # every training video: the epoch has no clip
        _one_pixel_frames(frames / line.split()[0])
    message = one_line_exit(tiny_args(str(root), str(tmp_path / "out2"), *extra))
    assert "training epoch 1 saw 0 clips" in message
