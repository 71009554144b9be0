"""NL I3D through the command-line tools, as users run them: test_models.py on a kinetics-layout
frame dataset and on video files (PyAV-encoded), tools/predict.py, tools/visualize_attention.py
and tools/export.py, with mmaction2's checkpoint layout as the weights.

Scores are checked against an independent computation of the views (tests/_eval_helpers.py's PIL
pipeline, frame numbers from mmaction2's SampleFrames formula and from the published TSM dense
formula worked out here). The model is NL I3D-ResNet50 with the seeded weights of
tests/test_mmaction_compat.py, tested at 32 px (scale 36) so that 30 views of 32 frames take
seconds.
"""

from __future__ import annotations

import json
import os

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import test_models
from ops.model_loading import load_model
from ops.models import I3D
from tests import _eval_helpers as H
from tests.test_mmaction_compat import NAME, layout, seeded_weights
from tools import export, predict, visualize_attention

# (name, frames, label, (width, height)): longer than a 64-frame window, and shorter than the
# 63-frame test span (every clip loops); landscape and portrait frames
VIDEOS = [("vid_a", 70, 3, (60, 44)), ("vid_b", 40, 7, (42, 50))]  # even: yuv420p
SIZE = 32  # input size: scale and full-res crop 36
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def encode_mp4(path: str, frames: list[np.ndarray]) -> None:
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"bf": "2", "g": "8", "crf": "18"}
        for arr in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        container.mux(stream.encode(None))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Kinetics frame folders and lists, the same videos as mp4 files with mmaction2's video
    list, a 400-name category file and an mmaction2-layout NL I3D checkpoint."""
    root = tmp_path_factory.mktemp("i3d")
    data = root / "data"
    frames_dir = data / "kinetics" / "images"
    videos_dir = data / "kinetics400" / "videos_val"
    videos_dir.mkdir(parents=True)
    (data / "kinetics" / "labels").mkdir(parents=True)
    for v, (name, n, _, size) in enumerate(VIDEOS):
        (frames_dir / name).mkdir(parents=True)
        pixels = [H.frame_pixels(v, i, size) for i in range(1, n + 1)]
        for i, arr in enumerate(pixels, 1):
            Image.fromarray(arr).save(frames_dir / name / f"img_{i:05d}.jpg", quality=95)
        encode_mp4(str(videos_dir / f"{name}.mp4"), pixels)
    for split in ("train", "val"):
        lines = "".join(f"{name} {n} {label}\n" for name, n, label, _ in VIDEOS)
        (data / "kinetics" / "labels" / f"{split}_videofolder.txt").write_text(lines)
        lines = "".join(f"{name}.mp4 {label}\n" for name, _, label, _ in VIDEOS)
        (data / "kinetics400" / f"kinetics400_{split}_list_videos.txt").write_text(lines)
    categories = root / "kinetics_classes.txt"
    categories.write_text("".join(f"class_{i}\n" for i in range(400)))
    weights = root / NAME.format("embedded-gaussian")
    torch.save({"meta": {}, "state_dict": seeded_weights(layout(), 0)}, weights)
    models = {}

    def model(segments: int):
        if segments not in models:
            models[segments] = load_model(weights, num_segments=segments, input_size=SIZE)[0]
        return models[segments]

    return {
        "root": root,
        "data": str(data),
        "frames": frames_dir,
        "videos": videos_dir,
        "weights": str(weights),
        "categories": str(categories),
        "model": model,
    }


# --------------------------------------------------------------------------- the reference
def mmaction_starts(F: int, clips: int = 10, span: int = 63) -> list[int]:
    """mmaction2's SampleFrames test offsets: round(k * max(F - span, 0) / 9); the span of a
    clip of 32 frames 2 apart is 63, of 8 frames 8 apart 57."""
    return [int(np.round(k * max(F - span, 0) / (clips - 1))) for k in range(clips)]


def tsm_starts(F: int, clips: int = 10) -> list[int]:
    """The published TSM dense test starts: int(linspace(0, max(F - 64, 0), 10))."""
    return [int(s) for s in np.linspace(0, max(F - 64, 0), clips)]


def test_the_hand_computed_starts():
    # F=70: 7/9 = 0.78 -> 0 1 2 2 3 4 5 5 6 7 (mmaction2); int(linspace(0, 6, 10)) = 0 0 1 2 2 3 4
    # 4 5 6 (TSM); F=40 is shorter than both windows: 0 everywhere
    assert mmaction_starts(70) == [0, 1, 2, 2, 3, 4, 5, 5, 6, 7]
    assert tsm_starts(70) == [0, 0, 1, 2, 2, 3, 4, 4, 5, 6]
    assert mmaction_starts(40) == tsm_starts(40) == [0] * 10


def decoded_frames(ws, name: str, source: str) -> list[Image.Image]:
    """Every frame of a video, 0-based: the JPEGs, or a plain PyAV decode of the mp4."""
    if source == "frames":
        folder = ws["frames"] / name
        return [Image.open(folder / f) for f in sorted(os.listdir(folder))]
    with av.open(str(ws["videos"] / f"{name}.mp4")) as container:
        return [Image.fromarray(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


@torch.no_grad()
def reference_scores(
    ws, source: str, starts, softmax: bool, segments: int = 32, crops: int = 3, videos=VIDEOS
) -> np.ndarray:
    """Per video: 10 clips of ``segments`` frames ``64 // segments`` apart (wrapping) from
    ``starts(F)``, resized (shorter side 36), ``crops`` crops of 36 (3: along the longer side;
    1: the centre), the mean of the views' logits / softmax."""
    model, scale = ws["model"](segments), SIZE * 256 // 224
    crop = scale if crops == 3 else SIZE  # --full_res with 3 crops, the input size with 1
    stride = 64 // segments
    out = []
    for name, n, _, _ in videos:
        frames = decoded_frames(ws, name, source)
        assert len(frames) == n
        views = []
        for s in starts(n):
            clip = [H.resize_shorter(frames[(s + stride * i) % n], scale) for i in range(segments)]
            w, h = clip[0].size
            for left, top, _ in H.crop_boxes(w, h, crop, crops):
                views.append(
                    np.concatenate(
                        [H.to_input(im.crop((left, top, left + crop, top + crop))) for im in clip]
                    )
                )  # [T*3, crop, crop]
        logits = model(torch.from_numpy(np.stack(views))).double()  # [views, 400]
        per_view = torch.softmax(logits, dim=1) if softmax else logits
        out.append(per_view.mean(dim=0).numpy())
    return np.stack(out)


