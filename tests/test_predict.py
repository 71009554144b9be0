"""tools/predict.py (issue 17): the probabilities of test_models.py for the same video and views,
class names, the labelled copy (--out), and one line per unreadable input.

The videos are the evaluation tests' frame folders (tests/_eval_helpers.py: landscape, portrait,
long and shorter-than-the-clip) and the same frames encoded with libx264 with B-frames; the model
is a small RNL TSM-ResNet18 at 32 px. Scores are compared with ``test_models.py --softmax
--save_scores`` run on the same files (the issue's check) and, for frame folders, with the
independent re-implementation of the test pipeline in tests/_eval_helpers.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import av
import numpy as np
import pytest
from PIL import Image

import test_models
from ops.checkpoint import save_checkpoint
from tests import _eval_helpers as H
from tools import predict

PUBLISHED = "TSM_synthetic_RGB_resnet18_shift8_blockres_avg_segment4_e50_cos_nl_lr0.01.pth.tar"


def encode_mp4(path: str, frames: list[np.ndarray], rate: int = 25) -> None:
    """libx264 with B-frames, as cameras and video sites write H.264."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"bf": "2", "g": "8", "crf": "20"}
        for arr in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        container.mux(stream.encode(None))


def decode_all(path: str) -> list[np.ndarray]:
    with av.open(path) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The synthetic dataset's frame folders, the same videos as mp4 files with a video list,
    our checkpoint (with class names) and a published-format one of the same model."""
    root = tmp_path_factory.mktemp("predict")
    data_root = str(root / "data")
    H.write_synthetic_dataset(data_root)
    videos = root / "videos"
    videos.mkdir()
    for v, (name, frames, _, size) in enumerate(H.VIDEOS):
        pixels = [H.frame_pixels(v, i, size) for i in range(1, frames + 1)]
        encode_mp4(str(videos / f"{name}.mp4"), pixels)
    video_list = root / "video_list.txt"
    video_list.write_text("".join(f"{name}.mp4 {label}\n" for name, _, label, _ in H.VIDEOS))
    model = H.make_model(0, **H.small_model_config(num_segments=4))
    own = str(root / "own.pth.tar")
    save_checkpoint(
        {
            "state_dict": model.state_dict(),
            "model_config": model.model_config(),
            "dataset": "synthetic",
            "class_names": H.CLASSES,
        },
        own,
    )
    published = str(root / PUBLISHED)
    H.save_published(published, model)
    return {
        "root": root,
        "data_root": data_root,
        "frames": [os.path.join(data_root, "synthetic", "frames", v[0]) for v in H.VIDEOS],
        "videos": [str(videos / f"{v[0]}.mp4") for v in H.VIDEOS],
        "video_list": str(video_list),
        "model": model,
        "own": own,
        "published": published,
    }


@pytest.fixture(autouse=True)
def _keep_pytest_logging(monkeypatch):
    """The CLIs install their own stderr log handler; in-process runs keep pytest's instead."""
    monkeypatch.setattr(test_models, "setup_logging", lambda rank=0: None)
    monkeypatch.setattr(predict, "setup_logging", lambda rank=0: None)


