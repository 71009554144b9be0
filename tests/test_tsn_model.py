"""TSN / TSM / RNL model: published layouts, identity at init, groups, partial BN."""

import json
import os

import pytest
import torch

from ops.models import TSN
from ops.non_local import NonLocalWrapper
from ops.rnl import RNLBlock

# Key -> shape layouts of the published checkpoints (see tests/data/published_layouts/README.md).
REFERENCE = os.path.join(os.path.dirname(__file__), "data", "published_layouts")


def _layout(model: torch.nn.Module) -> list:
    return [("module." + k, list(v.shape)) for k, v in model.state_dict().items()]


def _reference(name: str) -> list:
    path = os.path.join(REFERENCE, name)
    if not os.path.isfile(path):
        pytest.fail(f"reference layout {path} is missing from the repository")
    with open(path) as f:
        return list(json.load(f).items())


@pytest.mark.parametrize(
    "reference,num_class,non_local",
    [
        ("rnl_tsm_resnet50_kinetics.json", 400, True),
        ("rnl_tsm_resnet50_something.json", 174, True),
        ("tsm_resnet50_kinetics.json", 400, False),
    ],
)
def test_state_dict_equals_published_layout(reference, num_class, non_local):
    model = TSN(
        num_class,
        8,
        "RGB",
        base_model="resnet50",
        is_shift=True,
        shift_div=8,
        shift_place="blockres",
        non_local=non_local,
        dropout=0.5,
        pretrain="scratch",
    )
    assert _layout(model) == _reference(reference)  # same keys, same shapes, same order


def _copy_into_rnl(plain: TSN, rnl: TSN) -> None:
    """Give `rnl` the weights of `plain` (same backbone) by mapping layerX.Y. -> layerX.Y.block."""
    rnl_sd = rnl.state_dict()
    mapped = {}
    for key, value in plain.state_dict().items():
        if key in rnl_sd:
            mapped[key] = value
        else:
            parts = key.split(".")  # base_model.layerX.Y.rest
            alt = ".".join(parts[:3] + ["block"] + parts[3:])
            assert alt in rnl_sd, key
            mapped[alt] = value
    missing = rnl.load_state_dict(mapped, strict=False).missing_keys
    assert all(".nl." in k or ".cg." in k for k in missing)


def test_fresh_rnl_network_equals_network_without_rnl_and_perturbation_changes_it():
    torch.manual_seed(0)
    kwargs = dict(
        base_model="resnet50",
        is_shift=True,
        shift_div=8,
        dropout=0.5,
        pretrain="scratch",
        input_size=64,
    )
    plain = TSN(10, 4, "RGB", non_local=False, **kwargs).eval()
    rnl = TSN(10, 4, "RGB", non_local=True, **kwargs).eval()
    _copy_into_rnl(plain, rnl)
    x = torch.randn(2, 4 * 3, 64, 64)
    with torch.no_grad():
        y_plain, y_rnl = plain(x), rnl(x)
    assert y_plain.shape == (2, 10)
    torch.testing.assert_close(y_rnl, y_plain, rtol=0, atol=0)

    with torch.no_grad():
        for m in rnl.modules():
            if isinstance(m, RNLBlock):
                m.W[1].weight.fill_(0.5)
        y_perturbed = rnl(x)
    assert (y_perturbed - y_plain).abs().max() > 1e-4


def test_placement_and_small_resnet_uses_block_width():
    model = TSN(
        5,
        4,
        "RGB",
        base_model="resnet18",
        is_shift=True,
        non_local=True,
        dropout=0.5,
        pretrain="scratch",
    )
    wrapped = {n: m for n, m in model.base_model.named_modules() if isinstance(m, NonLocalWrapper)}
    assert sorted(wrapped) == ["layer2.0", "layer3.0"]  # resnet18 has no layer2.2 / layer3.x>1
    assert wrapped["layer2.0"].nl.in_channels == 128 and hasattr(wrapped["layer2.0"], "cg")
    assert wrapped["layer3.0"].nl.penta.kernel_size == (3, 3, 3)
    assert wrapped["layer2.0"].nl.penta.kernel_size == (3, 7, 7)
    y = model.eval()(torch.randn(1, 4, 3, 64, 64))
    assert y.shape == (1, 5)


def test_bad_placement_lists_valid_blocks():
    with pytest.raises(ValueError, match="valid are layer1.0,layer1.1"):
        TSN(
            5,
            4,
            "RGB",
            base_model="resnet18",
            non_local=True,
            nl_where="layer2.7",
            pretrain="scratch",
        )


def test_dropout_zero_replaces_fc_and_consensus_is_mean_of_frames():
    model = TSN(
        3, 4, "RGB", base_model="resnet18", dropout=0, pretrain="scratch", consensus_type="identity"
    ).eval()
    assert model.new_fc is None and "base_model.fc.weight" in model.state_dict()
    x = torch.randn(2, 4 * 3, 32, 32)
    with torch.no_grad():
        per_frame = model(x)  # (N, T, K)
        frames = model.base_model(x.view(-1, 3, 32, 32)).view(2, 4, 3)
    torch.testing.assert_close(per_frame, frames)
    model.consensus_type = "avg"
    with torch.no_grad():
        torch.testing.assert_close(model(x), frames.mean(dim=1))


