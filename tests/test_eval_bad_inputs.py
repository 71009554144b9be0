"""test_models.py and tools/export.py never report a result from non-finite numbers, refuse flags
that make the result meaningless, and never lose the evaluation to an output path (issue 19).

Each case ends in exactly one error line and a non-zero exit; nothing half-written is left."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch

import test_models
from ops import evaluation
from tests import _eval_helpers as H
from tools import export

NAME = "TSM_synthetic_RGB_resnet18_shift8_blockres_avg_segment4_e50_cos_nl_lr0.01.pth.tar"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalbad")
    data_root = str(root / "data")
    H.write_synthetic_dataset(data_root)
    model = H.make_model(0, **H.small_model_config(num_segments=4))
    good = root / "good" / NAME
    good.parent.mkdir()
    H.save_published(str(good), model)
    return {"root": root, "data_root": data_root, "model": model, "good": str(good)}


@pytest.fixture(autouse=True)
def _keep_pytest_logging(monkeypatch):
    monkeypatch.setattr(test_models, "setup_logging", lambda rank=0: None)


def run(workspace, capsys, weights: str, *extra: str) -> tuple[int, str, str]:
    argv = ["synthetic", f"--weights={weights}", "--test_segments=4", "-j", "0"]
    argv += ["--input_size=32", "--device", "cpu", "--data_root", workspace["data_root"], *extra]
    code = test_models.cli(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("test_models.py: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def broken_checkpoint(workspace, tmp_path, value: float, name: str = "new_fc.weight") -> str:
    """The good checkpoint with ``value`` written into one weight tensor (published name kept)."""
    model = H.make_model(0, **H.small_model_config(num_segments=4))
    with torch.no_grad():
        dict(model.named_parameters())[name].fill_(value)
    path = tmp_path / NAME
    H.save_published(str(path), model)
    return str(path)


# --------------------------------------------------------------------------- non-finite numbers
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_checkpoint_with_nonfinite_weights_is_refused(workspace, tmp_path, capsys, value):
    path = broken_checkpoint(workspace, tmp_path, value)
    code, out, err = run(workspace, capsys, path)
    one_line_error(code, err, "NaN or inf", "new_fc.weight")
    assert "Prec@1" not in out


def test_finite_weights_with_overflowing_scores_are_not_reported(workspace, tmp_path, capsys):
    # Finite weights, but logits of ~1e38 * features overflow to inf: the scores are checked.
    path = broken_checkpoint(workspace, tmp_path, 3e38)
    scores = tmp_path / "s.npz"
    code, out, err = run(workspace, capsys, path, "--save_scores", str(scores))
    one_line_error(code, err, "NaN or inf scores")
    assert "Prec@1" not in out and not scores.exists()


@pytest.mark.parametrize("coeff", ["nan,1", "inf,1", "0,0", "-1,1"])
def test_meaningless_ensemble_coefficients_are_refused(workspace, capsys, coeff):
    good = workspace["good"]
    code, _, err = run(
        workspace, capsys, f"{good},{good}", "--test_segments=4,4", f"--coeff={coeff}"
    )
    one_line_error(code, err, "--coeff")


@pytest.mark.parametrize("max_num", ["0", "-2"])
def test_max_num_zero_is_refused(workspace, capsys, max_num):
    code, _, err = run(workspace, capsys, workspace["good"], f"--max_num={max_num}")
    one_line_error(code, err, "--max_num")


# --------------------------------------------------------------------------- output paths
def test_unwritable_save_scores_is_refused_before_evaluating(
    workspace, tmp_path, capsys, monkeypatch
):
    def no_evaluation(*a, **k):
        raise AssertionError("evaluated although the scores could not be written")

    monkeypatch.setattr(evaluation, "evaluate_ensemble", no_evaluation)
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("x")
    # a file where the folder should be; a folder where the file should be
    for target, named in ((in_the_way / "s.npz", in_the_way), (tmp_path, tmp_path)):
        code, _, err = run(workspace, capsys, workspace["good"], "--save_scores", str(target))
        one_line_error(code, err, "--save_scores", str(named))
    code, _, err = run(workspace, capsys, workspace["good"], "--report_dir", str(in_the_way))
    one_line_error(code, err, "--report_dir")


def test_full_disk_while_saving_scores_leaves_no_file(workspace, tmp_path, capsys, monkeypatch):
    real_savez = np.savez

    def savez_on_full_disk(file, **arrays):
        file.write(b"PK\x03\x04")  # the start of a zip, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", savez_on_full_disk)
    out = tmp_path / "out" / "s.npz"
    code, stdout, err = run(workspace, capsys, workspace["good"], "--save_scores", str(out))
    one_line_error(code, err, f"{out}: {os.strerror(errno.ENOSPC)}")
    assert os.listdir(out.parent) == []  # neither a partial .npz nor a temporary file
    assert "Prec@1" not in stdout  # the report comes after the scores are safe
    monkeypatch.setattr(np, "savez", real_savez)
    code, stdout, err = run(workspace, capsys, workspace["good"], "--save_scores", str(out))
    assert code == 0, err
    expected = H.reference_scores(workspace["model"], workspace["data_root"], 4, 1)
    H.assert_close(np.load(out)["scores"], expected)


# --------------------------------------------------------------------------- export
def export_one_line(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = export.main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip() and "error" in line]
    return code, out, lines[0] if len(lines) == 1 else err


def test_export_refuses_a_nan_checkpoint(workspace, tmp_path, capsys):
    path = broken_checkpoint(workspace, tmp_path, float("nan"))
    argv = ["--weights", path, "--out", str(tmp_path / "m"), "--format", "torchscript"]
    code, out, line = export_one_line(capsys, argv)
    assert code != 0 and "matches" not in out
    assert line.startswith("error: ") and "NaN or inf" in line


def test_export_check_fails_on_nan_outputs():
    model = torch.nn.Linear(3, 2)

    def nan_run(x):
        return torch.full((x.size(0), 2), float("nan"))

    result = export.check(nan_run, model, torch.ones(1, 3), atol=1e-4, rtol=1e-4)
    assert result["ok"] is False


def test_export_hint_names_explicit_attention_only_for_attention_errors(
    workspace, tmp_path, capsys, monkeypatch
):
    argv = ["--weights", workspace["good"], "--out", str(tmp_path / "m"), "--format", "torchscript"]

    def unrelated(*a, **k):
        raise RuntimeError("some exporter limitation")

    monkeypatch.setattr(export, "export_torchscript", unrelated)
    code, _, line = export_one_line(capsys, argv)
    assert code == 2 and "some exporter limitation" in line
    assert "--explicit_attention" not in line and "another --format" in line
    monkeypatch.undo()

    def sdpa_fails(*a, **k):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa_fails)
    code, _, line = export_one_line(capsys, argv)
    assert code == 2 and "--explicit_attention" in line


def test_export_full_disk_is_one_line(workspace, tmp_path, capsys, monkeypatch):
    def full_disk(path, info):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(export, "write_json", full_disk)
    argv = ["--weights", workspace["good"], "--out", str(tmp_path / "m"), "--format", "torchscript"]
    code, _, line = export_one_line(capsys, argv)
    assert code == 2 and line.startswith("error: ") and os.strerror(errno.ENOSPC) in line
