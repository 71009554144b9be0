"""Checkpoints stay readable across versions (issue 25, item 7).

tests/data/checkpoints/ keeps one run checkpoint per released version, training state included,
written by tests/data/make_checkpoint_fixture.py (a TSM MobileNetV2 after epoch 1 of 2 on a tiny
synthetic dataset), with a JSON record of what wrote it. Every test run reads each of them with
today's code: loaded with its training state, evaluated by test_models.py (against the same
weights loaded into a model built here and run by hand, tests/_eval_helpers.py), and resumed by
`python main.py --resume` for its second epoch.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import test_models
from ops.checkpoint import load_checkpoint
from ops.models import TSN
from ops.synthetic import make_synthetic
from tests import _eval_helpers as H

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = sorted(glob.glob(os.path.join(REPO, "tests", "data", "checkpoints", "ckpt_v*.pth.tar")))


def record_of(path: str) -> dict:
    with open(path[: -len(".pth.tar")] + ".json") as f:
        return json.load(f)


def test_there_is_a_fixture_of_the_current_version():
    versions = [record_of(p)["version"] for p in FIXTURES]
    assert versions and all(os.path.getsize(p) < 20e6 for p in FIXTURES), versions


@pytest.fixture(params=FIXTURES, ids=os.path.basename)
def fixture(request) -> tuple[str, dict]:
    return request.param, record_of(request.param)


def _data(tmp_path, record: dict) -> str:
    data = dict(record["data"], size=tuple(record["data"]["size"]))
    root = str(tmp_path / "data")
    make_synthetic(root, **data)
    return root


def test_it_loads_with_its_training_state(fixture):
    path, record = fixture
    ckpt = load_checkpoint(path)  # weights_only
    assert ckpt["written_by"]["version"] == record["version"]
    assert ckpt["epoch"] == 1 and ckpt["iteration"] == 0 and ckpt["arch"] == "mobilenetv2"
    params = [p for group in ckpt["optimizer"]["param_groups"] for p in group["params"]]
    assert len(params) == len(ckpt["optimizer"]["state"]) > 0  # SGD momentum of every weight
    assert all("momentum_buffer" in s for s in ckpt["optimizer"]["state"].values())
    assert len(ckpt["rng_states"]) == ckpt["world_size"] == 1
    assert ckpt["run_config"]["model"]["arch"] == "mobilenetv2"
    assert ckpt["run_config"]["schedule"]["epochs"] == 2


def test_test_models_scores_it_as_its_weights_run_by_hand(fixture, tmp_path, monkeypatch, capsys):
    path, record = fixture
    root = _data(tmp_path, record)
    out = str(tmp_path / "scores.npz")
    monkeypatch.setattr(test_models, "setup_logging", lambda rank=0: None)
    argv = ["synthetic", f"--weights={path}", "--data_root", root, "-j", "0", "--device", "cpu",
            "--save_scores", out]  # fmt: skip
    assert test_models.cli(argv) == 0, capsys.readouterr().err
    # The weights in a model built here from the fixture's known settings, not its record.
    model = TSN(num_class=2, num_segments=4, modality="RGB", base_model="mobilenetv2",
                pretrain="scratch", is_shift=True, shift_div=8, shift_place="blockres",
                dropout=0.5, input_size=32, print_spec=False)  # fmt: skip
    model.load_state_dict(load_checkpoint(path)["state_dict"])
    with open(os.path.join(root, "synthetic", "val_videofolder.txt")) as f:
        videos = [(name, int(n), int(label), None) for name, n, label in map(str.split, f)]
    expected = H.reference_scores(model.eval(), root, 4, 1, videos=videos)
    scores = np.load(out)["scores"]
    assert scores.shape == (len(videos), 2)
    # A classifier after two small steps scores near 0 (its init is N(0, 0.001)): to float32
    # rounding of that scale, and the scores differ well beyond it (the check tells them apart).
    tol = 1e-4 * float(np.abs(expected).max())
    assert np.abs(scores - expected).max() <= tol and np.ptp(expected) > 100 * tol, (scores, expected)


def test_main_py_resumes_it_for_its_second_epoch(fixture, tmp_path):
    path, record = fixture
    root = _data(tmp_path, record)
    copy = str(tmp_path / "old.pth.tar")
    shutil.copyfile(path, copy)
    flags = list(record["flags"])
    i = flags.index("--stop_after_epochs")
    del flags[i : i + 2]
    argv = [*flags, "--data_root", root, "--root_model", str(tmp_path / "ckpt"),
            "--root_log", str(tmp_path / "log"), "--resume", copy, "--print-freq", "1"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, os.path.join(REPO, "main.py"), *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed {copy}: epoch 1, iteration 0" in done.stderr
    # Epoch 2 of 2 continues the cosine schedule at its position: lr/2 * (1 + cos(pi * 1/2)).
    lr = 0.01 / 2 * (1 + math.cos(math.pi * 1 / 2))
    assert f"Epoch: [2][1/2], lr: {lr:.5f}" in done.stderr, done.stderr[-3000:]
    (run,) = os.listdir(tmp_path / "ckpt")
    new = load_checkpoint(tmp_path / "ckpt" / run / "ckpt.pth.tar")
    old = load_checkpoint(path)
    assert new["epoch"] == 2 and new["written_by"]["version"] == _package_version()
    changed = [k for k, v in old["state_dict"].items() if not torch.equal(v, new["state_dict"][k])]
    assert changed and all(torch.isfinite(t).all() for t in new["state_dict"].values()
                           if t.is_floating_point())  # fmt: skip


def _package_version() -> str:
    from importlib.metadata import version

    return version("rnl-tsm")
