"""ops/lean_bottleneck.py: the recomputing bottleneck with its backward written out.

Each test builds a plain torchvision ``Bottleneck`` (autograd through its own modules, nothing
recomputed) and a copy switched to the recomputing class, runs both on the same input and compares
the forward, the input's gradient, every parameter's gradient and the running statistics. The
written-out backward calls the kernels autograd calls, so in float64 (and in float32) they agree bit
for bit.
"""

import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from benchmarks.measure import allocated_peak_mib
from ops import lean_bottleneck
from ops.models import TSN
from ops.recompute import RecomputedBottleneck, keep_attention, keep_block_outputs
from ops.temporal_shift import TemporalShift, shift_adjoint_add_, temporal_shift

SEGMENTS = 4


@pytest.fixture
def lean_calls(monkeypatch):
    """Counts the blocks that took the written-out backward."""
    calls = []
    real = lean_bottleneck._LeanBottleneck.apply
    monkeypatch.setattr(
        lean_bottleneck._LeanBottleneck, "apply", lambda *a: calls.append(1) or real(*a)
    )
    return calls


def _blocks(inplanes, planes, stride, shift, policy, dtype, momentum=0.1):
    torch.manual_seed(0)
    downsample = None
    if stride != 1 or inplanes != planes * 4:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * 4, momentum=momentum),
        )
    plain = Bottleneck(inplanes, planes, stride, downsample)
    for m in plain.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
            nn.init.uniform_(m.weight, 0.5, 1.5)  # not the identity, so that every term counts
            nn.init.uniform_(m.bias, -0.5, 0.5)
    if shift:
        plain.conv1 = TemporalShift(plain.conv1, n_segment=SEGMENTS, n_div=8)
    plain = plain.to(dtype).train()
    lean = copy.deepcopy(plain)
    lean.__class__ = RecomputedBottleneck
    lean.recompute_policy = policy
    return plain, lean


def _step(block, x, layout):
    x = x.detach().contiguous(memory_format=layout).requires_grad_()
    block = block.to(memory_format=layout)
    y = block(x)
    # a loss whose gradient differs everywhere, through an add whose backward hands the same
    # tensor to both of its inputs (the block must not write into its incoming gradient)
    w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y).requires_grad_()
    z = y + w
    (z * z.detach().flip(0)).sum().backward()
    grads = [x.grad, w.grad] + [p.grad for p in block.parameters()]
    return [y.detach(), *grads], [b.clone() for b in block.buffers()]


SHAPES = {
    # inplanes, planes, stride: conv1 (64) and conv3 (16) and the projection (64) recomputed
    # under keep_block_outputs (at most CHEAP_CONV_MACS per output); conv2 kept
    "cheap-1x1-projection": (64, 16, 2),
    # conv1 (576 in) and conv3 (144 in) kept, no projection
    "kept-1x1-identity": (576, 144, 1),
}