def run_predict(argv: list[str], capsys) -> tuple[int, str, str]:
    code = predict.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def predicted(argv: list[str], capsys) -> list[dict]:
    code, out, err = run_predict([*argv, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)["results"]


def probabilities(result: dict) -> np.ndarray:
    """The full probability vector of a --json result (3 classes: top-5 holds them all)."""
    probs = np.zeros(len(H.CLASSES))
    for entry in result["top"]:
        probs[entry["index"]] = entry["probability"]
    return probs


def error_lines(err: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]+", err) if line.startswith("error:")]


# --------------------------------------------------------------------------- same as test_models
@pytest.mark.parametrize(
    "source, test_models_flags, predict_flags",
    [
        ("video", ["--test_crops=3", "--twice_sample"], ["--crops", "3", "--clips", "2"]),
        ("video", ["--test_crops=1", "--dense_sample"], ["--dense_sample"]),
        ("frames", ["--test_crops=1", "--dense_sample"], ["--clips", "10"]),
        ("frames", ["--test_crops=10", "--full_res"], ["--test_crops=10", "--full_res"]),
    ],
)
def test_probabilities_equal_test_models_save_scores(
    ws, tmp_path, capsys, source, test_models_flags, predict_flags
):
    scores_file = str(tmp_path / "scores.npz")
    argv = ["synthetic", f"--weights={ws['own']}", "--test_segments=4", "-j", "0", "--softmax"]
    argv += ["--data_root", ws["data_root"], "--save_scores", scores_file, "--device", "cpu"]
    if source == "video":
        argv += ["--video_root", str(ws["root"] / "videos"), "--val_list", ws["video_list"]]
        argv += ["--train_list", ws["video_list"], "--num_class", "3"]
    code = test_models.cli([*argv, *test_models_flags])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    expected = np.load(scores_file)["scores"]
    assert np.load(scores_file)["indices"].tolist() == [0, 1, 2]  # every video was scored

    inputs = ws["videos"] if source == "video" else ws["frames"]
    results = predicted(["--weights", ws["own"], *inputs, *predict_flags], capsys)

    assert [r["input"] for r in results] == inputs
    assert [r["num_frames"] for r in results] == [v[1] for v in H.VIDEOS]
    assert [r["kind"] for r in results] == [source] * 3
    got = np.stack([probabilities(r) for r in results])
    H.assert_close(got, expected, "predict vs test_models.py --save_scores")
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)  # probabilities
    if source == "frames":  # and both agree with the independent pipeline
        reference = H.reference_scores(
            ws["model"],
            ws["data_root"],
            4,
            test_crops=10 if "--full_res" in predict_flags else 1,
            full_res="--full_res" in predict_flags,
            dense="--full_res" not in predict_flags,
            softmax=True,
        )
        H.assert_close(got, reference, "predict vs the independent pipeline")


def test_text_output_lists_top_classes_by_name(ws, capsys):
    code, out, err = run_predict(["--weights", ws["own"], ws["frames"][0], "--topk", "2"], capsys)
    assert code == 0, err
    reference = H.reference_scores(ws["model"], ws["data_root"], 4, 1, softmax=True)[0]
    order = np.argsort(-reference)[:2]
    lines = out.splitlines()
    assert lines[0].startswith(f"{ws['frames'][0]} (frame folder, 11 frames")
    assert lines[1:] == [f"  {reference[k]:.4f}  {H.CLASSES[k]}" for k in order]


# --------------------------------------------------------------------------- class names
def test_class_names_of_a_published_checkpoint(ws, tmp_path, capsys):
    """Published checkpoints store no names: the dataset's category file (dataset from the file
    name, found under --data_root), --category_file, or class numbers."""
    argv = ["--weights", ws["published"], ws["frames"][2], "--input_size", "32"]
    reference = H.reference_scores(ws["model"], ws["data_root"], 4, 1, softmax=True)[2]
    top = int(np.argmax(reference))

    from_dataset = predicted([*argv, "--data_root", ws["data_root"]], capsys)[0]["top"][0]
    assert (from_dataset["index"], from_dataset["name"]) == (top, H.CLASSES[top])
    assert from_dataset["probability"] == pytest.approx(reference[top], abs=1e-5)

    other = tmp_path / "names.txt"
    other.write_text("zero\none\ntwo\n")
    given = predicted([*argv, "--category_file", str(other)], capsys)[0]["top"][0]
    assert given["name"] == ["zero", "one", "two"][top]

    empty_root = tmp_path / "no_data"
    empty_root.mkdir()
    unnamed = predicted([*argv, "--data_root", str(empty_root)], capsys)[0]["top"][0]
    assert unnamed["name"] == f"class {top}"

    wrong = tmp_path / "two_names.txt"
    wrong.write_text("a\nb\n")
    code, _, err = run_predict([*argv, "--category_file", str(wrong)], capsys)
    assert code == 2 and err.strip().count("\n") == 0
    assert "names 2 classes but the model has 3" in err


