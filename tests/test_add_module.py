"""The README's "Add your own module" walkthrough, followed literally.

The test reads the code blocks of that README section, defines the example block from them (a
block written the way timm or SlowFast write theirs: a conv, a BatchNorm3d and a bare zero-init
``nn.Parameter``, attached under a new attribute name), registers it with the README's one-line
registry entry, trains with main.py on tiny synthetic data, checks that every parameter of the
block trained, and evaluates the checkpoint with test_models.py without passing the block type.
"""

import os
import re
import textwrap

import numpy as np
import pytest
import torch

import main as train_main
import test_models
from ops.checkpoint import load_checkpoint
from ops.model_loading import load_model
from ops.non_local import BLOCKS

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _readme_section_code() -> tuple[list[str], list[str]]:
    text = open(README).read()
    section = text.split("## Add your own module", 1)[1].split("\n## ", 1)[0]
    python = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", section, flags=re.S)]
    bash = [textwrap.dedent(b) for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]
    return python, bash


@pytest.fixture
def registered_block(monkeypatch):
    """(block type, block class, {block name -> its parameters when built}) of the README."""
    python, bash = _readme_section_code()
    assert len(python) == 2, "README: expected the block class and the registry line"
    namespace: dict = {}
    exec(python[0], namespace)  # the example block, as a user would write ops/my_block.py
    entry = python[1].strip().rstrip(",")
    name, builder_src = entry.split(":", 1)
    builder = eval(builder_src, namespace)  # the one line added to BLOCKS
    built: list[dict[str, torch.Tensor]] = []

    def recording_builder(*args, **kwargs):  # keeps each new block's initial parameters
        parts = builder(*args, **kwargs)
        for part in parts.values():
            built.append({n: p.detach().clone() for n, p in part.named_parameters()})
        return parts

    monkeypatch.setitem(BLOCKS, eval(name), recording_builder)
    assert f"--nl_type {eval(name)}" in bash[0] and "--non_local" in bash[0]
    block_cls = next(v for k, v in namespace.items() if isinstance(v, type) and k != "nn")
    return eval(name), block_cls, built


def _train(data_root: str, out, block_name: str, *extra: str) -> str:
    summary = train_main.main([
        "--dataset", "synthetic", "--data_root", data_root, "--arch", "resnet18", "--pretrain", "scratch",
        "--shift", "--non_local", "--nl_type", block_name, "--nl_where", "layer2.0,layer3.0",
        "--num_segments", "4", "--input_size", "32", "--batch_size", "2", "--epochs", "1", "--lr", "0.05",
        "--workers", "0", "--root_model", str(out / "ckpt"), "--root_log", str(out / "log"), *extra,
    ])  # fmt: skip
    assert not summary.get("stopped")
    return os.path.join(out, "ckpt", summary["run_name"], "ckpt.best.pth.tar")


def _block_parameters(state_dict: dict, block_name: str, where: str) -> dict[str, torch.Tensor]:
    prefix = f"base_model.{where}.{block_name}."
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def test_readme_walkthrough_trains_every_parameter_of_a_new_block_and_tests_it(
    registered_block, data_root, tmp_path
):
    block_name, block_cls, built = registered_block
    best = _train(data_root, tmp_path / "run", block_name, "--npb")
    ckpt = load_checkpoint(best)
    assert ckpt["model_config"]["nl_type"] == block_name
    assert ckpt["model_config"]["nl_where"] == ["layer2.0", "layer3.0"]
    # One short run (4 optimizer steps): every parameter of both blocks has left its initial
    # value, the zero-init scale included (with it stuck at 0 nothing else would train).
    assert len(built) == 2
    for where, initial in zip(("layer2.0", "layer3.0"), built):
        trained = {
            k: v for k, v in _block_parameters(ckpt["state_dict"], block_name, where).items()
            if k in initial  # parameters, not BN statistics
        }  # fmt: skip
        assert sorted(trained) == sorted(initial) and len(initial) == 4
        for name, value in initial.items():
            assert not torch.equal(trained[name], value), f"{where}.{block_name}.{name} never moved"

    renamed = tmp_path / "my_experiment.pth"
    os.rename(best, renamed)
    scores = tmp_path / "scores.npz"
    rc = test_models.cli([
        "synthetic", "--data_root", data_root, f"--weights={renamed}", "--test_segments=4", "--test_crops=1",
        "--batch_size=2", "-j", "0", "--save_scores", str(scores),
    ])  # fmt: skip
    assert rc == 0
    assert np.load(scores)["scores"].shape == (4, 2)
    # the model test_models.py rebuilt really holds the new block, with the trained weights
    rebuilt, _ = load_model(renamed)
    blocks = [m for m in rebuilt.modules() if isinstance(m, block_cls)]
    assert len(blocks) == 2
    trained = _block_parameters(ckpt["state_dict"], block_name, "layer2.0")
    for name, p in blocks[0].named_parameters():
        torch.testing.assert_close(p, trained[name])


def test_partial_bn_freezes_the_backbone_but_not_the_new_blocks_norm(
    registered_block, data_root, tmp_path
):
    block_name, _, built = registered_block
    # partial BN on; from scratch its frozen BNs do not normalise, hence a clipped gradient
    ckpt = load_checkpoint(_train(data_root, tmp_path / "run", block_name, "--gd", "1"))
    sd = ckpt["state_dict"]
    trained = _block_parameters(sd, block_name, "layer2.0")
    for name, value in built[0].items():
        assert not torch.equal(trained[name], value), f"{block_name}.{name} never moved"
    # a frozen backbone BN keeps its initial affine parameters (1 and 0) and statistics (0, 1)
    assert torch.equal(sd["base_model.layer1.0.bn1.weight"], torch.ones(64))
    assert torch.equal(sd["base_model.layer1.0.bn1.running_mean"], torch.zeros(64))
    assert not torch.equal(sd["base_model.bn1.weight"], torch.ones(64))  # the first BN trains
