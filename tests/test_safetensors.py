"""safetensors (issue 17): a published checkpoint converted with tools/export.py reloads to the
original model's outputs in test_models.py, tools/predict.py and main.py --tune_from, converts
back to a .pth.tar, and broken files or sidecars give one clear line each.

"The original model's outputs" are computed without this code's loading path: the in-memory
model that wrote the published pickle, run through the independent test pipeline of
tests/_eval_helpers.py (SPEC frame numbers, PIL crops, one view at a time).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import main as train_main
import test_models
from ops.checkpoint import CheckpointError, load_checkpoint, load_model
from tests import _eval_helpers as H
from tools import export, predict

# A published name: the settings (and dense sampling, and the dataset) are only in it.
PUBLISHED = (
    "TSM_synthetic_RGB_resnet18_shift8_blockres_avg_segment4_e50_cos_dense_nl_lr0.01.pth.tar"
)
# Videos longer than the clip: validation (main.py) and test sampling then pick the same frames.
LONG_VIDEOS = [v for v in H.VIDEOS if v[1] > 4]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A published-format pickle, converted to safetensors and renamed (the settings travel in
    the sidecar, not in the name)."""
    root = tmp_path_factory.mktemp("safetensors")
    data_root = str(root / "data")
    H.write_synthetic_dataset(data_root, videos=LONG_VIDEOS)
    model = H.make_model(3, **H.small_model_config(num_segments=4))
    published = str(root / PUBLISHED)
    H.save_published(published, model)
    code = export.main(
        ["--weights", published, "--out", str(root / "export" / "m"), "--format", "safetensors"]
        + ["--input_size", "32", "--data_root", data_root]
    )
    assert code == 0
    for suffix in (".safetensors", ".json"):  # any name works once the settings are inside
        os.replace(root / "export" / f"m{suffix}", root / f"converted{suffix}")
    return {
        "root": root,
        "data_root": data_root,
        "model": model,
        "published": published,
        "converted": str(root / "converted.safetensors"),
    }


@pytest.fixture(autouse=True)
def _keep_pytest_logging(monkeypatch):
    for module in (test_models, predict, train_main):
        monkeypatch.setattr(module, "setup_logging", lambda rank=0: None)


def test_sidecar_holds_the_settings_parsed_from_the_published_name(ws):
    with open(ws["root"] / "converted.json") as f:
        sidecar = json.load(f)
    assert sidecar["dataset"] == "synthetic" and sidecar["dense_sample"] is True
    assert sidecar["class_names"] == H.CLASSES  # from the dataset's category file
    cfg = sidecar["model_config"]
    assert (cfg["base_model"], cfg["num_segments"], cfg["num_class"]) == ("resnet18", 4, 3)
    assert cfg["is_shift"] and cfg["non_local"] and cfg["shift_div"] == 8
    assert sidecar["safetensors"]["file"] == "m.safetensors"  # as exported, before renaming
    # The weights are the original tensors, bit for bit, read with the safetensors library only.
    from safetensors.torch import load_file

    tensors = load_file(ws["converted"])
    original = ws["model"].state_dict()
    assert tensors.keys() == original.keys()
    assert all(torch.equal(tensors[k], original[k]) for k in original)


