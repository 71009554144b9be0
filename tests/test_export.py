"""tools/export.py: exported files give the eager model's output.

A small TSM+RNL (ResNet-18, 2 frames, 32 px) with non-zero RNL output BNs, so the blocks change
the result, is saved as one of our checkpoints; the exported files are loaded back here with
the plain runtime APIs and compared with the eager model on a new clip.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ops.checkpoint import save_checkpoint
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