@pytest.mark.parametrize(
    "layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"]
)
@pytest.mark.parametrize(
    "policy", [keep_block_outputs, keep_attention], ids=["recompute", "checkpoint-blocks"]
)
@pytest.mark.parametrize("shift", [True, False], ids=["shift", "no-shift"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_written_out_backward_gives_the_plain_bits(dtype, shape, shift, policy, layout, lean_calls):
    inplanes, planes, stride = shape
    plain, lean = _blocks(inplanes, planes, stride, shift, policy, dtype)
    x = torch.randn(2 * SEGMENTS, inplanes, 6, 6, dtype=dtype)
    want, want_buffers = _step(plain, x, layout)
    got, got_buffers = _step(lean, x, layout)
    assert lean_calls == [1]
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    for a, b in zip(got_buffers, want_buffers):  # running mean/var updated once, counters too
        assert torch.equal(a, b)


def test_cumulative_running_average_is_updated_like_batchnorm(lean_calls):
    # momentum=None: BatchNorm averages over all batches seen, 1 / num_batches_tracked
    plain, lean = _blocks(64, 16, 2, True, keep_block_outputs, torch.float64, momentum=None)
    for _ in range(3):
        x = torch.randn(2 * SEGMENTS, 64, 6, 6, dtype=torch.float64)
        _, want = _step(plain, x, torch.contiguous_format)
        _, got = _step(lean, x, torch.contiguous_format)
    assert lean_calls == [1, 1, 1]
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert int(lean.bn1.num_batches_tracked) == 3


def test_what_takes_the_selective_checkpoint_instead(lean_calls):
    plain, lean = _blocks(64, 16, 2, True, keep_block_outputs, torch.float32)
    x = torch.randn(2 * SEGMENTS, 64, 6, 6)
    assert lean_bottleneck.parts(lean) is not None
    with torch.no_grad():
        lean(x)  # nothing to recompute without gradients
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lean(x.requires_grad_())  # the checkpoint replays under autocast
    frozen = copy.deepcopy(lean)
    frozen.bn2.eval()  # partial BN's frozen layers use the running statistics
    assert lean_bottleneck.parts(frozen) is None
    frozen.bn2.train()
    frozen.bn2.weight.requires_grad_(False)
    assert lean_bottleneck.parts(frozen) is None
    sync = copy.deepcopy(lean)
    sync.bn3 = nn.SyncBatchNorm(64)  # its statistics are reduced across processes
    assert lean_bottleneck.parts(sync) is None
    biased = copy.deepcopy(lean)
    biased.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=True)
    assert lean_bottleneck.parts(biased) is None
    assert lean_calls == []
    # and where it does not apply, the block still computes the plain block's result
    got, _ = _step(frozen, x, torch.contiguous_format)
    frozen_plain = copy.deepcopy(plain)
    frozen_plain.bn2.weight.requires_grad_(False)
    want, _ = _step(frozen_plain, x, torch.contiguous_format)
    assert lean_calls == []
    for a, b in zip(got, want):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize(
    "layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"]
)
def test_shift_adjoint_add_is_the_shifts_vector_jacobian_product_added(layout):
    torch.manual_seed(0)
    x = torch.randn(2 * SEGMENTS, 16, 3, 3).contiguous(memory_format=layout).requires_grad_()
    g = torch.randn(2 * SEGMENTS, 16, 3, 3).contiguous(memory_format=layout)
    acc = torch.randn(2 * SEGMENTS, 16, 3, 3).contiguous(memory_format=layout)
    (vjp,) = torch.autograd.grad(temporal_shift(x, SEGMENTS, 8), x, g)  # autograd's own adjoint
    want = acc + vjp
    shift_adjoint_add_(acc, g, SEGMENTS, 8)
    assert torch.equal(acc, want)


def _tsn(**kw) -> TSN:
    torch.manual_seed(0)
    return TSN(5, 4, "RGB", base_model="resnet50", is_shift=True, non_local=True, dropout=0.5,
               pretrain="scratch", partial_bn=False, print_spec=False, **kw).train()  # fmt: skip


def test_the_network_keeps_no_more_than_with_the_checkpoint(monkeypatch, lean_calls):
    # The written-out backward keeps what the selective checkpoint keeps, plus each BatchNorm's
    # batch mean and inverse std, and recomputes less: the allocator's peak over a whole
    # ResNet-50 step is the checkpoint's, give or take those statistics.
    model = _tsn(recompute=True)
    x = torch.randn(2 * 4, 3, 64, 64)

    def step():
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    allocated_peak_mib(step)  # the first profiled step holds one-time allocations
    lean = allocated_peak_mib(step)
    assert len(lean_calls) == 2 * 16  # every bottleneck, both steps
    monkeypatch.setattr(lean_bottleneck, "ENABLED", False)
    checkpointed = allocated_peak_mib(step)
    assert len(lean_calls) == 2 * 16
    blocks = [m for m in model.modules() if isinstance(m, RecomputedBottleneck)]
    stats_mib = (
        sum(
            2 * 4 * bn.num_features
            for b in blocks
            for bn in b.modules()
            if isinstance(bn, nn.BatchNorm2d)
        )
        / 2**20
    )
    assert checkpointed > 10 and lean <= checkpointed + stats_mib + 0.1  # 0.1: the MiB rounding
