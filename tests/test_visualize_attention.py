"""tools/visualize_attention.py: indexing by hand, clip loading, and the PNG of a real model.

The model is a small TSM+RNL (ResNet-18, 4 frames, 32 px) whose RNL ``theta`` weights are scaled
up so that the attention is far from uniform.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ops.checkpoint import save_checkpoint
from ops.models import TSN
from ops.non_local import attention_modules
from ops.video import sample_videos_dir
from tools import visualize_attention as va

T, SIZE = 4, 32


def test_query_map_picks_the_target_column_by_hand():
    # grid (T, H, W) = (2, 2, 3): position index = (t * 2 + y) * 3 + x
    attention = torch.zeros(12, 12)  # (sources, targets)
    attention[7, 5] = 1.0  # target 5 = (0, 1, 2) attends to source 7 = (1, 0, 1)
    amap = va.query_map(attention, (2, 2, 3), (2, 2, 3), t=0, gy=1, gx=2)
    expected = torch.zeros(2, 2, 3)
    expected[1, 0, 1] = 1.0
    assert torch.equal(amap, expected)
    # sub-sampled sources: targets on (1, 4, 4), sources on (1, 2, 2)
    attention = torch.zeros(4, 16)
    attention[:, 13] = torch.tensor([0.1, 0.2, 0.3, 0.4])  # target 13 = (0, 3, 1)
    amap = va.query_map(attention, (1, 4, 4), (1, 2, 2), t=0, gy=3, gx=1)
    assert torch.equal(amap, torch.tensor([[[0.1, 0.2], [0.3, 0.4]]]))


def test_pixel_to_cell_received_map_and_top_positions():
    assert va.pixel_to_cell(63, 0, 64, 8, 8) == (7, 0)
    assert va.pixel_to_cell(8, 15, 64, 8, 8) == (1, 1)
    assert va.pixel_to_cell(31, 16, 32, 4, 2) == (3, 1)
    attention = torch.tensor([[0.1, 0.3], [0.5, 0.1], [0.2, 0.2], [0.2, 0.4]])  # (4 src, 2 tgt)
    torch.testing.assert_close(
        va.received_map(attention, (1, 2, 2)), torch.tensor([[[0.2, 0.3], [0.2, 0.3]]])
    )
    amap = torch.tensor([[[0.0, 5.0], [9.0, 1.0]], [[2.0, 0.0], [0.0, 7.0]]])
    assert va.top_positions(amap, 3) == [(0, 1, 0), (1, 1, 1), (0, 0, 1)]


def test_colourize_ends_of_the_scale():
    rgb = va.colourize(np.array([[0.0, 1.0, 2.0]]))
    assert rgb.shape == (1, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (0, 0, 110) and tuple(rgb[0, 1]) == (150, 0, 0)
    assert tuple(rgb[0, 2]) == (150, 0, 0)  # clipped


def write_frames(folder, n: int, seed: int = 0) -> list[np.ndarray]:
    """n frames of 40x36: noise plus a bright square moving right."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    frames = []
    for k in range(1, n + 1):
        a = rng.integers(0, 120, size=(36, 40, 3), dtype=np.uint8)
        a[10:20, 3 * k : 3 * k + 10] = 250
        Image.fromarray(a).save(folder / f"img_{k:05d}.jpg", quality=95)
        frames.append(a)
    return frames


def test_load_clip_from_a_folder_takes_the_segment_centres(tmp_path):
    write_frames(tmp_path / "v", 10)
    frames, numbers = va.load_clip(str(tmp_path / "v"), 4)
    # 10 frames, 4 segments: tick 2.5, centres int(1.25 + 2.5 i) + 1
    assert numbers == [2, 4, 7, 9]
    expected = np.asarray(Image.open(tmp_path / "v" / "img_00007.jpg").convert("RGB"))
    assert np.array_equal(np.asarray(frames[2]), expected)


