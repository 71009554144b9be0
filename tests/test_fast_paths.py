"""Every fast path of the model gives the results of the plain (published) computation.

Plain: explicit affinity, masked grouped region conv, shifted copies kept, nothing recomputed,
fp32, contiguous. Each fast path is switched on alone and the forward output and all parameter
gradients are compared; tolerances are stated per path (exact paths: float rounding; bf16: its
precision). The recompute paths (ops/recompute.py) replay the same operations, so in float64
they give the plain result to the last bit, in train mode (batch-statistics BatchNorm, whose
running statistics must be updated once) and in eval mode.
"""

import pytest
import torch

from ops import self_attention
from ops.models import TSN
from ops.rnl import RNLBlock

PLAIN = dict(rnl_fused=False, region_impl="masked", shift_recompute=False, recompute=False)


def _model(arch: str = "resnet18", partial_bn: bool = False, **fast) -> TSN:
    torch.manual_seed(0)
    cfg = {**PLAIN, **fast}
    model = TSN(
        6,
        4,
        "RGB",
        base_model=arch,
        is_shift=True,
        non_local=True,
        dropout=0.0,
        pretrain="scratch",
        partial_bn=partial_bn,
        print_spec=False,
        **cfg,
    )
    with torch.no_grad():  # trained-looking non-local blocks (not the zero-init identity)
        for m in model.modules():
            if isinstance(m, RNLBlock):
                m.W[1].weight.fill_(0.7)
                m.W[1].bias.fill_(0.1)
        model.base_model.layer2[0].cg.W_v2.weight.normal_(0, 0.05)
    return model


def _run(model: TSN, x: torch.Tensor, amp: bool = False, train: bool = True) -> list[torch.Tensor]:
    model.train(train)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    loss = torch.nn.functional.cross_entropy(out.float(), torch.tensor([1, 4]))
    loss.backward()
    return [out.detach().float()] + [
        p.grad.clone() for p in model.parameters() if p.grad is not None
    ]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    """Norm-wise relative closeness, plus a small absolute floor for gradients that are zero in exact
    arithmetic (a conv bias in front of a train-mode BN, the bias of a softmax score) and so carry
    only rounding noise in fp32."""
    return (a - b).norm().item() <= rel * b.norm().item() + 1e-5


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(1)
    return torch.randn(2, 4 * 3, 64, 64)


@pytest.fixture(scope="module")
def reference64(clip):
    """The plain computation in float64: the published result without fp32 rounding."""
    return _run(_model().double(), clip.double())