# --------------------------------------------------------------------------- --out
def _box_and_rest(out: np.ndarray, inp: np.ndarray) -> tuple[np.ndarray, float]:
    """The top-left corner where the label goes, and the mean difference between output and
    input in the bottom half, where nothing is drawn."""
    h, w = inp.shape[:2]
    corner = out[: h // 4, : w // 3].astype(np.int16)
    rest = np.abs(out[h // 2 : h, :w].astype(np.int16) - inp[h // 2 :].astype(np.int16))
    return corner, float(rest.mean())


@pytest.mark.parametrize(
    "which, index, suffix",
    [("frames", 0, ".mp4"), ("videos", 1, ".gif"), ("odd", None, ".mp4")],
)
def test_out_writes_the_video_with_the_top1_drawn(ws, tmp_path, capsys, which, index, suffix):
    if which == "odd":  # odd frame sizes: H.264 in yuv420p needs even ones
        folder = tmp_path / "odd_video"
        folder.mkdir()
        inputs = [H.frame_pixels(7, i, (45, 33)) for i in range(1, 6)]
        for i, arr in enumerate(inputs, 1):
            Image.fromarray(arr).save(folder / f"{i:05d}.jpg", quality=95)  # Something v1 names
        path = str(folder)
        inputs = [
            np.asarray(Image.open(folder / f"{i:05d}.jpg").convert("RGB")) for i in range(1, 6)
        ]
    else:
        path = ws[which][index]
        name, frames, _, _ = H.VIDEOS[index]
        if which == "frames":
            inputs = [
                np.asarray(Image.open(os.path.join(path, f"img_{i:05d}.jpg")).convert("RGB"))
                for i in range(1, frames + 1)
            ]
        else:
            inputs = decode_all(path)
    out = str(tmp_path / f"labelled{suffix}")

    results = predicted(["--weights", ws["own"], path, "--out", out], capsys)

    assert results[0]["out"] == out and results[0]["frames_written"] == len(inputs)
    if suffix == ".mp4":
        written = decode_all(out)
    else:
        with Image.open(out) as gif:
            written = []
            for i in range(gif.n_frames):
                gif.seek(i)
                written.append(np.asarray(gif.convert("RGB")))
    assert len(written) == len(inputs)
    h, w = inputs[0].shape[:2]
    assert written[0].shape[:2] == ((h + h % 2, w + w % 2) if suffix == ".mp4" else (h, w))
    for inp, got in zip(inputs, written):
        corner, rest = _box_and_rest(got, inp)
        # the label: a dark box with light letters where the input has neither
        assert (corner.max(axis=2) < 60).mean() > 0.3 and (corner.min(axis=2) > 180).any()
        assert np.abs(corner - inp[: corner.shape[0], : corner.shape[1]]).mean() > 40
        assert rest < 12, rest  # the rest of the frame is the input (compression aside)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_out_with_several_inputs_needs_a_name_field(ws, tmp_path, capsys):
    out = str(tmp_path / "all.mp4")
    code, stdout, err = run_predict(
        ["--weights", ws["own"], *ws["frames"][:2], "--out", out], capsys
    )
    assert code == 2 and stdout == "" and "put {name} in it" in err
    assert not os.path.exists(out)

    template = str(tmp_path / "out" / "{name}.gif")
    results = predicted(["--weights", ws["own"], *ws["frames"][:2], "--out", template], capsys)
    assert [r["out"] for r in results] == [
        str(tmp_path / "out" / f"{v[0]}.gif") for v in H.VIDEOS[:2]
    ]
    with Image.open(results[1]["out"]) as gif:
        assert gif.n_frames == H.VIDEOS[1][1]


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_out_never_writes_over_the_source_videos(ws, tmp_path, capsys):
    # Issue 25: `predict.py v/a.mp4 v/b.mp4 --out 'v/{name}.mp4'` replaced both source videos
    # with labelled re-encodes and exited 0.
    v = tmp_path / "v"
    v.mkdir()
    sources = []
    for name, src in (("a", ws["videos"][0]), ("b", ws["videos"][1])):
        (v / f"{name}.mp4").write_bytes(open(src, "rb").read())
        sources.append(str(v / f"{name}.mp4"))
    before = {p: sha(p) for p in sources}
    code, out, err = run_predict(
        ["--weights", ws["own"], *sources, "--out", str(v / "{name}.mp4")], capsys
    )
    assert code == 2 and out == "" and len(error_lines(err)) == 1, err
    line = error_lines(err)[0]
    assert f"--out (for {sources[0]}) {sources[0]} is the input {sources[0]}" in line
    assert {p: sha(p) for p in sources} == before
    assert sorted(os.listdir(v)) == ["a.mp4", "b.mp4"]  # no temporary file either


def test_out_through_a_link_to_the_source_is_refused(ws, tmp_path, capsys):
    # a hard link and a symlinked folder name the source under another path
    src = tmp_path / "clip.mp4"
    src.write_bytes(open(ws["videos"][0], "rb").read())
    os.link(src, tmp_path / "hard.mp4")
    os.symlink(tmp_path, tmp_path / "alias")
    for out in (tmp_path / "hard.mp4", tmp_path / "alias" / "clip.mp4"):
        code, _, err = run_predict(["--weights", ws["own"], str(src), "--out", str(out)], capsys)
        assert code == 2 and "(the same file under another name)" in err, err
    assert sha(src) == sha(ws["videos"][0])


def test_two_inputs_of_the_same_name_never_share_an_output(ws, tmp_path, capsys):
    # Issue 25: `predict.py x/clip y/clip --out 'o/{name}.gif'` wrote both results to o/clip.gif
    # (the first was lost), although the docstring said {name} prevents that.
    x, y = tmp_path / "x" / "clip", tmp_path / "y" / "clip"
    shutil.copytree(ws["frames"][0], x)
    shutil.copytree(ws["frames"][1], y)
    template = str(tmp_path / "o" / "{name}.gif")
    code, out, err = run_predict(
        ["--weights", ws["own"], str(x), str(y), "--out", template], capsys
    )
    assert code == 2 and out == "", err
    gif = tmp_path / "o" / "clip.gif"
    line = error_lines(err)[0]
    assert f"--out (for {y}) {gif} and --out (for {x}) {gif} are the same file" in line
    assert not (tmp_path / "o").exists()  # refused before any work


# --------------------------------------------------------------------------- bad inputs
def test_unreadable_inputs_get_one_line_each_and_the_rest_still_run(ws, tmp_path, capsys):
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(open(ws["videos"][2], "rb").read()[:300])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    missing = str(tmp_path / "missing.mp4")
    bad = [str(truncated), str(text), str(empty), missing]
    argv = ["--weights", ws["own"], bad[0], ws["frames"][0], *bad[1:], ws["videos"][2]]

    code, out, err = run_predict(argv, capsys)

    assert code == 1
    errors = error_lines(err)
    assert len(errors) == len(bad)
    for line, path in zip(errors, bad):
        assert line.startswith(f"error: {path}: ")
    assert "does not exist" in errors[3] and "no frames named like" in errors[2]
    assert f"{ws['frames'][0]} (frame folder, 11 frames" in out
    assert f"{ws['videos'][2]} (video, 70 frames" in out

    code, out, _ = run_predict([*argv, "--json"], capsys)
    results = json.loads(out)["results"]
    assert code == 1 and [("error" in r) for r in results] == [1, 0, 1, 1, 1, 0]


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--clips", "3"], "--clips must be 1, 2 or 10"),
        (["--clips", "2", "--dense_sample"], "contradicts --dense_sample"),
        (["--dense_sample", "--twice_sample"], "cannot be combined"),
        (["--out", "x.avi"], "--out must end in .mp4 or .gif"),
        (["--image_tmpl", "img.jpg"], "exactly one field"),
    ],
)
def test_bad_flags_are_one_line_errors(ws, capsys, flags, needle):
    code, out, err = run_predict(["--weights", ws["own"], ws["frames"][0], *flags], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err


def test_stored_names_that_do_not_fit_the_classes_are_not_used(ws, tmp_path, capsys):
    """A checkpoint whose class_names are not one per class falls back to its dataset's file."""
    from ops.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ws["own"])
    ckpt["class_names"] = ["only", "two"]
    path = str(tmp_path / "two_names.pth.tar")
    save_checkpoint(ckpt, path)
    argv = ["--weights", path, ws["frames"][0]]
    unnamed = predicted([*argv, "--data_root", str(tmp_path)], capsys)[0]["top"]
    assert sorted(t["name"] for t in unnamed) == ["class 0", "class 1", "class 2"]
    named = predicted([*argv, "--data_root", ws["data_root"]], capsys)[0]["top"]
    assert sorted(t["name"] for t in named) == sorted(H.CLASSES)