def run_test_models(ws, tmp_path, capsys, monkeypatch, *flags) -> tuple[np.ndarray, str]:
    """test_models.py kinetics --weights <mmaction2 file> --dense_sample ``flags`` (default: the
    issue's --test_segments 32 --test_crops 3 --full_res) at 32 px."""
    monkeypatch.setattr(test_models, "setup_logging", lambda rank=0: None)
    out = str(tmp_path / "scores.npz")
    argv = ["kinetics", "--weights", ws["weights"], "--dense_sample", "--input_size", str(SIZE)]
    if "--test_segments" not in flags:
        argv += ["--test_segments", "32", "--test_crops", "3", "--full_res"]
    argv += ["-j", "0", "--device", "cpu", "--data_root", ws["data"], "--save_scores", out]
    argv += ["--batch_size", "1"]
    code = test_models.cli(argv + list(flags))
    stdout, err = capsys.readouterr()
    assert code == 0, err
    data = np.load(out)
    assert data["labels"].tolist() == [v[2] for v in VIDEOS]
    return data["scores"], stdout + err


def test_test_models_runs_an_mmaction2_file_with_mmaction2s_clips(
    ws, tmp_path, capsys, monkeypatch
):
    # quick: 8 frames 8 apart (SampleFrames(8, 8): span 57), 10 clips x 1 centre crop
    scores, _ = run_test_models(
        ws, tmp_path, capsys, monkeypatch, "--test_segments", "8", "--clip_sampling", "mmaction"
    )
    starts = lambda F: mmaction_starts(F, span=57)  # noqa: E731
    H.assert_close(scores, reference_scores(ws, "frames", starts, False, segments=8, crops=1))


@pytest.mark.slow
def test_test_models_on_frames_with_mmaction2s_protocol(ws, tmp_path, capsys, monkeypatch):
    # mmaction2's NL I3D test: SampleFrames(32, 2, 10 clips), ThreeCrop 256, average_clips 'prob'
    scores, _ = run_test_models(
        ws, tmp_path, capsys, monkeypatch, "--clip_sampling", "mmaction", "--softmax"
    )
    H.assert_close(scores, reference_scores(ws, "frames", mmaction_starts, softmax=True))


@pytest.mark.slow
def test_test_models_on_video_files_with_the_published_command(ws, tmp_path, capsys, monkeypatch):
    # test_models.py kinetics --weights <mmaction2 file> --test_segments 32 --dense_sample
    # --test_crops 3 --full_res, on the video list: TSM's dense starts, logits averaged
    scores, log = run_test_models(ws, tmp_path, capsys, monkeypatch, "--videos")
    H.assert_close(scores, reference_scores(ws, "video", tsm_starts, softmax=False))