def test_load_clip_from_a_video_file_matches_plain_decoding():
    path = f"{sample_videos_dir()}/carphone_pristine.mp4"
    frames, numbers = va.load_clip(path, 4)
    # 120 frames, 4 segments: tick 30, centres int(15 + 30 i) + 1
    assert numbers == [16, 46, 76, 106]
    with av.open(path) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for frame, k in zip(frames, numbers):
        assert np.array_equal(np.asarray(frame), decoded[k - 1])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = TSN(
        3,
        T,
        "RGB",
        base_model="resnet18",
        pretrain="scratch",
        is_shift=True,
        non_local=True,
        dropout=0.5,
        print_spec=False,
        input_size=SIZE,
    )
    with torch.no_grad():
        for name, m in model.named_modules():
            if name.endswith("nl.theta"):
                m.weight.mul_(10.0)  # peaky attention
    path = tmp_path_factory.mktemp("ckpt") / "rnl.pth"
    save_checkpoint({"state_dict": model.state_dict(), "model_config": model.model_config()}, path)
    return model.eval(), str(path)


def explicit_attention(model, block_name: str, x: torch.Tensor) -> torch.Tensor:
    """softmax_m(r_m . r_n) of the block, recomputed here from its input: (P_source, P)."""
    block = attention_modules(model)[block_name]
    seen = {}
    handle = block.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model(x)
        handle.remove()
        r = block.penta(block.theta(seen["x"]))[0].flatten(1)  # (C', P)
        return F.softmax(r.t() @ r, dim=0)  # (sources, targets)


def test_png_overlay_follows_the_query(checkpoint, tmp_path, capsys):
    model, weights = checkpoint
    write_frames(tmp_path / "v", 12)
    outs = {q: tmp_path / f"q{i}.png" for i, q in enumerate(["0,2,2", "3,29,29"])}
    for q, out in outs.items():
        rc = va.main(["--weights", weights, "--video", str(tmp_path / "v"), "--query", q,
                      "--block", "layer2.0", "--cell", "48", "--out", str(out)])  # fmt: skip
        assert rc == 0
    images = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in outs.values()]
    assert images[0].shape == images[1].shape == (va.TITLE_H + 48 + va.CAPTION_H, T * 48, 3)
    frame_area = slice(va.TITLE_H, va.TITLE_H + 48)
    assert np.abs(images[0][frame_area] - images[1][frame_area]).mean() > 5.0
    assert "layer2.0, predicted class" in capsys.readouterr().out

    # The drawn map is the block's attention column for the query, recomputed independently.
    frames, _ = va.load_clip(str(tmp_path / "v"), T)
    x, _ = va.preprocess(frames, model)
    reference = explicit_attention(model, "layer2.0", x)  # grid (4, 4, 4) at 32 px
    result = va.visualize(
        weights, str(tmp_path / "v"), str(tmp_path / "r.png"), "layer2.0", (3, 29, 29)
    )
    n = (3 * 4 + 3) * 4 + 3  # t=3, cell (29 * 4 // 32, 29 * 4 // 32) = (3, 3)
    torch.testing.assert_close(
        result["map"], reference[:, n].reshape(4, 4, 4), atol=1e-5, rtol=1e-4
    )
    assert result["map"].max() > 5 * result["map"].mean()  # far from uniform


def test_most_attended_mode_writes_a_png(checkpoint, tmp_path):
    _, weights = checkpoint
    write_frames(tmp_path / "v", 8)
    out = tmp_path / "top.png"
    assert va.main(["--weights", weights, "--video", str(tmp_path / "v"), "--out", str(out)]) == 0
    assert Image.open(out).size == (T * 128, va.TITLE_H + 128 + va.CAPTION_H)  # default cell 128


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--block", "layer4.0"], "choose one of layer2.0, layer3.0"),
        (["--query", "4,0,0"], "outside the clip"),
        (["--query", "0,32,0"], "outside the clip"),
    ],
)
def test_bad_block_or_query_is_a_one_line_error(checkpoint, tmp_path, capsys, extra, message):
    _, weights = checkpoint
    write_frames(tmp_path / "v", 8)
    rc = va.main(
        [
            "--weights",
            weights,
            "--video",
            str(tmp_path / "v"),
            "--out",
            str(tmp_path / "o.png"),
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not (tmp_path / "o.png").exists()


def test_unreadable_video_file_is_a_one_line_error(checkpoint, tmp_path, capsys):
    _, weights = checkpoint
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(3000))
    rc = va.main(["--weights", weights, "--video", str(bad), "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: ") and "bad.mp4" in err[-1]
