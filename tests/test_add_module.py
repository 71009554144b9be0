"""The README's "Add your own module" walkthrough, followed literally.

The test reads the code blocks of that README section, defines the example block from them,
registers it with the README's one-line registry entry, trains one epoch with main.py on tiny
synthetic data and evaluates the checkpoint with test_models.py without passing the block type.
"""

import os
import re

import numpy as np
import pytest
import torch

import main as train_main
import test_models
from ops.checkpoint import load_checkpoint
from ops.non_local import BLOCKS
from ops.synthetic import make_synthetic

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _readme_section_code() -> tuple[list[str], list[str]]:
    text = open(README).read()
    section = text.split("## Add your own module", 1)[1].split("\n## ", 1)[0]
    python = [textwrap_dedent(b) for b in re.findall(r"```python\n(.*?)```", section, flags=re.S)]
    bash = [textwrap_dedent(b) for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]
    return python, bash


def textwrap_dedent(block: str) -> str:
    import textwrap

    return textwrap.dedent(block)


@pytest.fixture
def registered_block(monkeypatch):
    python, bash = _readme_section_code()
    assert len(python) == 2, "README: expected the block class and the registry line"
    namespace: dict = {}
    exec(python[0], namespace)  # the example block, as a user would write ops/my_block.py
    entry = python[1].strip().rstrip(",")
    name, builder_src = entry.split(":", 1)
    builder = eval(builder_src, namespace)  # the one line added to BLOCKS
    monkeypatch.setitem(BLOCKS, eval(name), builder)
    assert "--nl_type tgate" in bash[0] and "--non_local" in bash[0]
    return eval(name), namespace["TemporalGate"]


def test_readme_walkthrough_trains_and_tests_a_new_block(registered_block, tmp_path):
    block_name, block_cls = registered_block
    data_root = str(tmp_path / "data")
    make_synthetic(
        data_root,
        num_videos_per_class=3,
        num_val_per_class=2,
        num_frames=(8, 10),
        size=(40, 32),
        num_classes=2,
        seed=0,
    )
    out = tmp_path / "run"
    summary = train_main.main([
        "--dataset", "synthetic", "--data_root", data_root, "--arch", "resnet18", "--pretrain", "scratch",
        "--shift", "--non_local", "--nl_type", block_name, "--nl_where", "layer2.0,layer3.0", "--npb",
        "--num_segments", "4", "--input_size", "32", "--batch_size", "2", "--epochs", "1", "--lr", "0.05",
        "--workers", "0", "--root_model", str(out / "ckpt"), "--root_log", str(out / "log"),
    ])  # fmt: skip
    assert not summary.get("stopped")
    [best] = [
        os.path.join(d, f)
        for d, _, fs in os.walk(out / "ckpt")
        for f in fs
        if f == "ckpt.best.pth.tar"
    ]
    ckpt = load_checkpoint(best)
    assert ckpt["model_config"]["nl_type"] == block_name
    assert ckpt["model_config"]["nl_where"] == ["layer2.0", "layer3.0"]
    gate = ckpt["state_dict"]["base_model.layer2.0.nl.fc.weight"]
    assert gate.abs().sum() > 0  # it started at zero: the block was in the graph and trained

    renamed = tmp_path / "my_experiment.pth"
    os.rename(best, renamed)
    scores = tmp_path / "scores.npz"
    rc = test_models.cli([
        "synthetic", "--data_root", data_root, f"--weights={renamed}", "--test_segments=4", "--test_crops=1",
        "--batch_size=2", "-j", "0", "--save_scores", str(scores),
    ])  # fmt: skip
    assert rc == 0
    result = np.load(scores)
    assert result["scores"].shape == (4, 2)

    # the model test_models.py rebuilt really holds the new block, with the trained weights
    from ops.checkpoint import load_model

    rebuilt, _ = load_model(renamed)
    blocks = [m for m in rebuilt.modules() if isinstance(m, block_cls)]
    assert len(blocks) == 2
    torch.testing.assert_close(blocks[0].fc.weight, gate)