def test_clip_sampling_needs_dense_sample(ws, capsys):
    code = test_models.cli(
        ["kinetics", "--weights", ws["weights"], "--clip_sampling", "mmaction", "--device", "cpu"]
    )
    err = capsys.readouterr().err
    assert code != 0 and "--clip_sampling mmaction places dense clips: add --dense_sample" in err


# --------------------------------------------------------------------------- predict
def test_predict_gives_the_mean_softmax_of_the_views(ws, capsys):
    folder = str(ws["frames"] / "vid_a")
    argv = [folder, "--weights", ws["weights"], "--clips", "10", "--clip_sampling", "mmaction"]
    argv += ["--crops", "3", "--full_res", "--input_size", str(SIZE), "--segments", "8"]
    argv += ["--category_file", ws["categories"], "--device", "cpu", "--json", "--topk", "5"]
    assert predict.main(argv) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    starts = lambda F: mmaction_starts(F, span=57)  # noqa: E731
    expected = reference_scores(ws, "frames", starts, True, segments=8, videos=VIDEOS[:1])[0]
    top = np.argsort(-expected)[:5]
    assert [e["index"] for e in result["top"]] == top.tolist()
    assert [e["name"] for e in result["top"]] == [f"class_{k}" for k in top]
    got = np.array([e["probability"] for e in result["top"]])
    np.testing.assert_allclose(got, expected[top], rtol=1e-3, atol=1e-6)


# --------------------------------------------------------------------------- attention maps
def test_visualize_attention_of_an_nl_i3d_block(ws, tmp_path, monkeypatch):
    folder = str(ws["frames"] / "vid_a")
    frames, numbers = visualize_attention.load_clip(folder, 32, consecutive=True)
    assert numbers == [4 + 2 * i for i in range(32)]  # the centre clip: (70 - 63) // 2 = 3
    frames, numbers = visualize_attention.load_clip(folder, 16, consecutive=True)
    assert numbers == [5 + 4 * i for i in range(16)]  # 16 frames 4 apart: (70 - 61) // 2 = 4

    model, meta = load_model(ws["weights"], num_segments=16)
    block = model.base_model.layer3[1].nl
    seen = {}
    block.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    monkeypatch.setattr(visualize_attention, "load_model", lambda *a, **k: (model, meta))
    out = tmp_path / "attention.png"
    result = visualize_attention.visualize(
        ws["weights"], folder, str(out), block_name="layer3.1", query=(8, 100, 60), segments=16
    )
    assert out.is_file() and Image.open(out).size[0] == 16 * 224
    # layer3 of a 16-frame clip at 224 px: 2 x 14 x 14 targets, sub-sampled 2 x 7 x 7 sources;
    # the query (t=8, y=100, x=60) is cell (8 * 2 // 16, 100 * 14 // 224, 60 * 14 // 224)
    x = seen["x"][0:1].double()
    theta = F.conv3d(x, block.theta.weight.double(), block.theta.bias.double()).flatten(2)[0]
    phi = F.conv3d(x, block.phi.weight.double(), block.phi.bias.double())
    phi = F.max_pool3d(phi, (1, 2, 2)).flatten(2)[0]
    target = (1 * 14 + 6) * 14 + 3
    expected = torch.softmax(phi.t() @ theta[:, target], dim=0).reshape(2, 7, 7)
    torch.testing.assert_close(result["map"].double(), expected, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- export
def _export(ws, tmp_path, fmt: str) -> tuple[str, torch.Tensor, torch.Tensor]:
    """Export the mmaction2 file (8 frames, 32 px); the eager logits of a new clip."""
    out = str(tmp_path / "nl_i3d")
    info = export.export(ws["weights"], out, formats=(fmt,), segments=8, input_size=SIZE)
    assert info["input"]["shape"] == [1, 8 * 3, SIZE, SIZE] and info["checks"][fmt]["ok"]
    model = ws["model"](8)
    assert isinstance(model, I3D)
    x = torch.randn(1, 8 * 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return out, x, model(x)


def test_torchscript_export_gives_the_eager_logits(ws, tmp_path):
    out, x, expected = _export(ws, tmp_path, "torchscript")
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(out + ".pt")(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_onnx_export_gives_the_eager_logits(ws, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    out, x, expected = _export(ws, tmp_path, "onnx")
    session = onnxruntime.InferenceSession(out + ".onnx", providers=["CPUExecutionProvider"])
    onnx_logits = torch.from_numpy(session.run(["logits"], {"clip": x.numpy()})[0])
    torch.testing.assert_close(onnx_logits, expected, rtol=1e-4, atol=1e-4)