def test_test_models_reads_safetensors_to_the_original_scores(ws, tmp_path, capsys):
    out = str(tmp_path / "scores.npz")
    argv = ["synthetic", f"--weights={ws['converted']}", "--test_segments=4", "--test_crops=3"]
    argv += ["--twice_sample", "-j", "0", "--data_root", ws["data_root"], "--save_scores", out]
    code = test_models.cli([*argv, "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    expected = H.reference_scores(
        ws["model"], ws["data_root"], 4, 3, twice=True, videos=LONG_VIDEOS
    )
    H.assert_close(np.load(out)["scores"], expected)


def test_predict_reads_safetensors_to_the_original_probabilities(ws, capsys):
    frames = [os.path.join(ws["data_root"], "synthetic", "frames", v[0]) for v in LONG_VIDEOS]
    code = predict.main(["--weights", ws["converted"], *frames, "--crops", "5", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    expected = H.reference_scores(
        ws["model"], ws["data_root"], 4, 5, softmax=True, videos=LONG_VIDEOS
    )
    for result, probs in zip(json.loads(out)["results"], expected):
        assert [t["name"] for t in result["top"]] == [H.CLASSES[k] for k in np.argsort(-probs)]
        got = [t["probability"] for t in result["top"]]
        np.testing.assert_allclose(got, np.sort(probs)[::-1], atol=1e-5)


def test_tune_from_safetensors_starts_from_the_original_weights(ws, tmp_path):
    """main.py --tune_from x.safetensors --evaluate: the validation loss and accuracy of the
    original model on the validation videos (same dataset, so the classifier is loaded too)."""
    argv = ["--dataset", "synthetic", "--data_root", ws["data_root"], "--arch", "resnet18"]
    argv += ["--shift", "--non_local", "--npb", "--num_segments", "4", "--input_size", "32"]
    argv += ["--pretrain", "scratch", "--batch_size", "2", "--workers", "0", "--evaluate"]
    argv += ["--root_model", str(tmp_path / "ck"), "--root_log", str(tmp_path / "log")]
    summary = train_main.main([*argv, "--tune_from", ws["converted"]])

    logits = torch.from_numpy(
        H.reference_scores(ws["model"], ws["data_root"], 4, 1, videos=LONG_VIDEOS)
    )
    labels = torch.tensor([v[2] for v in LONG_VIDEOS])
    assert summary["val_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-4)
    top1 = 100.0 * (logits.argmax(1) == labels).double().mean().item()
    assert summary["val_top1"] == pytest.approx(top1)
    # the classifier lr x5 follows the sidecar's dataset (the same one: off), as for a pickle
    dry = train_main.main([*argv, "--tune_from", ws["converted"], "--dry_run"])
    assert dry["resolved"]["fc_lr5"] is False


def test_converts_back_to_a_pth_tar(ws, tmp_path):
    out = str(tmp_path / "back")
    assert export.main(["--weights", ws["converted"], "--out", out, "--format", "pth"]) == 0
    ckpt = torch.load(out + ".pth.tar", map_location="cpu", weights_only=True)
    original = ws["model"].state_dict()
    assert ckpt["state_dict"].keys() == original.keys()
    assert all(torch.equal(ckpt["state_dict"][k], original[k]) for k in original)
    assert ckpt["dataset"] == "synthetic" and ckpt["dense_sample"] is True
    assert ckpt["class_names"] == H.CLASSES
    # a file name that says nothing: the settings come from inside
    renamed = str(tmp_path / "anything.pth.tar")
    os.replace(out + ".pth.tar", renamed)
    model, meta = load_model(renamed)
    assert meta["model_config"]["num_segments"] == 4 and meta["class_names"] == H.CLASSES
    x = torch.randn(2, 12, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ws["model"](x), rtol=0, atol=0)


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_converting_a_pickle_never_runs_its_code(ws, tmp_path, capsys):
    evil = tmp_path / PUBLISHED
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": _Evil(str(marker))}, evil)
    code = export.main(
        ["--weights", str(evil), "--out", str(tmp_path / "e"), "--format", "safetensors"]
    )
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists() and "refused to load" in err
    assert not list(tmp_path.glob("e.*"))


# --------------------------------------------------------------------------- bad files
@pytest.fixture
def broken(ws, tmp_path):
    """Make a broken copy of the converted file: ``broken(kind) -> path``."""

    def make(kind: str) -> str:
        path = tmp_path / "w.safetensors"
        shutil.copy(ws["converted"], path)
        sidecar = json.loads((ws["root"] / "converted.json").read_text())
        if kind == "no sidecar":
            return str(path)
        if kind == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        if kind == "other weights":  # the sidecar of another export (another model's)
            other = H.make_model(5, **H.small_model_config(num_segments=4, non_local=False))
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in other.state_dict().items()}, path)
        if kind == "other settings":  # hand-edited settings that do not build these weights
            sidecar["model_config"]["non_local"] = False
            del sidecar["safetensors"]
        if kind == "not json":
            (tmp_path / "w.json").write_text("{ model_config: ")
            return str(path)
        if kind == "integer weights":  # weights cast to integers, with a sidecar that matches
            from safetensors.torch import save_file

            from ops.checkpoint import file_sha256

            sd = load_checkpoint(ws["converted"])["state_dict"]
            ints = {
                k: (v.round().to(torch.int32) if v.is_floating_point() else v)
                for k, v in sd.items()
            }
            save_file({k: v.contiguous() for k, v in ints.items()}, path)
            sidecar["safetensors"]["sha256"] = file_sha256(path)
        (tmp_path / "w.json").write_text(json.dumps(sidecar))
        return str(path)

    return make


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("no sidecar", "has no sidecar"),
        ("truncated", "incomplete (truncated)"),
        ("other weights", "was written for other weights"),
        ("other settings", "does not match the weights"),
        ("not json", "is not readable JSON"),
        # loaded into float weights, they scored 50% without a word
        ("integer weights", "are not floating point"),
    ],
)
def test_bad_safetensors_are_one_line_errors(ws, broken, capsys, kind, needle):
    path = broken(kind)
    with pytest.raises(CheckpointError, match=re.escape(needle)):
        load_model(path)
    argv = ["synthetic", f"--weights={path}", "-j", "0", "--data_root", ws["data_root"]]
    assert test_models.cli([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("test_models.py: error: ") and needle in err
    frames = os.path.join(ws["data_root"], "synthetic", "frames", LONG_VIDEOS[0][0])
    assert predict.main(["--weights", path, frames]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err


def test_a_pickle_is_not_read_as_safetensors(tmp_path, ws):
    fake = tmp_path / "x.safetensors"
    shutil.copy(ws["published"], fake)
    shutil.copy(ws["root"] / "converted.json", tmp_path / "x.json")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(fake)
