"""The I3D model: backbone (archs/i3d.py), ImageNet inflation, non-local placement and modes
(ops/nl.py), and the model interface the engine uses (ops/models.py I3D, build_model).

Sizes, strides, kernel shapes and parameter counts are checked against hand-written values and
against mmaction2's published figures; the non-local modes against a plain float64 computation of
their equations written here.
"""

import os

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from archs import build_backbone, imagenet_weights_path
from archs.i3d import INFLATE, ResNet3d, inflate_2d_state_dict
from ops.models import I3D, TSN, build_model, read_backbone_weights
from ops.nl import NonLocalBlock
from ops.non_local import NonLocalWrapper
from ops.param_groups import check_param_groups
from ops.recompute import RecomputedBottleneck3d, RecomputedResNet3d

NL_PLACES = ["layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5"]


def _i3d(**kw) -> I3D:
    torch.manual_seed(0)
    cfg = dict(num_class=5, num_segments=8, base_model="i3d_resnet50", pretrain="scratch",
               print_spec=False)  # fmt: skip
    return build_model(**{**cfg, **kw})


def test_backbone_strides_and_kernels_are_mmaction2_i3d_r50():
    net = ResNet3d(50)
    shapes = {}
    with torch.device("meta"):
        net_meta = ResNet3d(50)
    for name in ("conv1", "maxpool", "layer1", "pool2", "layer2", "layer3", "layer4"):
        getattr(net_meta, name).register_forward_hook(
            lambda m, a, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))
        )
    net_meta(torch.empty(1, 3, 32, 224, 224, device="meta"))
    # (C, T, H, W): time 32 -> 16 (conv1) -> 8 (pool1) -> 4 (pool2), space /32
    assert shapes == {
        "conv1": (64, 16, 112, 112),
        "maxpool": (64, 8, 56, 56),
        "layer1": (256, 8, 56, 56),
        "pool2": (256, 4, 56, 56),
        "layer2": (512, 4, 28, 28),
        "layer3": (1024, 4, 14, 14),
        "layer4": (2048, 4, 7, 7),
    }
    assert net.conv1.kernel_size == (5, 7, 7) and net.conv1.stride == (2, 2, 2)
    assert net.conv1.padding == (2, 3, 3)
    assert (net.maxpool.kernel_size, net.maxpool.stride) == ((1, 3, 3), (2, 2, 2))
    first = [[b.conv1.kernel_size[0] == 3 for b in getattr(net, f"layer{i}")] for i in range(1, 5)]
    assert first == [[1, 1, 1], [1, 0, 1, 0], [1, 0, 1, 0, 1, 0], [0, 1, 0]]
    assert all(
        b.conv2.kernel_size == (1, 3, 3) and b.conv3.kernel_size == (1, 1, 1)
        for i in range(1, 5)
        for b in getattr(net, f"layer{i}")
    )
    # 'pytorch' style: the stride is on the 3x3 conv of the first block of res3..res5
    assert [net.layer2[0].conv2.stride, net.layer2[0].conv1.stride] == [(1, 2, 2), (1, 1, 1)]
    assert net.layer2[0].downsample[0].stride == (1, 2, 2)
    # ResNet-101: the same rule over its 23 res4 blocks
    assert INFLATE[101][2] == (1, 0) * 11 + (1,)


def test_parameter_counts_are_mmaction2s():
    # mmaction2's configs/recognition/i3d/README.md: I3D-R50 28.0M, NL (embedded Gaussian or
    # dot product) 35.4M, NL Gaussian 31.7M parameters, 400 classes; 35,397,840 is the count of
    # mmaction2's model built from the embedded-Gaussian config (Recognizer3D.parameters()).
    def count(**kw):
        with torch.device("meta"):
            m = build_model(num_class=400, num_segments=32, base_model="i3d_resnet50",
                            pretrain="scratch", print_spec=False, partial_bn=False, **kw)  # fmt: skip
        return sum(p.numel() for p in m.parameters())

    assert round(count() / 1e6, 1) == 28.0
    assert count(non_local=True, nl_type="nl") == 35_397_840
    gauss = count(non_local=True, nl_type="nl", nl_options={"mode": "gaussian"})
    assert round(gauss / 1e6, 1) == 31.7


