"""RNL block, region conv and channel gate against computations written out in the test."""

import pytest
import torch
import torch.nn.functional as F

from ops.channel_gate import ChannelGate
from ops.region_conv import RegionConv3d
from ops.rnl import RNLBlock


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("mask"):
                continue
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    if hasattr(module, "penta") and module.penta is not None:
        with torch.no_grad():
            module.penta.weight.mul_(module.penta.mask)


def _region_by_hand(theta: torch.Tensor, conv: RegionConv3d) -> torch.Tensor:
    """Depthwise conv written as explicit shifted sums, kernel of channel i = weight[i, i % per_group]."""
    n, c, t, h, w = theta.shape
    kt, kh, kw = conv.kernel_size
    pt, ph, pw = conv.padding
    xp = F.pad(theta, (pw, pw, ph, ph, pt, pt))
    out = torch.zeros_like(theta)
    for i in range(c):
        k = conv.weight[i, i % conv.per_group]
        for a in range(kt):
            for b in range(kh):
                for d in range(kw):
                    out[:, i] += k[a, b, d] * xp[:, i, a : a + t, b : b + h, d : d + w]
    return out


def test_region_conv_layout_and_hand_computation():
    conv = RegionConv3d(64, (3, 3, 3))  # groups = 2, 32 channels per group
    assert conv.mask.shape == conv.weight.shape == (64, 32, 3, 3, 3)
    assert conv.mask.sum().item() == 64 * 27
    assert conv.mask[33, 1].sum().item() == 27 and conv.mask[33, 0].sum().item() == 0
    x = torch.randn(2, 64, 3, 5, 5)
    torch.testing.assert_close(conv(x), _region_by_hand(x, conv), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels,kernel", [(64, (3, 7, 7)), (16, (3, 3, 3)), (96, (1, 3, 3))])
def test_region_conv_depthwise_equals_masked_forward_and_backward(channels, kernel):
    torch.manual_seed(0)
    fast = RegionConv3d(channels, kernel, impl="depthwise")
    plain = RegionConv3d(channels, kernel, impl="masked")
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, channels, 4, 9, 9)
    g = torch.randn(2, channels, 4, 9, 9)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fast(xa), plain(xb)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-4)
    assert fast.mask.grad is None


def _rnl_by_hand(block: RNLBlock, x: torch.Tensor) -> torch.Tensor:
    n, c, t, h, w = x.shape
    cp = block.inter_channels
    theta = torch.einsum(
        "oc,nc...->no...", block.theta.weight.view(cp, c), x
    ) + block.theta.bias.view(1, cp, 1, 1, 1)
    r = _region_by_hand(theta, block.penta) if block.penta is not None else theta
    if block.use_norm:
        r = r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)
    r_src, v = r, theta
    if block.sub_sample:
        r_src = F.max_pool3d(r, (1, 2, 2))
        v = F.max_pool3d(theta, (1, 2, 2))
    rq = r.reshape(n, cp, -1)
    rs, vs = r_src.reshape(n, cp, -1), v.reshape(n, cp, -1)
    y = torch.zeros(n, cp, rq.shape[2])
    for b in range(n):
        for tgt in range(rq.shape[2]):
            scores = torch.stack(
                [torch.dot(rs[b, :, m], rq[b, :, tgt]) for m in range(rs.shape[2])]
            )
            if block.activation == "softmax":
                wts = torch.exp(scores - scores.max())
                wts = wts / wts.sum()
            else:
                wts = torch.clamp(scores, min=0) / rs.shape[2]
            y[b, :, tgt] = (vs[b] * wts).sum(dim=1)
    y = y.view(n, cp, t, h, w)
    conv, bn = block.W[0], block.W[1]
    wy = torch.einsum("oc,nc...->no...", conv.weight.view(c, cp), y) + conv.bias.view(1, c, 1, 1, 1)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    wy = (wy - bn.running_mean.view(1, c, 1, 1, 1)) * scale.view(1, c, 1, 1, 1) + bn.bias.view(
        1, c, 1, 1, 1
    )
    return wy + x


