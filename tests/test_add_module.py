"""README's "Add your own module" walkthrough, followed literally, on a copy of the repository.

The test reads the section from README.md, so the walkthrough and the test cannot drift: each
python block starts with a ``# <path>`` line naming the file it goes to, and the bash blocks hold
the commands. It copies the repository's files (``git ls-files``, no ``.venv``) to a temporary
folder, writes a tiny synthetic dataset where the commands look for data (``./data``), writes the
blocks to the files they name and runs the commands as they are written, each as a subprocess of
this repository's python in the copy; only ``<run>`` is filled in, with the run folder that
``main.py`` created. Nothing else is added to the commands.

What it checks: the walkthrough adds one new file and edits none; the new block is attached where
the command says, every one of its parameters trained; ``test_models.py`` tests the checkpoint at
the frames and size it was trained with, without being given the block type or the frames.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import main as train_main
from ops.blocks import BLOCKS
from ops.checkpoint import load_checkpoint
from ops.synthetic import make_tiny

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Add your own module"
# Settings of the model that test_models.py must take from the checkpoint.
MODEL_FLAGS = (
    "--nl_type",
    "--nl_where",
    "--non_local",
    "--test_segments",
    "--input_size",
    "--arch",
)


def walkthrough() -> tuple[dict[str, str], list[str]]:
    """README's section: {file path -> content} of its python blocks, and its commands."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    files = {}
    for block in re.findall(r"```python\n(.*?)```", section, flags=re.S):
        code = textwrap.dedent(block)
        first, _, _ = code.partition("\n")
        assert first.startswith("# "), (
            f"README: a python block must start with '# <path>': {first!r}"
        )
        files[first[2:].strip()] = code
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in textwrap.dedent(block).replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return files, commands