def _group(groups, name):
    return next(g for g in groups if g["name"] == name)


def test_optim_policies_follow_the_published_grouping():
    model = TSN(
        10,
        8,
        "RGB",
        base_model="resnet50",
        is_shift=True,
        non_local=True,
        dropout=0.5,
        pretrain="scratch",
        partial_bn=False,
        fc_lr5=True,
    )
    groups = model.get_optim_policies()
    ids = {
        name: {id(p) for p in _group(groups, name)["params"]}
        for name in (g["name"] for g in groups)
    }
    blk = model.base_model.layer2[0]
    assert ids["first_conv_weight"] == {id(model.base_model.conv1.weight)}
    assert (
        id(blk.nl.penta.weight) in ids["nl_bias"]
    )  # the published quirk: region conv weight as a "bias"
    assert id(blk.nl.theta.weight) in ids["nl_weight"] and id(blk.nl.theta.bias) in ids["nl_bias"]
    assert id(blk.nl.W[1].weight) in ids["nl_weight"]
    assert (
        id(blk.cg.W_v1.weight) in ids["normal_weight"] and id(blk.cg.W_k.bias) in ids["normal_bias"]
    )
    assert id(blk.cg.bn1.weight) in ids["bn"]
    assert ids["lr5_weight"] == {id(model.new_fc.weight)} and ids["lr10_bias"] == {
        id(model.new_fc.bias)
    }
    assert (_group(groups, "nl_bias")["lr_mult"], _group(groups, "nl_bias")["decay_mult"]) == (2, 0)
    # every trainable parameter is in exactly one group; the frozen region mask in none
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(all_ids) == trainable
    assert id(blk.nl.penta.mask) not in set(all_ids)


def test_partial_bn_freezes_all_backbone_bns_but_the_first():
    model = TSN(
        10,
        4,
        "RGB",
        base_model="resnet18",
        is_shift=True,
        non_local=True,
        dropout=0.5,
        pretrain="scratch",
        partial_bn=True,
    )
    model.train()
    bb = model.base_model
    assert bb.bn1.training and bb.bn1.weight.requires_grad
    assert not bb.layer1[0].bn1.training and not bb.layer1[0].bn1.weight.requires_grad
    nl_bn = bb.layer2[0].nl.W[1]
    assert nl_bn.training and nl_bn.weight.requires_grad  # BN3d of the non-local part still trains
    bn_group = {id(p) for p in _group(model.get_optim_policies(), "bn")["params"]}
    assert id(bb.bn1.weight) in bn_group and id(bb.layer1[0].bn1.weight) not in bn_group
    assert id(bb.layer2[0].cg.bn1.weight) in bn_group


def test_model_config_rebuilds_the_same_network():
    model = TSN(
        7,
        4,
        "RGB",
        base_model="resnet18",
        is_shift=True,
        non_local=True,
        dropout=0.5,
        pretrain="scratch",
        temporal_pool=True,
        input_size=96,
    )
    cfg = model.model_config()
    json.dumps(cfg)  # plain types only
    rebuilt = TSN(**cfg, pretrain="scratch")
    assert _layout(rebuilt) == _layout(model)
    assert (rebuilt.crop_size, rebuilt.scale_size) == (96, 109)


def test_temporal_pool_output_and_flow_input():
    model = TSN(
        4,
        8,
        "RGB",
        base_model="resnet18",
        is_shift=True,
        temporal_pool=True,
        non_local=True,
        dropout=0.5,
        pretrain="scratch",
    ).eval()
    assert model(torch.randn(2, 8 * 3, 64, 64)).shape == (2, 4)
    flow = TSN(4, 2, "Flow", base_model="resnet18", dropout=0.5, pretrain="scratch").eval()
    assert flow.base_model.conv1.in_channels == 10 and flow.input_mean == [0.5]
    assert flow(torch.randn(1, 2 * 10, 32, 32)).shape == (1, 4)


def test_mobilenetv2_shift_places_and_layout():
    model = TSN(
        4, 4, "RGB", base_model="mobilenetv2", is_shift=True, dropout=0.5, pretrain="scratch"
    ).eval()
    keys = model.state_dict().keys()
    assert (
        "base_model.features.2.conv.0.net.weight" not in keys
    )  # features.2: stride 2, no residual
    assert "base_model.features.3.conv.0.net.weight" in keys  # residual block: shifted
    assert model(torch.randn(1, 4 * 3, 64, 64)).shape == (1, 4)


def test_mobilenet_torchvision_weights_map_onto_tsm_layout():
    import torchvision

    from archs.mobilenet_v2 import MobileNetV2, from_torchvision_state_dict

    tv = torchvision.models.mobilenet_v2(weights=None).eval()
    ours = MobileNetV2().eval()
    ours.load_state_dict(from_torchvision_state_dict(tv.state_dict()), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x))


