"""ops/param_groups.py: every trainable parameter in exactly one optimizer group, the published
configurations grouped exactly as before the rules moved to named_parameters(), and a new block's
parameters (whatever their names) trained."""

import json

import pytest
import torch
from torch import nn

from ops.models import TSN
from ops.non_local import BLOCKS
from ops.param_groups import GROUPS, check_param_groups
from tests.data.optimizer_groups import CONFIGS, PATH, build, describe_groups


@pytest.fixture(scope="module")
def reference() -> dict:
    with open(PATH) as f:
        return json.load(f)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_groups_equal_the_reference_written_before_the_rules_changed(name, reference):
    model = build(CONFIGS[name])
    # names, multipliers and each group's parameters in order (the optimizer-state layout)
    assert describe_groups(model, model.get_optim_policies()) == reference[name]


def _assert_each_trainable_parameter_once(model: nn.Module, groups: list[dict]) -> None:
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert [g["name"] for g in groups] == list(GROUPS)


@pytest.mark.parametrize("partial_bn", [True, False])
@pytest.mark.parametrize("nl_type", list(BLOCKS))
def test_every_registered_block_type_puts_each_trainable_parameter_in_one_group(
    nl_type, partial_bn
):
    model = TSN(
        5, 4, "RGB", base_model="resnet18", is_shift=True, non_local=True, nl_type=nl_type,
        nl_where="layer1.1,layer2.0,layer3.1,layer4.0", dropout=0.5, partial_bn=partial_bn,
        pretrain="scratch", print_spec=False,
    )  # fmt: skip
    _assert_each_trainable_parameter_once(model, model.get_optim_policies())


class ProbeBlock(nn.Module):  # the block of issue 15, attached as {"probe": ProbeBlock(channels)}
    def __init__(self, channels):
        super().__init__()
        self.proj = nn.Conv3d(channels, channels, 1)
        self.norm = nn.BatchNorm3d(channels)
        self.gamma = nn.Parameter(torch.zeros(1))  # zero-init residual scale

    def forward(self, x):
        return x + self.gamma * self.norm(self.proj(x))


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setitem(
        BLOCKS, "probe", lambda channels, stage, first, **_: {"probe": ProbeBlock(channels)}
    )


@pytest.mark.parametrize("partial_bn", [True, False])
def test_a_new_block_under_a_new_name_gets_the_non_local_groups_and_is_not_frozen(
    probe, partial_bn
):
    model = TSN(
        5, 4, "RGB", base_model="resnet18", is_shift=True, non_local=True, nl_type="probe",
        nl_where="layer2.0,layer3.0", dropout=0.5, partial_bn=partial_bn, pretrain="scratch",
        print_spec=False,
    )  # fmt: skip
    groups = model.get_optim_policies()
    _assert_each_trainable_parameter_once(model, groups)
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}
    block = "base_model.layer2.0.probe."
    assert {block + n for n in ("proj.weight", "norm.weight", "gamma")} <= by_group["nl_weight"]
    assert {block + n for n in ("proj.bias", "norm.bias")} <= by_group["nl_bias"]
    model.train()
    probe_bn = model.base_model.layer2[0].probe.norm
    assert probe_bn.training and probe_bn.weight.requires_grad  # partial BN leaves it alone
    backbone_bn = model.base_model.layer1[0].bn1
    assert backbone_bn.training != partial_bn
    assert backbone_bn.weight.requires_grad != partial_bn


def test_partial_bn_can_be_switched_off_again():
    model = TSN(5, 4, "RGB", base_model="resnet18", partial_bn=True, pretrain="scratch")
    bn = model.base_model.layer1[0].bn1
    assert not bn.weight.requires_grad
    model.partialBN(False)
    assert bn.weight.requires_grad and model.train().base_model.layer1[0].bn1.training
    assert id(bn.weight) in {id(p) for g in model.get_optim_policies() for p in g["params"]}


