"""mmaction2's NL I3D checkpoints load as they are (ops/mmaction_compat.py) and give mmaction2's
logits.

The facts come from mmaction2 itself (see tests/data/published_layouts/README.md):
- ``published_layouts/mmaction2_nl_i3d_r50_kinetics.json``: the key -> shape layout of the
  Recognizer3D built from mmaction2's NL I3D-R50 embedded-Gaussian config (the layout of the
  published ``..._20220812-afd8f562.pth``);
- ``mmaction2_nl_i3d_reference.json``: the logits mmaction2's model gives for the seeded input
  below, with the weights of the seed recipe below, for the three non-local modes.
The test writes a file in mmaction2's layout from the same recipe and checks our logits.
"""

import json
import math
import os

import numpy as np
import pytest
import torch

from ops.checkpoint import CheckpointError, load_checkpoint
from ops.mmaction_compat import mmaction_key
from ops.model_loading import load_model
from ops.models import I3D, build_model

DATA = os.path.join(os.path.dirname(__file__), "data")
LAYOUT = os.path.join(DATA, "published_layouts", "mmaction2_nl_i3d_r50_kinetics.json")
REFERENCE = os.path.join(DATA, "mmaction2_nl_i3d_reference.json")
NAME = "i3d_imagenet-pretrained-r50-nl-{}_8xb8-32x2x1-100e_kinetics400-rgb_20220812-afd8f562.pth"
DASHED = {
    "embedded_gaussian": "embedded-gaussian",
    "dot_product": "dot-product",
    "gaussian": "gaussian",
}


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def layout(mode: str = "embedded_gaussian") -> dict:
    """mmaction2's layout for ``mode``: the Gaussian block has no theta / phi convolutions."""
    full = read_json(LAYOUT)
    if mode != "gaussian":
        return full
    return {k: v for k, v in full.items() if ".theta." not in k and ".phi." not in k}


def seeded_weights(shapes: dict, seed: int) -> dict:
    """The weight recipe (in the layout's key order, one NumPy RandomState): BN running mean
    N(0, 0.1), running var U(0.5, 1.5), scale U(0.5, 1), biases N(0, 0.1); non-local theta / phi
    weights N(0, 1/sqrt(numel)) (small: bounded dot products); other weights
    N(0, 1/sqrt(fan_in)). So every non-local block adds a non-zero output."""
    rs = np.random.RandomState(seed)
    out = {}
    for key, shape in shapes.items():
        name = key.rsplit(".", 1)[-1]
        if name == "num_batches_tracked":
            out[key] = torch.tensor(0)
            continue
        if name == "running_mean":
            v = rs.normal(0.0, 0.1, shape)
        elif name == "running_var":
            v = rs.uniform(0.5, 1.5, shape)
        elif name == "weight" and len(shape) == 1:
            v = rs.uniform(0.5, 1.0, shape)
        elif name == "bias":
            v = rs.normal(0.0, 0.1, shape)
        elif ".theta." in key or ".phi." in key:
            v = rs.normal(0.0, 1.0 / math.sqrt(math.prod(shape)), shape)
        else:
            v = rs.normal(0.0, 1.0 / math.sqrt(math.prod(shape[1:])), shape)
        out[key] = torch.from_numpy(np.asarray(v, dtype=np.float32))
    return out


def seeded_input(ref: dict) -> torch.Tensor:
    """The reference clip ``[1, T*3, H, W]`` (frames in time order) from its seed."""
    n, t, c, h, w = ref["input_shape"]
    x = np.random.RandomState(ref["input_seed"]).standard_normal((n, t, c, h, w))
    return torch.from_numpy(x.astype(np.float32)).reshape(n, t * c, h, w)


def write_mmaction(path, state_dict: dict, meta: dict | None = None) -> str:
    torch.save({"meta": meta or {"mmengine_version": "0.10"}, "state_dict": state_dict}, path)
    return str(path)


def test_our_nl_i3d_maps_onto_mmaction2s_layout_key_for_key():
    with torch.device("meta"):
        model = build_model(num_class=400, num_segments=32, base_model="i3d_resnet50",
                            non_local=True, nl_type="nl", pretrain="scratch", print_spec=False)  # fmt: skip
    theirs = read_json(LAYOUT)
    mapped = {mmaction_key(k): list(v.shape) for k, v in model.state_dict().items()}
    assert None not in mapped
    assert mapped == theirs  # every key, every shape
    assert len(theirs) == 380


