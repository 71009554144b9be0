"""uint8 clips normalised on the device (ops/device_input.py, ops.utils.to_device) give exactly the
tensors of the float path (ToTorchFormatTensor + GroupNormalize in the workers), through the
training loop, validation and test-time evaluation, with a quarter of the bytes per clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from ops.device_input import InputNorm, ToUint8Tensor
from ops.transforms import GroupNormalize, Stack, ToTorchFormatTensor
from ops.utils import to_device

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def _frames(n: int, seed: int, mode: str = "RGB", size=(20, 14)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode) for _ in range(n)]


def _float_path(images, mean=MEAN, std=STD) -> torch.Tensor:
    return GroupNormalize(mean, std)(ToTorchFormatTensor()(Stack()(images)))


def test_uint8_then_device_normalisation_equals_float_path_exactly():
    clips = [_frames(4, seed) for seed in range(3)]
    expected = torch.stack([_float_path(c) for c in clips])  # [3, 12, 14, 20]
    batch = torch.stack([ToUint8Tensor()(Stack()(c)) for c in clips])
    assert batch.dtype == torch.uint8 and batch.shape == expected.shape
    got = to_device(batch, torch.device("cpu"), norm=InputNorm(tuple(MEAN), tuple(STD)))
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)  # bit for bit
    # and both are the SPEC's formula, computed independently in numpy (float32)
    a = np.stack([np.asarray(im) for im in clips[1]]).astype(np.float32) / np.float32(255)
    ref = ((a - np.float32(MEAN)) / np.float32(STD)).transpose(0, 3, 1, 2).reshape(12, 14, 20)
    np.testing.assert_allclose(got[1].numpy(), ref, rtol=0, atol=1e-6)
    # a quarter of the bytes through the loader
    assert batch.nbytes * 4 == expected.nbytes


def test_flow_clips_one_channel_normalisation():
    images = _frames(6, 7, mode="L")  # x, y, x, y, ...
    expected = _float_path(images, [0.5], [0.226])
    got = InputNorm((0.5,), (0.226,))(ToUint8Tensor()(Stack()(images)).unsqueeze(0))
    assert torch.equal(got[0], expected)


def test_mean_and_std_are_built_once_per_device_not_per_batch(monkeypatch):
    """Building a tensor from a list on a GPU waits for the device; InputNorm builds its mean/std
    once per device (counted through `torch.tensor`), and every batch gets the same values."""
    built = []
    make = torch.tensor

    def counting(*args, **kwargs):
        built.append(str(kwargs.get("device")))
        return make(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", counting)
    mean, std = (0.375, 0.5, 0.625), (0.25, 0.125, 0.5)  # values no other test uses
    norm = InputNorm(mean, std)
    x = torch.arange(2 * 6 * 2 * 2, dtype=torch.int64).remainder(256).to(torch.uint8)
    x = x.view(2, 6, 2, 2)  # 2 clips of 2 frames
    expected = (
        x.double() / 255 - torch.as_tensor(mean, dtype=torch.float64).repeat(2)[:, None, None]
    ) / torch.as_tensor(std, dtype=torch.float64).repeat(2)[:, None, None]
    for _ in range(5):
        got = norm(x)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-5)
    assert built == ["cpu", "cpu"]  # mean and std, once, for 5 batches
    InputNorm(mean, std)(x)  # another InputNorm of the same values shares them
    assert built == ["cpu", "cpu"]
    meta = norm(x.to("meta"))  # another device: built once more, there
    assert meta.device.type == "meta" and built == ["cpu", "cpu", "meta", "meta"]
    norm(x.to("meta"))
    assert len(built) == 4


def test_uint8_without_normalisation_is_a_clear_error():
    with pytest.raises(ValueError, match="norm=InputNorm.of"):
        to_device(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), torch.device("cpu"))
    with pytest.raises(ValueError, match="no input_mean"):
        InputNorm.of(nn.Linear(2, 2))


def test_input_norm_found_through_wrappers():
    class Net(nn.Module):
        input_mean, input_std = [0.5], [0.25]

    wrapped = nn.DataParallel(Net())
    assert InputNorm.of(wrapped) == InputNorm((0.5,), (0.25,))


class _Recorder(nn.Module):
    """A linear classifier on the mean of each channel, that keeps every input it sees."""

    input_mean, input_std = MEAN, STD

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, 3)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(x.mean(dim=(2, 3)))


class _Clips(torch.utils.data.Dataset):
    def __init__(self, transform) -> None:
        self.transform = transform

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i):
        return self.transform(_frames(3, 100 + i)), i % 3


def test_training_and_validation_loops_normalise_uint8_clips_on_the_device():
    from ops.distributed import DistContext
    from ops.engine.lr_scheduler import WarmupSchedule
    from ops.engine.state import RunState
    from ops.engine.trainer import LoopSettings, TrainParts, train_one_epoch, validate

    float_tf = torchvision.transforms.Compose(
        [Stack(), ToTorchFormatTensor(), GroupNormalize(MEAN, STD)]
    )
    uint8_tf = torchvision.transforms.Compose([Stack(), ToUint8Tensor()])
    ctx = DistContext(False, 0, 1, 0, 1, torch.device("cpu"), None)
    results = {}
    for name, tf in (("float", float_tf), ("uint8", uint8_tf)):
        torch.manual_seed(0)
        model = _Recorder(9)
        settings = LoopSettings(print_freq=100, input_norm=InputNorm.of(model))
        loader = DataLoader(_Clips(tf), batch_size=2, num_workers=2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        parts = TrainParts(
            model, nn.CrossEntropyLoss(), opt, WarmupSchedule(0.1, 1, "step", [10]), settings, ctx
        )
        train_one_epoch(parts, loader, RunState(), len(loader))
        val = validate(model, loader, nn.CrossEntropyLoss(), settings, ctx)
        results[name] = (model.seen, model.fc.weight.detach().clone(), val.loss)
    seen_f, w_f, loss_f = results["float"]
    seen_u, w_u, loss_u = results["uint8"]
    assert len(seen_f) == len(seen_u) == 6  # 3 training + 3 validation batches
    for a, b in zip(seen_f, seen_u):
        assert b.dtype == torch.float32 and torch.equal(a, b)
    assert torch.equal(w_f, w_u) and loss_f == loss_u