def test_declared_groups_override_the_rules_and_bad_declarations_are_named(monkeypatch, probe):
    monkeypatch.setattr(ProbeBlock, "optim_groups", {"gamma": "bn"}, raising=False)
    model = TSN(
        5, 4, "RGB", base_model="resnet18", non_local=True, nl_type="probe", nl_where="layer2.0",
        pretrain="scratch", print_spec=False,
    )  # fmt: skip
    bn = next(g for g in model.get_optim_policies() if g["name"] == "bn")
    assert any(p is model.base_model.layer2[0].probe.gamma for p in bn["params"])
    monkeypatch.setattr(ProbeBlock, "optim_groups", {"gamma": "fast"}, raising=False)
    with pytest.raises(ValueError, match="ProbeBlock.optim_groups puts gamma in 'fast'"):
        model.get_optim_policies()


def test_the_run_time_check_names_a_parameter_left_out_or_grouped_twice():
    model = TSN(5, 4, "RGB", base_model="resnet18", pretrain="scratch", print_spec=False)
    groups = model.get_optim_policies()
    normal = next(g for g in groups if g["name"] == "normal_weight")
    dropped = normal["params"].pop()
    name = next(n for n, p in model.named_parameters() if p is dropped)
    with pytest.raises(ValueError, match=rf"^{name} trains .* in no optimizer group"):
        check_param_groups(model, groups)
    normal["params"] += [dropped, dropped]
    with pytest.raises(ValueError, match=rf"^{name} is in two optimizer groups"):
        check_param_groups(model, groups)


def test_the_probe_block_trains_in_one_short_main_run_with_npb(monkeypatch, data_root, tmp_path):
    """Issue 15's probe, the way a researcher runs it: `--nl_type probe --npb`, one epoch."""
    import main as train_main
    from ops.checkpoint import load_checkpoint

    initial = []

    def build(channels, stage, first, **_):
        block = ProbeBlock(channels)
        if channels == 128:  # layer2 of resnet18; the options check at parse builds it at 16
            initial.append({n: p.detach().clone() for n, p in block.named_parameters()})
        return {"probe": block}

    monkeypatch.setitem(BLOCKS, "probe", build)
    run = train_main.main([
        "--dataset", "synthetic", "--data_root", data_root, "--arch", "resnet18", "--pretrain", "scratch",
        "--shift", "--non_local", "--nl_type", "probe", "--nl_where", "layer2.0", "--npb",
        "--num_segments", "4", "--input_size", "32", "--batch_size", "2", "--epochs", "1", "--lr", "0.05",
        "--workers", "0", "--root_model", str(tmp_path / "ckpt"), "--root_log", str(tmp_path / "log"),
    ])  # fmt: skip
    ckpt = load_checkpoint(tmp_path / "ckpt" / run["run_name"] / "ckpt.pth.tar")
    [start] = initial
    trained = {n: ckpt["state_dict"][f"base_model.layer2.0.probe.{n}"] for n in start}
    # The optimizer stepped every parameter of the block: each has a momentum buffer. The
    # optimizer state is indexed in group order, which the same grouping rebuilds.
    model = TSN(**ckpt["model_config"], partial_bn=False, fc_lr5=True, pretrain="scratch")
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in model.get_optim_policies() for p in g["params"]]
    for n in start:
        index = order.index(f"base_model.layer2.0.probe.{n}")
        assert "momentum_buffer" in ckpt["optimizer"]["state"][index], n
    # ... and all of them moved, the zero-init gamma first (before it moves nothing else gets a
    # gradient). proj.bias sits right before a BatchNorm in training mode, which subtracts the
    # batch mean and so cancels its gradient up to rounding: being stepped is all it can show.
    for n, value in start.items():
        if n != "proj.bias":
            assert not torch.equal(trained[n], value), f"probe.{n} never moved"
    assert trained["gamma"].abs().item() > 1e-4