@pytest.mark.parametrize(
    "options",
    [
        dict(activation="softmax"),
        dict(activation="relu"),
        dict(activation="softmax", sub_sample=True),
        dict(activation="softmax", use_norm=True),
    ],
)
def test_rnl_block_matches_hand_computation(options):
    torch.manual_seed(0)
    block = RNLBlock(8, kernel_size=(3, 3, 3), **options).eval()
    _perturb(block)
    with torch.no_grad():
        block.W[1].running_mean.uniform_(-0.1, 0.1)
        block.W[1].running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 8, 2, 4, 4)
    with torch.no_grad():
        expected = _rnl_by_hand(block, x)
        got = block(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_new_rnl_block_is_identity():
    block = RNLBlock(16, kernel_size=(3, 7, 7))
    x = torch.randn(2, 16, 3, 6, 6)
    assert torch.equal(block.train()(x), x)
    assert torch.equal(block.eval()(x), x)


def _fwd_bwd(block, x, g):
    xi = x.clone().requires_grad_()
    y = block(xi)
    (y * g).sum().backward()
    return [y.detach(), xi.grad] + [p.grad.clone() for p in block.parameters() if p.requires_grad]


@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_and_explicit_paths_agree_forward_and_backward(sub_sample, dtype):
    torch.manual_seed(0)
    fused = RNLBlock(32, kernel_size=(3, 3, 3), sub_sample=sub_sample, fused=True)
    _perturb(fused, seed=3)
    explicit = RNLBlock(32, kernel_size=(3, 3, 3), sub_sample=sub_sample, fused=False)
    explicit.load_state_dict(fused.state_dict())
    fused.to(dtype)
    explicit.to(dtype)
    if dtype == torch.float32:
        # In train mode the gradient of the conv bias in front of the BN is zero up to rounding
        # noise, which has no meaningful relative error in fp32; eval mode keeps every gradient
        # well above the noise. fp64 checks the train-mode graph to 1e-5 elementwise.
        fused.eval()
        explicit.eval()
    x = torch.randn(2, 32, 4, 8, 8, dtype=dtype)
    g = torch.randn_like(x)
    for a, b in zip(_fwd_bwd(fused, x, g), _fwd_bwd(explicit, x, g)):
        if dtype == torch.float64:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-10)
        else:  # relative to the tensor's norm
            assert ((a - b).norm() / b.norm()).item() < 1e-5


def test_store_attention_gives_normalised_source_by_target_matrix():
    torch.manual_seed(0)
    block = RNLBlock(8, kernel_size=(3, 3, 3), sub_sample=True)
    _perturb(block)
    block.store_attention = True
    x = torch.randn(1, 8, 2, 4, 4)
    out_with = block(x)
    a = block.attention
    assert a.shape == (1, 2 * 2 * 2, 2 * 4 * 4)  # (N, P_source, P)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(1, 32))
    block.store_attention = False
    torch.testing.assert_close(block(x), out_with, rtol=1e-5, atol=1e-5)


def test_channel_gate_matches_hand_computation():
    torch.manual_seed(0)
    gate = ChannelGate(6, reduction=2).eval()
    _perturb(gate)
    with torch.no_grad():
        gate.bn1.running_mean.uniform_(-0.1, 0.1)
        gate.bn1.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 6, 2, 3, 3)
    with torch.no_grad():
        got = gate(x)
    for b in range(2):
        scores = (
            torch.einsum("c,cp->p", gate.W_k.weight.view(6), x[b].reshape(6, -1)) + gate.W_k.bias
        )
        wts = torch.softmax(scores, dim=0)
        context = (x[b].reshape(6, -1) * wts).sum(dim=1)
        h = gate.W_v1.weight @ context + gate.W_v1.bias
        h = (h - gate.bn1.running_mean) / torch.sqrt(
            gate.bn1.running_var + gate.bn1.eps
        ) * gate.bn1.weight + gate.bn1.bias
        g = gate.W_v2.weight @ torch.relu(h) + gate.W_v2.bias
        torch.testing.assert_close(got[b], x[b] + g.view(6, 1, 1, 1), rtol=1e-5, atol=1e-6)


def test_new_channel_gate_is_identity():
    gate = ChannelGate(8)
    x = torch.randn(3, 8, 2, 3, 3)
    assert torch.equal(gate(x), x)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="softmax"):
        RNLBlock(8, activation="tanh")
    with pytest.raises(ValueError, match="depthwise"):
        RegionConv3d(8, impl="fft")