def test_unknown_base_model_and_missing_imagenet_weights(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="resnet50"):
        TSN(4, 4, "RGB", base_model="vgg16", pretrain="scratch")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match=r"resnet18-f37072fd.pth.*--pretrain PATH"):
        TSN(4, 4, "RGB", base_model="resnet18", pretrain="imagenet")


def test_pretrain_from_a_local_backbone_file(tmp_path):
    import torchvision

    r18 = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(r18.state_dict(), path)
    model = TSN(4, 4, "RGB", base_model="resnet18", is_shift=True, pretrain=str(path))
    torch.testing.assert_close(
        model.base_model.layer1[0].conv1.net.weight, r18.layer1[0].conv1.weight
    )


@pytest.mark.parametrize(
    "nl_type,expect,absent", [("nl", ".nl.phi.weight", ".cg."), ("gc", ".cg.W_k.weight", ".nl.")]
)
def test_other_block_types_attach_at_the_requested_places(nl_type, expect, absent):
    model = TSN(
        4,
        4,
        "RGB",
        base_model="resnet18",
        is_shift=True,
        non_local=True,
        nl_type=nl_type,
        nl_where="layer2.1,layer3.0",
        dropout=0.5,
        pretrain="scratch",
    ).eval()
    keys = list(model.state_dict())
    assert any(k.startswith("base_model.layer2.1" + expect) for k in keys)
    assert any(k.startswith("base_model.layer3.0" + expect) for k in keys)
    assert not any(absent in k for k in keys) and not any("layer2.0.block" in k for k in keys)
    assert model.model_config()["nl_where"] == ["layer2.1", "layer3.0"]
    x = torch.randn(1, 4 * 3, 64, 64)
    assert model(x).shape == (1, 4)


def test_unknown_block_type_lists_the_choices():
    with pytest.raises(
        ValueError, match=r"unknown non-local block type 'foo': choose one of \['gc', 'nl', 'rnl'\]"
    ):
        TSN(4, 4, "RGB", base_model="resnet18", non_local=True, nl_type="foo", pretrain="scratch")


def test_region_kernels_default_from_the_block_file_and_are_recorded_in_the_settings():
    from ops import rnl

    model = TSN(5, 4, "RGB", base_model="resnet18", non_local=True, pretrain="scratch")
    recorded = model.model_config()["nl_options"]
    assert recorded["kernels"] == [list(k) for k in rnl.STAGE_KERNELS]
    assert recorded["kernels"][1:3] == [[3, 7, 7], [3, 3, 3]]  # published: layer2, layer3
    assert (recorded["activation"], recorded["sub_sample"], recorded["use_norm"]) == (
        "softmax",
        False,
        False,
    )
    json.dumps(model.model_config())  # plain types, as a checkpoint stores them

    kernels = [[1, 3, 3], [1, 5, 5], [3, 1, 1], [1, 1, 1]]
    model = TSN(
        5, 4, "RGB", base_model="resnet18", non_local=True, nl_options={"kernels": kernels},
        nl_where="layer1.0,layer2.0,layer3.0,layer4.0", pretrain="scratch",
    )  # fmt: skip
    blocks = {
        name[len("base_model.") :]: m
        for name, m in model.named_modules()
        if isinstance(m, RNLBlock)
    }
    sizes = {
        name: m.penta.kernel_size if m.penta is not None else None for name, m in blocks.items()
    }
    # all-ones kernel: no region conv (r = theta)
    assert sizes == {
        "layer1.0.nl": (1, 3, 3),
        "layer2.0.nl": (1, 5, 5),
        "layer3.0.nl": (3, 1, 1),
        "layer4.0.nl": None,
    }
    rebuilt = TSN(**model.model_config(), pretrain="scratch")  # as a checkpoint rebuilds it
    assert _layout(rebuilt) == _layout(model)


def test_block_options_are_checked_against_the_block_and_fast_paths_are_not_settings():
    with pytest.raises(
        ValueError,
        match=r"unknown option\(s\) kernel for block type 'rnl'.*takes kernels, activation",
    ):
        TSN(
            4,
            4,
            "RGB",
            base_model="resnet18",
            non_local=True,
            nl_options={"kernel": [3, 3, 3]},
            pretrain="scratch",
        )
    with pytest.raises(ValueError, match="block type 'gc' .* it takes no options"):
        TSN(
            4,
            4,
            "RGB",
            base_model="resnet18",
            non_local=True,
            nl_type="gc",
            nl_options={"sub_sample": True},
            pretrain="scratch",
        )
    nl = TSN(
        4,
        4,
        "RGB",
        base_model="resnet18",
        non_local=True,
        nl_type="nl",
        rnl_fused=False,
        pretrain="scratch",
    )
    assert nl.model_config()["nl_options"] == {"sub_sample": True}  # no 'fused'
    assert not nl.base_model.layer2[0].nl.fused  # but the fast-path switch reached the block