def copy_repository(dest: Path) -> Path:
    """The repository's files as git knows them (tracked, and new ones not ignored), no .venv."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file() and not name.startswith(".venv/"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    make_tiny(str(dest / "data"))  # where the commands look for data: ./data
    return dest


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """A README command in the copy, with this repository's python for ``python``."""
    argv = shlex.split(command)
    assert argv[0] == "python", f"README command does not start with python: {command}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RNL_DATA_ROOT")}
    return subprocess.run(
        [sys.executable, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def flag(command: str, name: str) -> str:
    argv = shlex.split(command)
    return argv[argv.index(name) + 1]


def write_files(root: Path, files: dict[str, str]) -> None:
    for path, code in files.items():
        (root / path).write_text(code, encoding="utf-8")


def fill_run(command: str, root: Path) -> str:
    """``<run>`` in a command: the one run folder main.py made under checkpoint/."""
    runs = sorted(p.name for p in (root / "checkpoint").iterdir())
    assert len(runs) == 1, f"expected one run folder, found {runs}"
    return command.replace("<run>", runs[0])


def test_the_walkthrough_writes_one_new_file_and_edits_none():
    files, commands = walkthrough()
    assert len(files) == 1, f"README: expected the block's file, got {sorted(files)}"
    path = next(iter(files))
    assert path.startswith("ops/") and path.endswith(".py")
    assert not (REPO / path).exists(), f"{path} exists in the repository: README would edit it"
    train, test = commands  # train, then test: nothing else to run
    assert shlex.split(train)[:2] == ["python", "main.py"]
    assert shlex.split(test)[:2] == ["python", "test_models.py"]
    given = [f for f in MODEL_FLAGS if f in shlex.split(test)]
    assert not given, f"README's test command passes model settings {given}"
    block_type = flag(train, "--nl_type")
    assert f'@register_block("{block_type}")' in files[path]


def _block_parameters(state_dict: dict, prefix: str) -> dict[str, torch.Tensor]:
    """The block's parameters under ``prefix``: its state_dict entries but BatchNorm's buffers."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return {
        k[len(prefix) :]: v
        for k, v in state_dict.items()
        if k.startswith(prefix) and not k.endswith(buffers)
    }


def _trained(value: torch.Tensor, momentum: torch.Tensor) -> bool:
    """Whether a parameter received gradients, judged from its value and its SGD momentum buffer
    after the run (its initial value is not saved). Weight decay alone leaves a zero-init
    parameter at 0, and any other parameter a multiple of its initial value, with a momentum
    buffer (a sum of weight-decay terms) that is a multiple of it too: buffer and value are then
    parallel to float rounding (a relative residual near 1e-7). A gradient makes them point
    apart. A one-element parameter is always parallel: it counts as trained when it left 0 (the
    README's zero-init scale)."""
    if not momentum.any():
        return False  # never a non-zero update
    if value.numel() == 1:
        return bool(value.item() != 0.0)
    w, b = value.flatten().double(), momentum.flatten().double()
    if not w.any():
        return True  # a buffer on a zero value: weight decay on 0 adds nothing
    residual = b - (b @ w) / (w @ w) * w  # the part of the buffer not along the value
    return bool(residual.norm() / b.norm() > 1e-4)


def test_readme_walkthrough_trains_the_new_block_and_tests_it(tmp_path):
    files, (train, test) = walkthrough()
    root = copy_repository(tmp_path / "repo")
    write_files(root, files)

    done = run(train, root)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = root / "checkpoint" / fill_run("<run>", root)
    ckpt = load_checkpoint(run_dir / "ckpt.pth.tar")  # the last epoch: the whole training
    cfg = ckpt["model_config"]
    block_type, where = flag(train, "--nl_type"), flag(train, "--nl_where").split(",")
    assert cfg["nl_type"] == block_type and cfg["nl_where"] == where
    assert cfg["num_segments"] == int(flag(train, "--num_segments"))

    # every parameter of the new block, at each placement, trained: it is in the non-local
    # optimizer groups (ops/param_groups.py: "bias" -> nl_bias, the rest -> nl_weight, in
    # parameter order) and received gradients
    groups = {g["name"]: g["params"] for g in ckpt["optimizer"]["param_groups"]}
    state = ckpt["optimizer"]["state"]
    weights = iter(groups["nl_weight"])
    biases = iter(groups["nl_bias"])
    for place in where:
        keys = [k for k in ckpt["state_dict"] if k.startswith(f"base_model.{place}.")]
        attached = {k.split(".")[3] for k in keys if k.split(".")[3] != "block"}
        assert len(attached) == 1, f"{place}: expected one attached block, got {attached}"
        attribute = attached.pop()
        params = _block_parameters(ckpt["state_dict"], f"base_model.{place}.{attribute}.")
        assert params, f"no parameters of the block at {place}"
        for name, value in params.items():
            index = next(biases) if name.rsplit(".", 1)[-1] == "bias" else next(weights)
            momentum = state[index]["momentum_buffer"]
            assert momentum.shape == value.shape, f"{place}.{attribute}.{name}: not its group entry"
            assert _trained(value, momentum), f"{place}.{attribute}.{name} received no gradient"
    assert next(weights, None) is None and next(biases, None) is None  # nothing else in them

    tested = run(fill_run(test, root), root)
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "videos evaluated : 4" in tested.stdout and "Overall Prec@1" in tested.stdout
    # tested at the frames and input size it was trained with, without being told
    segments, size = flag(train, "--num_segments"), flag(train, "--input_size")
    assert (
        f"{segments} segments, 1 views per video (1 clips x 1 crops of {size} px)" in tested.stderr
    )


def test_a_first_run_without_the_block_file_leaves_nothing_in_the_way(tmp_path):
    """Issue 24: the command run before the block's file is written fails with one line naming
    the block type; the run it could not build claims no folder, so once the file is written the
    same command runs (it used to be refused for its run folder without --overwrite)."""
    files, (train, _) = walkthrough()
    root = copy_repository(tmp_path / "repo")
    failed = run(train, root)
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert "unknown non-local block type" in last and flag(train, "--nl_type") in last
    leftovers = [
        p for d in ("checkpoint", "log") if (root / d).is_dir() for p in (root / d).iterdir()
    ]
    assert not leftovers, f"the failed run left {leftovers}"
    write_files(root, files)
    done = run(train, root)
    assert done.returncode == 0, done.stderr[-3000:]


# --------------------------------------------------------------------------- in-process
@pytest.fixture
def readme_block(monkeypatch):
    """README's block file executed in this process: (block type, {placement: its initial
    parameters}) with the registry restored afterwards."""
    files, (train, _) = walkthrough()
    block_type = flag(train, "--nl_type")
    monkeypatch.delitem(BLOCKS, block_type, raising=False)
    namespace = {"__name__": "readme_block"}
    exec(next(iter(files.values())), namespace)  # registers block_type
    builder = BLOCKS[block_type]
    built: list[dict[str, torch.Tensor]] = []

    def recording_builder(channels, *args, **kwargs):  # keeps each new block's parameters
        parts = builder(channels, *args, **kwargs)
        if channels in (128, 256):  # resnet18's layer2 and layer3, not the parse-time check (16)
            for part in parts.values():
                built.append({n: p.detach().clone() for n, p in part.named_parameters()})
        return parts

    BLOCKS[block_type] = recording_builder  # not monkeypatch.setitem: its undo would put back
    yield block_type, built  # the builder exec registered, and later tests would see the type
    BLOCKS.pop(block_type, None)


def test_partial_bn_freezes_the_backbone_but_not_the_new_blocks_norm(
    readme_block, data_root, tmp_path
):
    block_type, built = readme_block
    # partial BN on (no --npb); from scratch its frozen BNs do not normalise, hence --gd 1
    summary = train_main.main([
        "--dataset", "synthetic", "--data_root", data_root, "--arch", "resnet18", "--pretrain", "scratch",
        "--shift", "--non_local", "--nl_type", block_type, "--nl_where", "layer2.0,layer3.0",
        "--num_segments", "4", "--input_size", "32", "--batch_size", "2", "--epochs", "1", "--lr", "0.05",
        "--workers", "0", "--root_model", str(tmp_path / "ckpt"), "--root_log", str(tmp_path / "log"),
        "--gd", "1",
    ])  # fmt: skip
    ckpt = load_checkpoint(os.path.join(summary["model_dir"], "ckpt.pth.tar"))
    sd = ckpt["state_dict"]
    attribute = next(
        k.split(".")[3] for k in sd if k.startswith("base_model.layer2.0.") and ".block." not in k
    )
    trained = _block_parameters(sd, f"base_model.layer2.0.{attribute}.")
    assert len(built) == 2 and sorted(trained) == sorted(built[0])
    for name, value in built[0].items():
        assert not torch.equal(trained[name], value), f"{attribute}.{name} never moved"
    # a frozen backbone BN keeps its initial affine parameters (1 and 0) and statistics (0, 1)
    assert torch.equal(sd["base_model.layer1.0.bn1.weight"], torch.ones(64))
    assert torch.equal(sd["base_model.layer1.0.bn1.running_mean"], torch.zeros(64))
    assert not torch.equal(sd["base_model.bn1.weight"], torch.ones(64))  # the first BN trains
