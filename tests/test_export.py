"""tools/export.py: exported files give the eager model's output.

A small TSM+RNL (ResNet-18, 2 frames, 32 px) with non-zero RNL output BNs, so the blocks change
the result, is saved as one of our checkpoints; the exported files are loaded back here with
the plain runtime APIs and compared with the eager model on a new clip.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from ops.checkpoint import load_model, save_checkpoint
from ops.models import TSN
from tools import export

T, SIZE, CLASSES = 2, 32, 5
# TorchScript still works in this torch but warns that it is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    model = TSN(
        CLASSES,
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
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm3d, nn.BatchNorm1d)):  # the blocks start as identity
                m.weight.normal_()
                m.bias.normal_()
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.1)
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "rnl.pth.tar"
    save_checkpoint(
        {
            "state_dict": model.state_dict(),
            "model_config": model.model_config(),
            "dataset": "synthetic",
        },
        path,
    )
    return model, str(path)


def clip(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, T * 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("explicit", [False, True])
def test_torchscript_export_matches_eager(trained, tmp_path, capsys, explicit):
    model, weights = trained
    out = tmp_path / "model"
    extra = ["--explicit_attention"] if explicit else []

    rc = export.main(["--weights", weights, "--out", str(out), "--format", "torchscript", *extra])

    assert rc == 0
    loaded = torch.jit.load(str(out) + ".pt")
    x = clip()
    with torch.no_grad():
        expected = model(x)
        got = loaded(x)
    assert expected.shape == (1, CLASSES)
    assert expected.abs().max() > 1e-2  # a real signal, not all zeros
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    info = json.loads((tmp_path / "model.json").read_text())
    assert info["input"]["shape"] == [1, T * 3, SIZE, SIZE]
    assert info["input"]["mean"] == [0.485, 0.456, 0.406]
    assert info["output"]["shape"] == [1, CLASSES]
    assert info["attention"] == ("explicit" if explicit else "fused")
    assert info["checks"]["torchscript"]["ok"] is True
    assert "matches the eager model" in capsys.readouterr().out


def test_segments_override_changes_the_input_shape(trained, tmp_path):
    model, weights = trained
    out = str(tmp_path / "m4")
    info = export.export(weights, out, formats=("torchscript",), segments=4, batch=2)
    loaded = torch.jit.load(out + ".pt")
    x = torch.randn(2, 4 * 3, SIZE, SIZE)
    reference = TSN(
        **dict(model.model_config(), num_segments=4, pretrain="scratch", print_spec=False)
    )
    reference.load_state_dict(model.state_dict())
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x), atol=1e-5, rtol=1e-5)
    assert info["input"]["shape"] == [2, 12, SIZE, SIZE]


@pytest.mark.slow  # the torch.export-based ONNX exporter takes ~15-30 s on 2 CPU cores
def test_onnx_and_pt2_exports_match_eager(trained, tmp_path):
    import onnxruntime as ort  # requirements-dev.txt

    model, weights = trained
    out = tmp_path / "model"

    rc = export.main(["--weights", weights, "--out", str(out), "--format", "onnx", "pt2"])

    assert rc == 0
    x = clip(seed=2)
    with torch.no_grad():
        expected = model(x)
    session = ort.InferenceSession(str(out) + ".onnx", providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"clip": x.numpy()})[0])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    program = torch.export.load(str(out) + ".pt2").module()
    with torch.no_grad():
        torch.testing.assert_close(program(x), expected, atol=1e-5, rtol=1e-5)


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    rc = export.main(["--weights", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "does not exist" in err[0]


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_export_never_writes_over_its_weights(trained, tmp_path, capsys):
    # Issue 25: `export.py --weights R/ckpt.pth.tar --out R/ckpt --format pth` replaced the
    # training checkpoint with a slim one (no optimizer, epoch 0).
    model, path = trained
    run = tmp_path / "R"
    run.mkdir()
    ckpt = run / "ckpt.pth.tar"
    shutil.copy(path, ckpt)
    os.symlink(ckpt, run / "alias.pth.tar")
    before = sha(ckpt)
    for out in (run / "ckpt", run / "alias"):  # the file, then a symlink to it
        rc = export.main(["--weights", str(ckpt), "--out", str(out), "--format", "pth"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert f"--out (pth) {out}.pth.tar is the input --weights {ckpt}" in err[0]
    assert sha(ckpt) == before
    assert sorted(os.listdir(run)) == ["alias.pth.tar", "ckpt.pth.tar"]


def test_safetensors_round_trip_to_the_same_name_keeps_the_sidecar_valid(trained, tmp_path):
    # --weights x.safetensors --out x --format pth rewrites x.json as the description of the
    # same export (the docstring's conversion back): allowed, and x.safetensors still loads.
    model, path = trained
    out = str(tmp_path / "x")
    assert export.main(["--weights", path, "--out", out, "--format", "safetensors"]) == 0
    assert export.main(["--weights", out + ".safetensors", "--out", out, "--format", "pth"]) == 0
    again, _ = load_model(out + ".safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    # ... but not to --format safetensors: that would be the weights themselves
    rc = export.main(["--weights", out + ".safetensors", "--out", out, "--format", "safetensors"])
    assert rc == 2


def test_export_cli_refuses_its_weights_as_out_as_users_run_it(trained, tmp_path):
    # the command of issue 25, in a subprocess: one line, exit 2, the checkpoint untouched
    _, path = trained
    ckpt = tmp_path / "ckpt.pth.tar"
    shutil.copy(path, ckpt)
    tool = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "export.py")
    argv = [sys.executable, tool, "--weights", str(ckpt), "--out", str(tmp_path / "ckpt")]
    proc = subprocess.run([*argv, "--format", "pth"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1].startswith(f"error: --out (pth) {ckpt} is the input ")
    assert "Traceback" not in proc.stderr and sha(ckpt) == sha(path)
