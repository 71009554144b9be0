"""Temporal shift: hand-computed expectations, the memory-saving shift+conv, placements."""

import pytest
import torch
import torchvision

from ops.temporal_shift import (
    TemporalPool,
    TemporalShift,
    make_temporal_shift,
    temporal_shift,
)


def test_shift_matches_hand_computed_values():
    # N=1, T=3, C=4, H=W=1, fold_div=4 -> fold=1: channel 0 from t+1, channel 1 from t-1.
    x = torch.arange(12, dtype=torch.float32).view(3, 4, 1, 1)  # x[t, c] = 4t + c
    out = temporal_shift(x, n_segment=3, fold_div=4).view(3, 4)
    expected = torch.tensor(
        [
            [4.0, 0.0, 2.0, 3.0],  # t=0: c0 <- x[1,0]=4, c1 <- zero
            [8.0, 1.0, 6.0, 7.0],  # t=1: c0 <- x[2,0]=8, c1 <- x[0,1]=1
            [0.0, 5.0, 10.0, 11.0],  # t=2: c0 <- zero,  c1 <- x[1,1]=5
        ]
    )
    assert torch.equal(out, expected)


def test_shift_keeps_clips_separate():
    # Two clips in the batch: nothing may leak from clip 0's last frame into clip 1's first.
    x = torch.ones(2 * 2, 8, 1, 1)
    x[:2] = 5.0
    out = temporal_shift(x, n_segment=2, fold_div=8).view(2, 2, 8)
    assert out[1, 0, 1].item() == 0.0  # clip 1, t=0, "from t-1" channel: zero, not clip 0's value
    assert out[0, 1, 0].item() == 0.0  # clip 0, last step, "from t+1" channel: zero
    assert out[1, 1, 1].item() == 1.0


def hand_adjoint(g5: torch.Tensor) -> torch.Tensor:
    """The shift's adjoint for 8 channels, fold 2, written out: channels 0..1 (which came from
    t+1) send their gradient to t+1, channels 2..3 to t-1, the rest stay."""
    exp = torch.zeros_like(g5)
    exp[:, 1:, :2] = g5[:, :-1, :2]
    exp[:, :-1, 2:4] = g5[:, 1:, 2:4]
    exp[:, :, 4:] = g5[:, :, 4:]
    return exp


def test_shift_gradient_is_adjoint():
    # <shift(x), g> == <x, shift^T(g)>: check against autograd of the out-of-place version.
    torch.manual_seed(1)
    x = torch.randn(3 * 5, 8, 2, 2, requires_grad=True)
    g = torch.randn(3 * 5, 8, 2, 2)
    (temporal_shift(x, 5, 4) * g).sum().backward()
    assert torch.equal(x.grad, hand_adjoint(g.view(3, 5, 8, 2, 2)).view_as(x.grad))


@pytest.mark.parametrize("channels_last", [False, True])
def test_shift_with_adjoint_backward_gives_the_hand_built_adjoint(channels_last):
    # The shift inside a recomputing block (fuse_conv off): its backward is the adjoint written
    # once, not autograd through the slice copies; values equal the manual adjoint exactly, in
    # the gradient's own layout.
    torch.manual_seed(2)
    ident = torch.nn.Identity()
    shift = TemporalShift(torch.nn.Conv2d(8, 8, 1), n_segment=5, n_div=4, recompute=True)
    shift.net, shift.fuse_conv = ident, False  # the shift alone
    x = torch.randn(3 * 5, 8, 2, 3)
    g = torch.randn(3 * 5, 8, 2, 3)
    if channels_last:
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    x.requires_grad_()
    y = shift(x)
    assert y.grad_fn is not None and "SliceBackward" not in y.grad_fn.name()
    assert torch.equal(y, temporal_shift(x.detach(), 5, 4))
    y.backward(g)
    assert torch.equal(x.grad, hand_adjoint(g.view(3, 5, 8, 2, 3)).view_as(x.grad))
    assert x.grad.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_blockres_placement_and_every_other_block_for_deep_resnets():
    r50 = torchvision.models.resnet50(weights=None)
    make_temporal_shift(r50, 8, n_div=8, place="blockres")
    assert all(
        isinstance(b.conv1, TemporalShift) for layer in (r50.layer1, r50.layer3) for b in layer
    )

    r101 = torchvision.models.resnet101(weights=None)
    make_temporal_shift(r101, 8, place="blockres")
    shifted = [isinstance(b.conv1, TemporalShift) for b in r101.layer3]
    assert shifted == [i % 2 == 0 for i in range(23)]


def test_blockres_identity_path_is_unshifted():
    # A block whose residual branch outputs zero must return relu(identity) of the UNshifted input.
    r18 = torchvision.models.resnet18(weights=None)
    make_temporal_shift(r18, 4, n_div=4, place="blockres")
    block = r18.layer1[0].eval()
    torch.nn.init.zeros_(block.bn2.weight)
    torch.nn.init.zeros_(block.bn2.bias)
    x = torch.rand(4, 64, 5, 5)
    assert torch.equal(block(x), torch.relu(x))


def test_block_placement_state_dict_names():
    r18 = torchvision.models.resnet18(weights=None)
    make_temporal_shift(r18, 4, place="block")
    assert "layer1.0.net.conv1.weight" in r18.state_dict()


def test_temporal_pool_halves_time_with_max():
    net = TemporalPool(torch.nn.Identity(), n_segment=4)
    x = torch.tensor([1.0, 5.0, 2.0, 3.0]).view(4, 1, 1, 1)  # one clip, T=4
    # kernel 3, stride 2, pad 1 over time: windows {pad,1,5} and {5,2,3}
    assert net(x).flatten().tolist() == [5.0, 5.0]


def test_unknown_place_is_a_clear_error():
    with pytest.raises(ValueError, match="blockres"):
        make_temporal_shift(torchvision.models.resnet18(weights=None), 8, place="everywhere")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 2)])
def test_recompute_shift_conv_equals_plain_forward_and_backward(kernel, stride, channels_last):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 8, kernel, stride=stride, padding=kernel // 2, bias=True)
    plain = TemporalShift(conv, n_segment=4, n_div=8)
    fast = TemporalShift(conv, n_segment=4, n_div=8, recompute=True)
    x = torch.randn(2 * 4, 16, 7, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    results = []
    for mod in (plain, fast):
        conv.zero_grad()
        xi = x.clone().requires_grad_()
        y = mod(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append((y.detach(), xi.grad, conv.weight.grad.clone(), conv.bias.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_recompute_shift_conv_under_bf16_autocast_matches_plain_autocast():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 8, 1, bias=False)
    x = torch.randn(8, 16, 5, 5)
    grads = []
    for recompute in (False, True):
        conv.zero_grad()
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = TemporalShift(conv, 4, 8, recompute=recompute)(xi)
        y.float().sum().backward()
        grads.append((y.detach(), xi.grad, conv.weight.grad.clone()))
    for a, b in zip(*grads):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
