"""Group transforms: sizes, crop positions and pixel content on small coded images.

Images carry their coordinates (R = x, G = y), so a crop's position can be read from its
pixels. Content is compared with independent per-image PIL / torchvision computations.
"""

import random

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from ops.transforms import (
    GroupCenterCrop,
    GroupFullResSample,
    GroupMultiScaleCrop,
    GroupNormalize,
    GroupOverSample,
    GroupRandomCrop,
    GroupRandomHorizontalFlip,
    GroupScale,
    Stack,
    ToTorchFormatTensor,
)

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def coded(w, h, tag=0):
    """RGB image with R = x, G = y, B = tag."""
    yy, xx = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([xx, yy, np.full_like(xx, tag)], -1).astype(np.uint8))


def noise(w, h, seed, mode="RGB"):
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def origin(img):
    """(x, y) of the top-left pixel of a crop of a coded image."""
    a = np.asarray(img)
    return int(a[0, 0, 0]), int(a[0, 0, 1])


def test_group_scale_shorter_side_matches_torchvision_resize():
    for w, h, size, expected in [
        (40, 30, 15, (20, 15)),
        (30, 41, 15, (15, 20)),
        (34, 25, 25, (34, 25)),
    ]:
        imgs = [noise(w, h, 0), noise(w, h, 1)]
        out = GroupScale(size)(imgs)
        assert [im.size for im in out] == [expected, expected]
        ref = torchvision.transforms.Resize(size, Image.BILINEAR)
        for a, b in zip(out, imgs):
            assert np.array_equal(np.asarray(a), np.asarray(ref(b)))


def test_group_scale_is_pil_bilinear():
    img = noise(37, 29, 3)
    out = GroupScale(20)([img])[0]  # shorter side 29 -> 20, longer int(20 * 37 / 29) = 25
    assert out.size == (25, 20)
    assert np.array_equal(np.asarray(out), np.asarray(img.resize((25, 20), Image.BILINEAR)))


def test_center_crop_position():
    # 10x8 -> 4x4: left round((10-4)/2) = 3, top round((8-4)/2) = 2
    out = GroupCenterCrop(4)([coded(10, 8)])[0]
    assert out.size == (4, 4) and origin(out) == (3, 2)


def test_random_crop_same_position_for_all_frames():
    random.seed(0)
    out = GroupRandomCrop(5)([coded(12, 9, tag=1), coded(12, 9, tag=2)])
    assert [im.size for im in out] == [(5, 5), (5, 5)]
    assert origin(out[0]) == origin(out[1])
    assert 0 <= origin(out[0])[0] <= 7 and 0 <= origin(out[0])[1] <= 4


def test_fixed_offsets_hand_computed():
    # 340x256, crop 224: steps (340-224)//4 = 29, (256-224)//4 = 8
    five = GroupMultiScaleCrop.fill_fix_offset(False, 340, 256, 224, 224)
    assert five == [(0, 0), (116, 0), (0, 32), (116, 32), (58, 16)]
    thirteen = GroupMultiScaleCrop.fill_fix_offset(True, 340, 256, 224, 224)
    assert thirteen[5:] == [
        (0, 16),
        (116, 16),
        (58, 32),
        (58, 0),
        (29, 8),
        (87, 8),
        (29, 24),
        (87, 24),
    ]


def test_multiscale_crop_sizes_and_offsets():
    # shorter side 256: int(256 * s) = 256 224 192 168 (224 snaps to input 224);
    # pairs (w, h) whose scale indices differ by <= 1:
    expected_pairs = {
        (256, 256), (224, 256),
        (256, 224), (224, 224), (192, 224),
        (224, 192), (192, 192), (168, 192),
        (192, 168), (168, 168),
    }  # fmt: skip
    t = GroupMultiScaleCrop(224, [1, 0.875, 0.75, 0.66])
    random.seed(0)
    seen = set()
    for _ in range(400):
        cw, ch, ox, oy = t._sample_crop_size((340, 256))
        assert (cw, ch) in expected_pairs
        assert (ox, oy) in GroupMultiScaleCrop.fill_fix_offset(True, 340, 256, cw, ch)
        seen.add((cw, ch))
    assert seen == expected_pairs