def _random_resnet50_state_dict(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    net = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
    return net.state_dict()


def test_inflation_repeats_each_2d_kernel_over_time_divided_by_t():
    sd2d = _random_resnet50_state_dict()
    net = ResNet3d(50)
    sd3d = inflate_2d_state_dict(sd2d, net)
    assert set(sd3d) == {k for k in net.state_dict() if not k.startswith("fc.")}
    w = sd3d["conv1.weight"]
    assert w.shape == (64, 3, 5, 7, 7)
    for t in range(5):
        torch.testing.assert_close(w[:, :, t] * 5, sd2d["conv1.weight"])
    w = sd3d["layer1.0.conv1.weight"]  # inflated 3x1x1
    assert w.shape == (64, 64, 3, 1, 1)
    torch.testing.assert_close(w.sum(dim=2), sd2d["layer1.0.conv1.weight"])
    torch.testing.assert_close(
        sd3d["layer2.1.conv1.weight"][:, :, 0], sd2d["layer2.1.conv1.weight"]
    )
    torch.testing.assert_close(sd3d["layer3.2.bn1.running_var"], sd2d["layer3.2.bn1.running_var"])

    # on a clip whose frames are all the same, the inflated stem computes the 2-D stem on every
    # frame away from the clip's temporal ends (where the 3-D conv's zero padding enters)
    net.load_state_dict(sd3d, strict=False)
    resnet = torchvision.models.resnet50(weights=None)
    resnet.load_state_dict(sd2d)
    net.eval(), resnet.eval()
    frame = torch.randn(1, 3, 64, 64)
    clip = frame[:, :, None].expand(1, 3, 12, 64, 64)
    with torch.no_grad():
        out3d = net._stem(net.conv1(clip))  # (1, 64, 3, 16, 16): frames 0, 2, 4 of conv1's 6
        out2d = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(frame))))
        torch.testing.assert_close(out3d[:, :, 1], out2d, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(out3d[:, :, 0], out2d, rtol=1e-3, atol=1e-3)  # the padded end


def test_imagenet_pretrain_inflates_the_hub_cache_file_and_refuses_others(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    sd2d = _random_resnet50_state_dict(seed=1)
    path = imagenet_weights_path("i3d_resnet50")
    assert path == imagenet_weights_path("resnet50")  # torchvision's 2-D file
    os.makedirs(os.path.dirname(path))
    torch.save(sd2d, path)
    net = build_backbone("i3d_resnet50", "imagenet")
    torch.testing.assert_close(net.layer3[0].conv1.weight.sum(dim=2), sd2d["layer3.0.conv1.weight"])
    torch.testing.assert_close(net.layer4[0].conv1.weight[:, :, 0], sd2d["layer4.0.conv1.weight"])

    # a 3-D state_dict of this network loads as it is; a ResNet-18's is refused in one line
    own = tmp_path / "i3d.pth"
    torch.save({"state_dict": net.state_dict()}, own)
    again = build_backbone("i3d_resnet50", read_backbone_weights(str(own)), source=str(own))
    torch.testing.assert_close(again.conv1.weight, net.conv1.weight)
    r18 = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), r18)
    with pytest.raises(
        ValueError, match=r"^--pretrain .*r18.pth do not inflate into an I3D ResNet-50 \("
    ) as exc:
        build_backbone("i3d_resnet50", read_backbone_weights(str(r18)), source=str(r18))
    assert "\n" not in str(exc.value)


def test_non_local_blocks_sit_at_mmaction2s_places_and_rnl_works_too():
    model = _i3d(non_local=True, nl_type="nl")
    wrapped = sorted(m.where for m in model.modules() if isinstance(m, NonLocalWrapper))
    assert wrapped == NL_PLACES  # res3 blocks 1, 3 and res4 blocks 1, 3, 5 (from 0)
    block = model.base_model.layer3[3].nl
    assert isinstance(block, NonLocalBlock) and block.mode == "embedded_gaussian"
    assert block.sub_sample and block.W[0].bias is None  # mmcv's NonLocal3d: no output-conv bias
    assert block.inter_channels == 512
    x = torch.randn(2, 8 * 3, 64, 64)
    assert model.eval()(x).shape == (2, 5)

    rnl = _i3d(non_local=True, nl_type="rnl", num_segments=16)
    keys = list(rnl.state_dict())
    assert "base_model.layer2.1.cg.W_k.weight" in keys  # the channel gate before the first one
    assert (
        "base_model.layer2.3.nl.penta.weight" in keys
        and "base_model.layer3.5.nl.theta.weight" in keys
    )
    assert rnl.base_model.layer2[1].nl.penta.kernel_size == (3, 7, 7)
    assert rnl.eval()(torch.randn(2, 16 * 3, 64, 64)).shape == (2, 5)
    where = _i3d(non_local=True, nl_type="nl", nl_where="layer1.2,layer4.0")
    assert sorted(m.where for m in where.modules() if isinstance(m, NonLocalWrapper)) == [
        "layer1.2",
        "layer4.0",
    ]