@pytest.mark.parametrize("mode", ["embedded_gaussian", "dot_product", "gaussian"])
def test_mmaction2_checkpoint_gives_mmaction2s_logits(tmp_path, mode):
    ref = read_json(REFERENCE)
    weights = seeded_weights(layout(mode), ref["weights_seed"])
    path = write_mmaction(tmp_path / NAME.format(DASHED[mode]), weights)
    model, meta = load_model(path)
    assert isinstance(model, I3D) and not model.training
    cfg = meta["model_config"]
    assert cfg["base_model"] == "i3d_resnet50" and cfg["num_class"] == 400
    assert cfg["nl_where"] == ["layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5"]
    assert cfg["nl_options"]["mode" if mode != "embedded_gaussian" else "sub_sample"] in (
        mode,
        True,
    )
    assert meta["dataset"] == "kinetics" and meta["dense_sample"]
    with torch.no_grad():
        logits = model(seeded_input(ref))[0].double()
    expected = torch.tensor(ref["logits"][mode], dtype=torch.float64)
    rel = float((logits - expected).norm() / expected.norm())
    assert rel <= 1e-3, rel
    assert ref["nl_effect"][mode] > 0.2  # the non-local blocks matter to these logits


def test_mode_comes_from_the_config_text_when_the_name_does_not_say(tmp_path):
    ref = read_json(REFERENCE)
    weights = seeded_weights(layout("dot_product"), ref["weights_seed"])
    cfg_text = "non_local_cfg=dict(sub_sample=True, use_scale=False, mode='dot_product')"
    path = write_mmaction(tmp_path / "renamed.pth", weights, {"cfg": cfg_text})
    model, meta = load_model(path)
    assert meta["model_config"]["nl_options"]["mode"] == "dot_product"
    assert meta["dataset"] is None
    with torch.no_grad():
        logits = model(seeded_input(ref))[0].double()
    expected = torch.tensor(ref["logits"]["dot_product"], dtype=torch.float64)
    assert float((logits - expected).norm() / expected.norm()) <= 1e-3

    write_mmaction(tmp_path / "anonymous.pth", weights)
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path / "anonymous.pth")
    msg = str(exc.value)
    assert "cannot tell whether" in msg and "nl-embedded-gaussian" in msg and "\n" not in msg


@pytest.fixture(scope="module")
def weights() -> dict:
    return seeded_weights(layout(), 0)


@pytest.mark.parametrize(
    "change,expect",
    [
        (
            lambda sd: sd.pop("backbone.layer3.5.non_local_block.theta.conv.weight"),
            "1 missing: backbone.layer3.5.non_local_block.theta.conv.weight",
        ),
        (
            lambda sd: sd.__setitem__(
                "backbone.layer1.0.conv1.conv.weight", torch.zeros(64, 64, 1, 1, 1)
            ),
            "1 with other shapes: backbone.layer1.0.conv1.conv.weight (64, 64, 1, 1, 1) for "
            "(64, 64, 3, 1, 1)",
        ),
        (
            lambda sd: sd.__setitem__("backbone.layer4.0.extra.weight", torch.zeros(1)),
            "1 unexpected: backbone.layer4.0.extra.weight",
        ),
        (
            lambda sd: sd.__setitem__("cls_head.fc_cls.bias", torch.zeros(3)),
            "cls_head.fc_cls.bias (3,) for (400,)",
        ),
    ],
)
def test_loading_is_strict_with_one_line_naming_the_tensor(tmp_path, weights, change, expect):
    sd = dict(weights)
    change(sd)
    path = write_mmaction(tmp_path / NAME.format("embedded-gaussian"), sd)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    msg = str(exc.value)
    assert expect in msg and "is an mmaction2 checkpoint that does not fit" in msg, msg
    assert "\n" not in msg


def test_a_plain_i3d_without_non_local_blocks_loads_too(tmp_path, weights):
    sd = {k: v for k, v in weights.items() if ".non_local_block." not in k}
    model, meta = load_model(write_mmaction(tmp_path / "i3d_r50_kinetics400.pth", sd))
    assert not meta["model_config"]["non_local"] and isinstance(model, I3D)
    torch.testing.assert_close(
        model.base_model.layer2[1].conv1.weight, sd["backbone.layer2.1.conv1.conv.weight"]
    )
    torch.testing.assert_close(
        model.base_model.bn1.running_var, sd["backbone.conv1.bn.running_var"]
    )
    torch.testing.assert_close(model.new_fc.bias, sd["cls_head.fc_cls.bias"])


def test_an_unpublished_files_normalisation_is_checked_and_left_out(tmp_path, weights):
    sd = dict(weights)
    sd["data_preprocessor.mean"] = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1, 1)
    sd["data_preprocessor.std"] = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1, 1)
    path = write_mmaction(tmp_path / NAME.format("embedded-gaussian"), sd)
    assert "data_preprocessor.mean" not in load_checkpoint(path)["state_dict"]
    sd["data_preprocessor.std"] = torch.ones(3, 1, 1, 1)
    path = write_mmaction(tmp_path / NAME.format("embedded-gaussian"), sd)
    with pytest.raises(CheckpointError, match=r"data_preprocessor.std \[1.0, 1.0, 1.0\] is not"):
        load_checkpoint(path)