# ---- the classic non-local block (issue: trying new modules) ----------------------------------
def _nl_by_hand(block, x):
    from ops.nl import NonLocalBlock

    assert isinstance(block, NonLocalBlock)
    n, c, t, h, w = x.shape
    cp = block.inter_channels

    def conv1(conv, inp):
        return torch.einsum(
            "oc,nc...->no...", conv.weight.view(conv.out_channels, -1), inp
        ) + conv.bias.view(1, -1, 1, 1, 1)

    theta, phi, g = conv1(block.theta, x), conv1(block.phi, x), conv1(block.g, x)
    if block.sub_sample:  # (1, 2, 2) max-pool written out
        phi = phi.view(n, cp, t, h // 2, 2, w // 2, 2).amax(dim=(4, 6))
        g = g.view(n, cp, t, h // 2, 2, w // 2, 2).amax(dim=(4, 6))
    q, k, v = theta.reshape(n, cp, -1), phi.reshape(n, cp, -1), g.reshape(n, cp, -1)
    y = torch.zeros(n, cp, q.shape[2])
    for b in range(n):
        for tgt in range(q.shape[2]):
            s = torch.tensor(
                [sum(k[b, ch, m] * q[b, ch, tgt] for ch in range(cp)) for m in range(k.shape[2])]
            )
            wts = torch.exp(s - s.max())
            y[b, :, tgt] = (v[b] * (wts / wts.sum())).sum(dim=1)
    out = conv1(block.W[0], y.view(n, cp, t, h, w))
    bn = block.W[1]
    out = (out - bn.running_mean.view(1, -1, 1, 1, 1)) / torch.sqrt(bn.running_var + bn.eps).view(
        1, -1, 1, 1, 1
    )
    return out * bn.weight.view(1, -1, 1, 1, 1) + bn.bias.view(1, -1, 1, 1, 1) + x


@pytest.mark.parametrize("sub_sample", [True, False])
def test_classic_nl_block_matches_hand_computation_and_starts_as_identity(sub_sample):
    from ops.nl import NonLocalBlock

    torch.manual_seed(0)
    block = NonLocalBlock(6, sub_sample=sub_sample).eval()
    x = torch.randn(2, 6, 2, 4, 4)
    assert torch.equal(block(x), x)
    _perturb(block, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _nl_by_hand(block, x), rtol=1e-4, atol=1e-5)


def test_classic_nl_fused_and_explicit_agree_forward_and_backward():
    from ops.nl import NonLocalBlock

    torch.manual_seed(0)
    fused = NonLocalBlock(16, fused=True).double()
    _perturb(fused, seed=2)
    explicit = NonLocalBlock(16, fused=False).double()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 16, 3, 6, 6, dtype=torch.float64)
    g = torch.randn_like(x)
    for a, b in zip(_fwd_bwd(fused, x, g), _fwd_bwd(explicit, x, g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-10)


def _wrapped_rnl():
    """A trained-looking RNL block attached after an identity block, for 4-frame clips."""
    from ops.non_local import NonLocalWrapper

    torch.manual_seed(0)
    block = RNLBlock(16, kernel_size=(3, 3, 3))
    _perturb(block)
    return NonLocalWrapper(torch.nn.Identity(), 4, {"nl": block}).eval()


def test_wrapper_keeps_a_channels_last_block_output_channels_last():
    # The RNL block runs on [N, C, T, H, W] views of the block output; a channels-last output
    # goes back to [N*T, C, H, W] as a view (no copy into the contiguous layout), with the values
    # of the contiguous computation.
    wrapper = _wrapped_rnl()
    x = torch.randn(8, 16, 5, 5)  # 2 clips x 4 frames
    want = wrapper(x)
    got = wrapper(x.contiguous(memory_format=torch.channels_last))
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_wrapper_keeps_a_contiguous_block_output_contiguous():
    # The attached block's output (a conv3d result plus its input) may come out in another
    # layout; the next residual block gets the contiguous layout it was given, as the published
    # code does, so the backbone's convolutions run the same kernels with or without RNL.
    assert _wrapped_rnl()(torch.randn(8, 16, 5, 5)).is_contiguous()
