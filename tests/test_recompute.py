"""ops/recompute.py: the wiring (state_dict, replicas, compile) and the BatchNorm statistics.

The numerics of the recompute paths (forward and every gradient equal to plain) are tested with
the other fast paths in tests/test_fast_paths.py.
"""

import torch
from torch import nn

from ops.models import TSN
from ops.non_local import NonLocalWrapper
from ops.recompute import RecomputedBottleneck, RecomputedResNet, running_stats_kept


def _tsn(**kw) -> TSN:
    torch.manual_seed(0)
    return TSN(5, 4, "RGB", base_model="resnet50", is_shift=True, non_local=True, dropout=0.5,
               pretrain="scratch", print_spec=False, **kw)  # fmt: skip


def test_recompute_changes_no_name_parameter_or_buffer():
    plain, recomputed = _tsn(recompute=False), _tsn(recompute=True)
    assert list(plain.state_dict()) == list(recomputed.state_dict())
    for (a, x), (b, y) in zip(plain.state_dict().items(), recomputed.state_dict().items()):
        assert a == b and torch.equal(x, y)
    assert [n for n, _ in plain.named_modules()] == [n for n, _ in recomputed.named_modules()]
    assert isinstance(recomputed.base_model, RecomputedResNet)  # the stem
    blocks = [m for m in recomputed.modules() if isinstance(m, RecomputedBottleneck)]
    assert len(blocks) == 16  # every residual block of ResNet-50
    wrappers = [m for m in recomputed.modules() if isinstance(m, NonLocalWrapper)]
    assert len(wrappers) == 5 and all(w.recompute for w in wrappers)


def test_a_shallow_replica_computes_with_its_own_parameters():
    # DataParallel replicates a module by copying its __dict__ and then giving the copy its own
    # parameters; the recomputing forward must use the replica's, not the original's.
    model = _tsn(recompute=True).train()
    block = model.base_model.layer1[1]
    replica = block._replicate_for_data_parallel()
    replica._parameters = dict(replica._parameters)
    replica.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    nn.init.zeros_(replica.conv2.weight)
    x = torch.randn(4, 256, 8, 8, requires_grad=True)
    zero_branch = replica(x)  # conv2 = 0: the residual branch is a per-channel constant
    assert not torch.allclose(zero_branch, block(x))
    zero_branch.sum().backward()
    assert replica.conv2.weight.grad is not None and block.conv2.weight.grad is None


def test_running_stats_kept_puts_back_train_mode_statistics_only():
    train_bn, eval_bn = nn.BatchNorm2d(3).train(), nn.BatchNorm2d(3).eval()
    with running_stats_kept([nn.Sequential(train_bn, eval_bn)]):
        train_bn(torch.randn(4, 3, 2, 2) + 5)
        eval_bn.running_mean.fill_(7.0)  # not a train-mode BN: left alone
    assert torch.equal(train_bn.running_mean, torch.zeros(3))
    assert torch.equal(train_bn.num_batches_tracked, torch.tensor(0))
    assert torch.equal(eval_bn.running_mean, torch.full((3,), 7.0))


def test_no_checkpointing_without_gradients():
    # Inference (no_grad, as in test_models.py) runs the plain forward: nothing to keep.
    model = _tsn(recompute=True).eval()
    x = torch.randn(1, 12, 64, 64)
    with torch.no_grad():
        out = model(x)
    plain = _tsn(recompute=False).eval()
    with torch.no_grad():
        assert torch.equal(out, plain(x))