@pytest.fixture(scope="module")
def plain32_error(clip, reference64):
    """Per tensor, how far the plain computation itself is from float64 in fp32. The explicit
    softmax of unscaled dot products loses up to a few percent in a train-mode BN network (the
    fused kernel is closer to float64 than that), so fp32 comparisons are made against this."""
    return [_err(a, b) for a, b in zip(_run(_model(), clip), reference64)]


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm of the difference (less an absolute floor for gradients that are zero in exact
    arithmetic, e.g. a conv bias in front of a train-mode BN), relative to the reference."""
    return max((a.double() - b).norm().item() - 1e-5, 0.0) / max(b.norm().item(), 1e-12)


@pytest.fixture(scope="module")
def reference_eval(clip):
    # BN with running statistics: better conditioned than batch statistics of a 2-clip, 64-px
    # batch, where fp32 itself is a few percent away from fp64 in the early layers' gradients
    return _run(_model(), clip, train=False)


DEFAULTS = dict(rnl_fused=True, region_impl="depthwise", shift_recompute=True, recompute=True)
FAST_PATHS = [
    dict(rnl_fused=True),
    dict(region_impl="depthwise"),
    dict(shift_recompute=True),
    dict(recompute=True),
    dict(checkpoint_blocks=True),
    DEFAULTS,
    {**DEFAULTS, "checkpoint_blocks": True},
]
FAST_IDS = [
    "fused-attention",
    "depthwise-region-conv",
    "shift-recompute",
    "recompute",
    "checkpoint-blocks",
    "defaults",
    "defaults-checkpoint-blocks",
]


@pytest.mark.parametrize("fast", FAST_PATHS, ids=FAST_IDS)
def test_exact_fast_paths_compute_the_plain_result(fast, clip, reference64):
    # In float64 rounding is out of the way: the same function, forward and every gradient.
    got = _run(_model(**fast).double(), clip.double())
    assert len(got) == len(reference64)
    for a, b in zip(got, reference64):
        assert (a - b).norm().item() <= 1e-9 * b.norm().item() + 1e-12


@pytest.mark.parametrize("fast", FAST_PATHS, ids=FAST_IDS)
def test_exact_fast_paths_in_fp32_are_as_accurate_as_plain(fast, clip, reference64, plain32_error):
    got = _run(_model(**fast), clip)
    assert len(got) == len(reference64)
    for a, b, plain in zip(got, reference64, plain32_error):
        assert _err(a, b) <= 1.1 * plain + 5e-4  # fp32 rounding through a train-mode BN network


RECOMPUTE_PATHS = [dict(recompute=True), dict(checkpoint_blocks=True)]
RECOMPUTE_IDS = ["recompute", "checkpoint-blocks"]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fast", RECOMPUTE_PATHS, ids=RECOMPUTE_IDS)
def test_recompute_gives_the_plain_bits_and_updates_running_stats_once(fast, train, clip):
    # The same operations on the same inputs: identical in float64, forward and every gradient,
    # and the BatchNorm running statistics (and batch counters) after the step are the plain
    # step's, i.e. updated once, not again by the replay in the backward.
    plain, recomputed = _model().double(), _model(**fast).double()
    got = _run(recomputed, clip.double(), train=train)
    want = _run(plain, clip.double(), train=train)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    for (name, a), (_, b) in zip(recomputed.named_buffers(), plain.named_buffers()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("fast", RECOMPUTE_PATHS, ids=RECOMPUTE_IDS)
def test_recompute_with_partial_bn_and_resnet50_bottlenecks(fast, clip):
    # Partial BN (frozen eval-mode BatchNorm inside a train-mode network, frozen affine
    # parameters), Bottleneck blocks (whose cheap 1x1 convolutions are recomputed too) and the
    # published ResNet-50 placement of the RNL blocks and the channel gate.
    plain = _model("resnet50", partial_bn=True).double()
    recomputed = _model("resnet50", partial_bn=True, **fast).double()
    x = clip[:, :, :32, :32].double()
    got, want = _run(recomputed, x), _run(plain, x)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    for (name, a), (_, b) in zip(recomputed.named_buffers(), plain.named_buffers()):
        assert torch.equal(a, b), name


def test_recompute_under_bf16_autocast_gives_the_same_bits(clip):
    # The replay in the backward runs under the forward's autocast state, so in bf16 too the
    # recomputed activations, and so every gradient, are those of the step that keeps them.
    kept = _run(_model(**{**DEFAULTS, "recompute": False}), clip, amp=True)
    recomputed = _run(_model(**DEFAULTS), clip, amp=True)
    assert len(kept) == len(recomputed)
    for a, b in zip(recomputed, kept):
        assert torch.equal(a, b)


def test_channels_last_matches_plain(clip, reference_eval):
    model = _model().to_channels_last()
    assert model.base_model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    got = _run(model, clip.contiguous(memory_format=torch.channels_last), train=False)
    for a, b in zip(got, reference_eval):
        assert _close(a, b, 1e-4)


@pytest.mark.parametrize(
    "fast", [DEFAULTS, {**DEFAULTS, "recompute": False}], ids=["defaults", "no-recompute"]
)
def test_bf16_autocast_stays_within_bf16_precision(fast, clip, reference_eval):
    got = _run(_model(**fast), clip, amp=True, train=False)
    # bf16 keeps 8 significant bits: logits within 1%, parameter gradients (accumulated through
    # the whole network) within 15% for the median tensor
    assert _rel(got[0], reference_eval[0]) < 1e-2
    grads_rel = sorted(_rel(a, b) for a, b in zip(got[1:], reference_eval[1:]))
    assert grads_rel[len(grads_rel) // 2] < 0.15


LEAN = [DEFAULTS, {**DEFAULTS, "checkpoint_blocks": True}]
LEAN_IDS = ["defaults", "defaults-checkpoint-blocks"]


def _channels_last(model: TSN, x: torch.Tensor) -> tuple[TSN, torch.Tensor]:
    return model.to_channels_last(), x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("fast", LEAN, ids=LEAN_IDS)
def test_channels_last_with_recompute_trains_like_plain(fast, clip):
    # The lean fp32 step (docs/loader_and_step.md): the defaults with channels-last weights and
    # clips, in train mode (batch statistics), with the ResNet-50 bottlenecks whose cheap 1x1
    # convolutions are replayed. In float64, forward, every gradient and the running statistics
    # equal the plain contiguous step's up to summation order (the channels-last kernels add in
    # another order).
    x = clip[:, :, :32, :32].double()
    plain = _model("resnet50").double()
    lean, x_cl = _channels_last(_model("resnet50", **fast).double(), x)
    got, want = _run(lean, x_cl), _run(plain, x)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        # floor: gradients that are zero in exact arithmetic (a conv bias in front of a
        # train-mode BN) carry only float64 rounding noise (~1e-12 here)
        assert (a - b).norm().item() <= 1e-9 * b.norm().item() + 1e-10
    for (name, a), (_, b) in zip(lean.named_buffers(), plain.named_buffers()):
        assert (a.double() - b.double()).abs().max().item() <= 1e-9 * (1 + b.abs().max().item()), (
            name
        )


def test_channels_last_replay_gives_the_kept_bits(clip):
    # The replay in the backward runs the channels-last kernels on the channels-last tensors the
    # forward ran them on: in fp32, the recomputing step gives the bits of the step that keeps
    # every activation (forward and every gradient).
    x = clip[:, :, :32, :32]
    kept = _run(*_channels_last(_model("resnet50", **{**DEFAULTS, "recompute": False}), x))
    recomputed = _run(*_channels_last(_model("resnet50", **DEFAULTS), x))
    assert len(kept) == len(recomputed)
    for a, b in zip(recomputed, kept):
        assert torch.equal(a, b)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 40 positions for the fp32 self-attention backward (ops/self_attention.py), so
    that layer2's 256 positions (4 frames of 8 x 8) and layer3's 64 span several tiles, the last
    one partial; counts the backward's calls."""
    calls = []
    real = self_attention.symmetric_backward
    monkeypatch.setattr(self_attention, "TILE", 40)
    monkeypatch.setattr(
        self_attention, "symmetric_backward", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    return calls


@pytest.mark.parametrize(
    "fast", [dict(rnl_fused=True), DEFAULTS], ids=["fused-attention", "defaults"]
)
def test_self_attention_backward_is_as_accurate_as_plain(
    fast, clip, reference64, plain32_error, small_tiles
):
    model = _model(**fast)
    got = _run(model, clip)
    assert len(small_tiles) == sum(isinstance(m, RNLBlock) for m in model.modules())
    assert len(got) == len(reference64)
    for a, b, plain in zip(got, reference64, plain32_error):
        assert _err(a, b) <= 1.1 * plain + 5e-4


def test_recompute_with_the_self_attention_backward_gives_the_kept_bits(clip, small_tiles):
    # The replay takes the kept attention output (and its log-sum-exp) from the forward, so the
    # recomputing step's fp32 gradients are the bits of the step that keeps everything.
    kept = _run(_model(**{**DEFAULTS, "recompute": False}), clip)
    recomputed = _run(_model(**DEFAULTS), clip)
    assert small_tiles  # the symmetric backward ran
    for a, b in zip(recomputed, kept):
        assert torch.equal(a, b)