def test_multiscale_crop_content_equals_crop_then_resize():
    imgs = [noise(60, 44, 0), noise(60, 44, 1)]
    t = GroupMultiScaleCrop(32, [1, 0.875, 0.75, 0.66])
    random.seed(123)
    cw, ch, ox, oy = t._sample_crop_size((60, 44))
    random.seed(123)
    out = t(imgs)
    for a, b in zip(out, imgs):
        assert a.size == (32, 32)
        ref = b.crop((ox, oy, ox + cw, oy + ch)).resize((32, 32), Image.BILINEAR)
        assert np.array_equal(np.asarray(a), np.asarray(ref))


def test_repeated_frames_are_processed_once_and_stay_shared():
    a, b = noise(40, 30, 0), noise(40, 30, 1)
    out = GroupMultiScaleCrop(24)([a, a, b, a])
    assert out[0] is out[1] is out[3] and out[2] is not out[0]


def test_flip_mirrors_all_frames():
    imgs = [coded(6, 4, tag=1), coded(6, 4, tag=2)]
    random.seed(1)
    assert random.random() < 0.5  # so seed 1 flips
    random.seed(1)
    out = GroupRandomHorizontalFlip()(imgs)
    for a, b in zip(out, imgs):
        assert np.array_equal(np.asarray(a), np.asarray(b)[:, ::-1])
    random.seed(0)
    assert random.random() >= 0.5  # seed 0 does not flip
    random.seed(0)
    assert GroupRandomHorizontalFlip()(imgs) == imgs


def test_flow_flip_inverts_x_only():
    x, y = noise(6, 4, 0, "L"), noise(6, 4, 1, "L")
    random.seed(1)  # flips (see above)
    out = GroupRandomHorizontalFlip(is_flow=True)([x, y, x, y])
    mx, my = np.asarray(x)[:, ::-1], np.asarray(y)[:, ::-1]
    assert np.array_equal(np.asarray(out[0]), 255 - mx)
    assert np.array_equal(np.asarray(out[1]), my)
    assert np.array_equal(np.asarray(out[2]), 255 - mx)
    assert np.array_equal(np.asarray(out[3]), my)


def test_three_crops_along_the_longer_side():
    # 40x24 frames, crop 24: w_step (40-24)//4 = 4 -> left 0, right 16, centre 8
    imgs = [coded(40, 24, tag=1), coded(40, 24, tag=2)]
    out = GroupFullResSample(24, flip=False)(imgs)
    assert len(out) == 6 and all(im.size == (24, 24) for im in out)
    assert [origin(im) for im in out] == [(0, 0)] * 2 + [(16, 0)] * 2 + [(8, 0)] * 2
    assert [int(np.asarray(im)[0, 0, 2]) for im in out] == [1, 2, 1, 2, 1, 2]  # crop-major
    # the left and right crops touch the image borders
    assert np.asarray(out[2])[0, -1, 0] == 39
    # portrait: top, bottom, centre
    out = GroupFullResSample(24, flip=False)([coded(24, 40)])
    assert [origin(im) for im in out] == [(0, 0), (0, 16), (0, 8)]


def test_three_crops_with_scale_and_flip():
    # 80x48 scaled to shorter side 24 -> 40x24; flip=True adds each view's mirror after it
    out = GroupFullResSample(24, 24, flip=True)([coded(80, 48)])
    assert len(out) == 6
    scaled = GroupScale(24)([coded(80, 48)])[0]
    assert np.array_equal(np.asarray(out[0]), np.asarray(scaled)[:, 0:24])
    assert np.array_equal(np.asarray(out[1]), np.asarray(scaled)[:, 0:24][:, ::-1])
    assert np.array_equal(np.asarray(out[2]), np.asarray(scaled)[:, 16:40])