def _reference_nl(block: NonLocalBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's equations in float64 (ops/nl.py docstring), with its weights."""
    x = x.double()

    def conv(module, t):
        return F.conv3d(
            t, module.weight.double(), None if module.bias is None else module.bias.double()
        )

    pool = (lambda t: F.max_pool3d(t, (1, 2, 2))) if block.sub_sample else (lambda t: t)
    if block.mode == "gaussian":
        theta, phi = x, pool(x)
    else:
        theta, phi = conv(block.theta, x), pool(conv(block.phi, x))
    g = pool(conv(block.g, x))
    a = torch.einsum("ncp,ncs->nps", theta.flatten(2), phi.flatten(2))  # (N, P, Ps)
    if block.mode == "dot_product":
        a = a / a.shape[-1]
    else:
        a = (a / block.inter_channels**0.5 if block.use_scale else a).softmax(dim=-1)
    y = torch.einsum("nps,ncs->ncp", a, g.flatten(2)).reshape(g.shape[:2] + x.shape[2:])
    bn = block.W[1]
    z = conv(block.W[0], y)
    z = (z - bn.running_mean.double()[:, None, None, None]) / torch.sqrt(
        bn.running_var.double()[:, None, None, None] + bn.eps
    ) * bn.weight.double()[:, None, None, None] + bn.bias.double()[:, None, None, None]
    return z + x


@pytest.mark.parametrize(
    "options",
    [
        dict(mode="embedded_gaussian"),
        dict(mode="embedded_gaussian", use_scale=True),
        dict(mode="dot_product"),
        dict(mode="gaussian"),
        dict(mode="gaussian", sub_sample=False),
        dict(mode="dot_product", sub_sample=False, out_bias=False),
    ],
)
@pytest.mark.parametrize("fused", [True, False])
def test_non_local_modes_compute_their_equations(options, fused):
    torch.manual_seed(0)
    block = NonLocalBlock(16, fused=fused, **options).eval()
    with torch.no_grad():  # a non-zero output (a new block's BN is zero: the identity)
        block.W[1].weight.uniform_(0.5, 1.5)
        block.W[1].bias.normal_()
        block.W[1].running_mean.normal_()
        block.W[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 16, 3, 6, 4)
    with torch.no_grad():
        out = block(x)
    expected = _reference_nl(block, x)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, x, atol=1e-2)
    block.store_attention = True
    with torch.no_grad():
        block(x)
    sources = 3 * 3 * 2 if block.sub_sample else 3 * 6 * 4
    assert block.attention.shape == (2, sources, 3 * 6 * 4)


def test_non_local_options_are_checked_and_recorded_only_when_set():
    with pytest.raises(ValueError, match="unknown non-local mode 'concat'"):
        NonLocalBlock(8, mode="concat")
    with pytest.raises(ValueError, match="use_scale applies to the embedded_gaussian mode only"):
        NonLocalBlock(8, mode="dot_product", use_scale=True)
    tsm = TSN(4, 4, "RGB", base_model="resnet18", is_shift=True, non_local=True, nl_type="nl",
              pretrain="scratch", print_spec=False)  # fmt: skip
    assert tsm.model_config()["nl_options"] == {"sub_sample": True}  # as before the I3D options
    assert tsm.base_model.layer2[0].nl.W[0].bias is not None  # the TSM layout keeps its bias
    dot = _i3d(non_local=True, nl_type="nl", nl_options={"mode": "dot_product"})
    assert dot.model_config()["nl_options"] == {
        "sub_sample": True,
        "mode": "dot_product",
        "out_bias": False,
    }
    rebuilt = build_model(**dot.model_config(), pretrain="scratch", print_spec=False)
    assert isinstance(rebuilt, I3D) and rebuilt.base_model.layer2[1].nl.mode == "dot_product"
    assert list(rebuilt.state_dict()) == list(dot.state_dict())
    # an output-conv bias asked for on an I3D is recorded, so the checkpoint rebuilds it
    biased = _i3d(non_local=True, nl_type="nl", nl_options={"out_bias": True})
    assert biased.model_config()["nl_options"] == {"sub_sample": True, "out_bias": True}
    rebuilt = build_model(**biased.model_config(), pretrain="scratch", print_spec=False)
    assert rebuilt.base_model.layer2[1].nl.W[0].bias is not None


