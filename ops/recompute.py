"""Recomputing cheap activations in the backward instead of keeping them.

A training step keeps, for the backward, the inputs of every operation whose gradient needs them.
In a ResNet most of that memory is the output of BatchNorm and ReLU (the input of the next
convolution) and, with TSM, the shifted copies; in an RNL block it is theta, the region features
and their ``[N, P, C']`` copies for the attention. All of them are a few element-wise passes (or a
1x1 convolution) away from a tensor that is kept anyway. With ``recompute`` each residual block, and
each module attached after one (channel gate, RNL, ...), runs under activation checkpointing with
a *selective* policy (``torch.utils.checkpoint`` with ``create_selective_checkpoint_contexts``):

* in a residual block the outputs of the convolutions are kept (they are what BatchNorm's
  backward needs, and recomputing them would cost most of the block's time); BatchNorm, ReLU, the
  temporal shift and the residual sum are recomputed from them in the backward;
* in an attached module only the attention's outputs are kept (the ``P x P`` products are the
  expensive part); the 1x1 convolutions, the region convolution, the layout copies and the output
  BatchNorm are recomputed from the module's input.

``checkpoint_blocks`` keeps less: a residual block keeps only its input and everything in it,
convolutions included, is recomputed (the attention's outputs are still kept). It costs about one
more forward pass of the backbone and lets longer clips fit.

The recomputation replays the same operations on the same inputs, so the results are the same as
without it (the equivalence tests compare forward and every gradient). BatchNorm in train mode
would update its running statistics a second time when replayed: they are put back after each
recomputation. The state_dict and module names are unchanged (a block becomes an instance of a
subclass of its own class whose forward checkpoints the original one; the attached modules are
checkpointed by their ``NonLocalWrapper``). Under ``torch.compile`` the plain forward is traced
(inductor chooses what to recompute itself).

On a CPU without autocast a torchvision ``Bottleneck`` in training mode does not replay its forward
at all: ``ops/lean_bottleneck.py`` writes its backward out, keeping the same tensors (same bits,
less time). The policies below still say which convolution outputs it keeps.

This module holds the mechanism (policies, ``checkpointed``, the recomputing block classes) and
imports no model code beyond the backbones' block classes (torchvision's, ``archs/i3d.py``);
``ops.models.make_recompute`` walks a model and switches its blocks over.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from archs.i3d import Bottleneck3d, ResNet3d
from ops import lean_bottleneck

aten = torch.ops.aten

# The attention kernels (fused, per device) and the explicit path's matrix products.
ATTENTION_OPS = frozenset(
    op
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "bmm",
    )
    if hasattr(aten, name)
    for op in (getattr(aten, name).default,)
)
CONV_OPS = frozenset({aten.convolution.default})

Policy = Callable[..., CheckpointPolicy]
SAVE, RECOMPUTE = CheckpointPolicy.MUST_SAVE, CheckpointPolicy.PREFER_RECOMPUTE

# A convolution with at most this many multiply-adds per output element is recomputed too: in
# a ResNet-50 that is the 1x1 expansion (and projection) convolutions of layer1 and layer2,
# whose outputs are the largest tensors of the network (4x the block's width) while costing
# about 1.5% of a training step's arithmetic to recompute.
CHEAP_CONV_MACS = 128


def _costly_conv(weight: torch.Tensor) -> bool:
    """Whether a convolution with this ``[out, in / groups, *kernel]`` weight costs more than
    ``CHEAP_CONV_MACS`` multiply-adds per output element (its output is kept, not recomputed)."""
    return math.prod(weight.shape[1:]) > CHEAP_CONV_MACS


def keep_block_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Residual blocks: keep attention outputs and the outputs of costly convolutions."""
    if op in ATTENTION_OPS:
        return SAVE
    if op in CONV_OPS and _costly_conv(args[1]):  # aten.convolution(input, weight, ...)
        return SAVE
    return RECOMPUTE


def keeps_output(policy: Policy, conv: nn.Module) -> bool:
    """Whether ``policy`` keeps the output of the convolution module ``conv`` (for blocks whose
    backward is written out, ``ops/lean_bottleneck.py``)."""
    return policy is keep_block_outputs and _costly_conv(conv.weight)


def keep_attention(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Attached modules (and ``checkpoint_blocks``): keep only the attention outputs."""
    return SAVE if op in ATTENTION_OPS else RECOMPUTE


@contextlib.contextmanager
def running_stats_kept(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Put back the running statistics (and batch counters) of the train-mode BatchNorms in
    ``modules`` on exit, so that replaying a forward does not update them twice."""
    saved = [
        (bn, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
        for module in modules
        for bn in module.modules()
        if isinstance(bn, _BatchNorm) and bn.training and bn.track_running_stats
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, mean, var, count in saved:
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(count)


@contextlib.contextmanager
def _replaying(modules: list[nn.Module], replay) -> Iterator[None]:
    with running_stats_kept(modules), replay:  # the statistics are put back after the replay
        yield


def _contexts(modules: list[nn.Module], policy: Policy):
    keep, replay = create_selective_checkpoint_contexts(policy)
    return keep, _replaying(modules, replay)


def checkpointed(fn: Callable, modules: list[nn.Module], policy: Policy, *args):
    """``fn(*args)``, keeping for the backward only what ``policy`` keeps (and ``args``); the rest
    is recomputed in the backward. ``modules`` are those ``fn`` runs (for their BatchNorms).
    Without gradients, and while ``torch.compile`` traces (inductor picks what to recompute
    itself), it is just ``fn(*args)``."""
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return fn(*args)
    return checkpoint(
        fn,
        *args,
        use_reentrant=False,
        preserve_rng_state=False,  # nothing random in a residual block or an attached module
        context_fn=functools.partial(_contexts, modules, policy),
    )


class _Recomputed:
    """A residual block whose forward runs under ``checkpointed`` with ``self.recompute_policy``."""

    recompute_policy = staticmethod(keep_block_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpointed(super().forward, [self], self.recompute_policy, x)


class RecomputedBottleneck(_Recomputed, Bottleneck):
    """Takes ``ops/lean_bottleneck.py``'s written-out backward where it applies (the same
    tensors kept, without the dispatch mode and the replay), the checkpoint otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = lean_bottleneck.parts(self) if lean_bottleneck.applies(x) else None
        if layout is None:
            return super().forward(x)
        return lean_bottleneck.forward(
            self, x, functools.partial(keeps_output, self.recompute_policy), layout
        )


class RecomputedBasicBlock(_Recomputed, BasicBlock):
    pass


class RecomputedBottleneck3d(_Recomputed, Bottleneck3d):
    pass


RECOMPUTED = {
    Bottleneck: RecomputedBottleneck,
    BasicBlock: RecomputedBasicBlock,
    Bottleneck3d: RecomputedBottleneck3d,
}


class RecomputedResNet(ResNet):
    """torchvision's ResNet whose stem keeps only the first convolution's output: its BatchNorm,
    ReLU and max-pool (the ReLU output and the int64 pool indices, 1.5x the size of layer1's
    input) are recomputed in the backward."""

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(x)))

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:  # torchvision's, with the stem above
        x = checkpointed(self._stem, [self.bn1], keep_attention, self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class RecomputedResNet3d(ResNet3d):
    """The I3D ResNet whose stem keeps only the first convolution's output (as above)."""

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return checkpointed(super()._stem, [self.bn1], keep_attention, x)


# The network classes whose stem recomputes (``ops.models.make_recompute`` switches a backbone
# of a key's class to its value).
RECOMPUTED_NETS = {ResNet: RecomputedResNet, ResNet3d: RecomputedResNet3d}