def test_five_and_ten_crops():
    # 40x32, crop 16: steps 6 and 4 -> (0,0) (24,0) (0,16) (24,16) (12,8)
    img = coded(40, 32)
    five = GroupOverSample(16, flip=False)([img])
    assert [origin(im) for im in five] == [(0, 0), (24, 0), (0, 16), (24, 16), (12, 8)]
    ten = GroupOverSample(16, flip=True)([img])
    assert len(ten) == 10
    for i in range(5):
        assert ten[2 * i].tobytes() == five[i].tobytes()
        assert np.array_equal(np.asarray(ten[2 * i + 1]), np.asarray(five[i])[:, ::-1])


def test_ten_crop_flow_inverts_x_mirrors():
    x, y = noise(20, 16, 0, "L"), noise(20, 16, 1, "L")
    out = GroupOverSample(16, flip=True)([x, y])  # per view: [x, y, flip(x), flip(y)]
    assert len(out) == 20
    cx, cy = np.asarray(out[0]), np.asarray(out[1])
    assert np.array_equal(np.asarray(out[2]), 255 - cx[:, ::-1])
    assert np.array_equal(np.asarray(out[3]), cy[:, ::-1])


def reference_to_tensor(imgs, mean, std):
    """Independent per-image, per-channel computation of Stack + ToTensor + Normalize."""
    chans = []
    for im in imgs:
        a = np.asarray(im)
        a = a[:, :, None] if a.ndim == 2 else a
        for c in range(a.shape[2]):
            chans.append(torch.from_numpy(a[:, :, c].copy()).float().div(255))
    out = torch.stack(chans)
    for i in range(out.size(0)):
        out[i].sub_(mean[i % len(mean)]).div_(std[i % len(std)])
    return out


def test_stack_tensor_normalize_bit_identical_to_per_channel_loop():
    imgs = [noise(12, 10, s) for s in range(4)]
    imgs.append(imgs[1])  # a repeated frame
    pipeline = torchvision.transforms.Compose(
        [Stack(), ToTorchFormatTensor(), GroupNormalize(MEAN, STD)]
    )
    out = pipeline(imgs)
    assert out.shape == (15, 10, 12) and out.dtype == torch.float32
    assert torch.equal(out, reference_to_tensor(imgs, MEAN, STD))
    # every uint8 value in every channel
    ramp = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)[:, :, None].repeat(3, 2))
    assert torch.equal(pipeline([ramp]), reference_to_tensor([ramp], MEAN, STD))


def test_stack_layout_and_roll():
    a, b = noise(5, 4, 0), noise(5, 4, 1)
    s = Stack()([a, b])
    assert s.shape == (2, 4, 5, 3) and s.dtype == np.uint8
    t = ToTorchFormatTensor(div=False)(s)
    assert torch.equal(t[3 + 2], torch.from_numpy(np.asarray(b)[:, :, 2].astype(np.float32)))
    rolled = ToTorchFormatTensor(div=False)(Stack(roll=True)([a]))  # BGR
    assert torch.equal(rolled[0], torch.from_numpy(np.asarray(a)[:, :, 2].astype(np.float32)))


def test_flow_stack_one_channel_per_image():
    x, y = noise(5, 4, 0, "L"), noise(5, 4, 1, "L")
    t = ToTorchFormatTensor()(Stack()([x, y, x, y]))
    assert t.shape == (4, 4, 5)
    assert torch.equal(t[1], torch.from_numpy(np.array(y)).float().div(255))
    n = GroupNormalize([0.5], [0.226])(t.clone())
    assert torch.equal(n, reference_to_tensor([x, y, x, y], [0.5], [0.226]))


def test_to_tensor_single_image_and_bad_input():
    img = noise(5, 4, 0)
    t = ToTorchFormatTensor()(img)
    assert t.shape == (3, 4, 5)
    assert torch.equal(t, reference_to_tensor([img], [0, 0, 0], [1, 1, 1]))
    with pytest.raises(ValueError):
        ToTorchFormatTensor()([img])
    with pytest.raises(ValueError, match="GroupNormalize"):
        GroupNormalize(MEAN, STD)(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="modes"):
        Stack()([img, img.convert("L")])