def test_tsn_keywords_that_mean_nothing_for_i3d_are_refused():
    with pytest.raises(ValueError, match=r"is_shift=True does not apply to i3d_resnet50"):
        _i3d(is_shift=True)
    with pytest.raises(ValueError, match=r"temporal_pool=True does not apply"):
        _i3d(temporal_pool=True)
    with pytest.raises(ValueError, match="i3d_resnet50 takes RGB clips, not Flow"):
        _i3d(modality="Flow")
    with pytest.raises(ValueError, match="at least 5 frames"):
        _i3d(num_segments=4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'shift'"):
        _i3d(shift=True)
    with pytest.raises(
        ValueError,
        match="unknown base model 'i3d_resnet5': choose one of .*i3d_resnet50, i3d_resnet101",
    ):
        build_model(num_class=2, num_segments=8, base_model="i3d_resnet5", pretrain="scratch")
    # TSN keywords at their "off" value, as main.py passes them, are fine
    model = _i3d(is_shift=False, shift_div=8, shift_place="blockres", temporal_pool=False,
                 consensus_type="avg", img_feature_dim=256)  # fmt: skip
    assert isinstance(model, I3D) and not isinstance(model, TSN)


def test_input_is_frames_in_time_order():
    # the clip [N, T*3, H, W] is read as T frames of 3 channels: reversing the frames of a clip
    # equals reversing the time axis of the backbone input
    model = _i3d(non_local=True, nl_type="nl").eval()
    seen = {}
    model.base_model.conv1.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    x = torch.randn(1, 8, 3, 32, 32)
    with torch.no_grad():
        model(x.reshape(1, 24, 32, 32))
    torch.testing.assert_close(seen["x"], x.permute(0, 2, 1, 3, 4))


def test_recompute_gives_the_same_step_and_channels_last_the_same_logits():
    x = torch.randn(2, 8 * 3, 64, 64)
    y = torch.tensor([1, 3])
    results = []
    for kw in (dict(recompute=False), dict(recompute=True), dict(checkpoint_blocks=True)):
        model = _i3d(non_local=True, nl_type="nl", partial_bn=False, **kw).train()
        with torch.no_grad():
            model.base_model.layer2[1].nl.W[1].weight.fill_(0.5)  # a live non-local branch
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        stats = model.base_model.layer3[0].bn1.running_mean.clone()
        results.append((loss.detach(), grads, stats, model))
    loss0, grads0, stats0, plain = results[0]
    assert not isinstance(plain.base_model, RecomputedResNet3d)
    for loss, grads, stats, model in results[1:]:  # recomputing replays the same operations
        assert isinstance(model.base_model, RecomputedResNet3d)
        assert isinstance(model.base_model.layer2[1].block, RecomputedBottleneck3d)
        torch.testing.assert_close(loss, loss0, rtol=1e-6, atol=0)
        torch.testing.assert_close(stats, stats0, rtol=1e-6, atol=0)  # updated once
        for name, g in grads0.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)

    plain.eval()
    with torch.no_grad():
        expected = plain(x)
        plain.to_channels_last()
        assert plain.base_model.layer1[0].conv1.weight.is_contiguous(
            memory_format=torch.channels_last_3d
        )
        torch.testing.assert_close(plain(x), expected, rtol=1e-4, atol=1e-5)


def test_optimizer_groups_and_partial_bn():
    model = _i3d(non_local=True, nl_type="nl", fc_lr5=True, partial_bn=True)
    groups = {g["name"]: g for g in model.get_optim_policies()}
    check_param_groups(model, list(groups.values()))
    named = {id(p): n for n, p in model.named_parameters()}
    assert [named[id(p)] for p in groups["first_conv_weight"]["params"]] == [
        "base_model.conv1.weight"
    ]
    assert {named[id(p)] for p in groups["lr5_weight"]["params"]} == {"new_fc.weight"}
    nl_weights = {named[id(p)] for p in groups["nl_weight"]["params"]}
    assert "base_model.layer3.5.nl.theta.weight" in nl_weights
    assert "base_model.layer3.5.nl.W.1.weight" in nl_weights  # the block's BN trains
    # partial BN: the backbone's first BN trains, the others are frozen and in eval mode
    bns = [named[id(p)] for p in groups["bn"]["params"]]
    assert bns == ["base_model.bn1.weight", "base_model.bn1.bias"]
    model.train()
    assert model.base_model.bn1.training and not model.base_model.layer1[0].bn1.training
    assert model.base_model.layer2[1].nl.W[1].training


def test_training_augmentation_is_mmaction2s_crop():
    model = _i3d()
    crop, flip = model.get_augmentation().transforms
    # MultiScaleCrop(scales=(1, 0.8), max_wh_scale_gap=0, random_crop=False): square crops at
    # the 5 fixed positions
    assert (crop.scales, crop.max_distort, crop.more_fix_crop) == ([1, 0.8], 0, False)
    assert (model.crop_size, model.scale_size) == (224, 256)
