"""A recomputing ResNet bottleneck whose backward is written out (CPU, no autocast).

``ops/recompute.py`` runs each residual block under a selective activation checkpoint: the block's
forward is replayed in the backward under a dispatch mode that hands back the kept convolution
outputs and recomputes the rest (BatchNorm, ReLU, the temporal shift, the residual sum). That is
general, but on a CPU it costs time in a 2-clip RNL-TSM-ResNet50 training step: the dispatch mode
intercepts about 80 operations per block (forward and replay), the replay runs every BatchNorm
again (the block's last one and its residual sum only to find where the final ReLU was active),
and each replayed tensor is a fresh allocation.

Here the same block is one autograd Function. It keeps what the checkpoint keeps (the block's
input, the outputs of the convolutions that ``keep_block_outputs`` keeps, every one with
``checkpoint_blocks`` recomputed instead, and the block's output, which is the next block's input
anyway) plus each BatchNorm's batch mean and inverse standard deviation (two numbers per
channel). Its backward rebuilds each tensor when the gradient first needs it and drops it once
used:

* the final ReLU's mask comes from the kept block output (``out > 0``): the residual sum and the
  last BatchNorm are not replayed;
* ``relu(bn(conv_out))``, the input of the next convolution, is computed again from the kept
  convolution output by the same BatchNorm kernel without the running statistics, so its values
  are the forward's bit for bit (the statistics' pass is redone: rebuilding the output from the
  kept mean and inverse std with other operations differs from the kernel's in the last bit for
  some shapes);
* a convolution whose output is not kept is run again from its input;
* the temporal shift of ``conv1``'s input is redone from the block's input, and its gradient is
  added to the identity's through the shift's adjoint (``shift_adjoint_add_``), without an
  input-sized temporary.

Each gradient is the kernel autograd itself calls (``convolution_backward``,
``native_batch_norm_backward``, ``threshold_backward``), so the gradients are the plain block's bit
for bit (``tests/test_lean_bottleneck.py`` compares forward, every gradient and the running
statistics with the plain block's, in float64 and float32, contiguous and channels-last).

It applies to torchvision's ``Bottleneck`` (``conv1`` plain or wrapped by ``TemporalShift``, the
optional downsample a 1x1 convolution and a BatchNorm) on a CPU, when every BatchNorm is a plain
``BatchNorm2d`` in training mode with learnable affine parameters and running statistics, the
convolutions are zero-padded without bias, gradients are recorded and neither autocast nor
``torch.compile`` is on. Anything else (a GPU, where it was not measured; SyncBatchNorm; partial
BN's frozen layers; ``--amp``; ``torch.compile``; BasicBlock and I3D's blocks) takes the selective
checkpoint, which computes the same thing. The backward is not differentiable again
(``create_graph=True`` raises).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torchvision.models.resnet import Bottleneck

from ops.temporal_shift import TemporalShift, shift_adjoint_add_, temporal_shift

aten = torch.ops.aten

# False sends every block to the selective checkpoint (benchmarks/bench_step.py compares the two).
ENABLED = True


def _plain_conv(conv: nn.Module) -> bool:
    return type(conv) is nn.Conv2d and conv.bias is None and conv.padding_mode == "zeros"


def _training_bn(bn: nn.Module) -> bool:
    return (
        type(bn) is nn.BatchNorm2d
        and bn.training
        and bn.affine
        and bn.track_running_stats
        and bn.weight.requires_grad
        and bn.bias.requires_grad
    )


def parts(block: Bottleneck) -> tuple | None:
    """``(shift, convs, bns)`` of ``block`` if the written-out backward applies to its layout and
    state (see the module docstring), else None. ``shift`` is ``(n_segment, fold_div)`` or None;
    ``convs`` and ``bns`` list conv1..3 and bn1..3, then the downsample's pair if there is one."""
    conv1, shift = block.conv1, None
    if isinstance(conv1, TemporalShift):
        conv1, shift = conv1.net, (conv1.n_segment, conv1.fold_div)
    convs = [conv1, block.conv2, block.conv3]
    bns = [block.bn1, block.bn2, block.bn3]
    ds = block.downsample
    if ds is not None:
        if not (isinstance(ds, nn.Sequential) and len(ds) == 2):
            return None
        convs.append(ds[0])
        bns.append(ds[1])
    if not (all(map(_plain_conv, convs)) and all(map(_training_bn, bns))):
        return None
    return shift, convs, bns


def applies(x: torch.Tensor) -> bool:
    """Whether a block's call on ``x`` can take ``forward`` (its layout's test is ``parts``)."""
    return (
        ENABLED
        and x.device.type == "cpu"
        and torch.is_grad_enabled()
        and not torch.is_autocast_enabled(x.device.type)
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


def forward(block: Bottleneck, x: torch.Tensor, keep, layout: tuple) -> torch.Tensor:
    """``block(x)`` through ``_LeanBottleneck``; ``keep(conv)`` says whether a convolution's output
    is kept for the backward (else it is run again there); ``layout`` is ``parts(block)``."""
    shift, convs, bns = layout
    params = [p for conv, bn in zip(convs, bns) for p in (conv.weight, bn.weight, bn.bias)]
    kept = tuple(bool(keep(conv)) for conv in convs)
    return _LeanBottleneck.apply(x, shift, convs, bns, kept, *params)


def _conv(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)


def _bn_train(x: torch.Tensor, bn: nn.BatchNorm2d, weight, bias):
    """BatchNorm in training mode, as ``nn.BatchNorm2d.forward`` runs it (the running statistics
    and the batch counter updated): ``(out, batch mean, batch inverse std)``."""
    bn.num_batches_tracked.add_(1)
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return aten.native_batch_norm(
        x, weight, bias, bn.running_mean, bn.running_var, True, momentum, bn.eps
    )


def _bn_relu_again(x: torch.Tensor, bn: nn.BatchNorm2d, weight, bias) -> torch.Tensor:
    """``relu(bn(x))`` as the forward computed it: the same kernel on the same input, without
    touching the running statistics (bit for bit the forward's values; the batch statistics are
    computed again, one pass over ``x``, since rebuilding the output from the saved ones in
    another kernel differs from it in the last bit for some shapes)."""
    out = aten.native_batch_norm(x, weight, bias, None, None, True, 0.0, bn.eps)[0]
    return out.relu_()


def _conv_backward(grad, x, conv: nn.Conv2d, weight):
    """Gradients of ``_conv`` with respect to its input and its weight."""
    gx, gw, _ = aten.convolution_backward(
        grad,
        x,
        weight,
        None,
        list(conv.stride),
        list(conv.padding),
        list(conv.dilation),
        False,
        [0] * len(conv.stride),
        conv.groups,
        [True, True, False],
    )
    return gx, gw


def _bn_backward(grad, x, bn: nn.BatchNorm2d, weight, mean, invstd):
    """Gradients of training-mode BatchNorm: input, weight, bias."""
    return aten.native_batch_norm_backward(
        grad, x, weight, None, None, mean, invstd, True, bn.eps, [True, True, True]
    )


class _LeanBottleneck(torch.autograd.Function):
    """``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(shift(x))))))))) + identity(x))``, the
    identity being ``x`` or ``bn4(conv4(x))`` (the downsample)."""

    @staticmethod
    def forward(ctx, x, shift, convs, bns, kept, *params):
        weights, gammas, betas = params[0::3], params[1::3], params[2::3]
        outs, stats = [], []
        h = temporal_shift(x, *shift) if shift is not None else x
        for i in range(len(convs)):
            o = _conv(x if i == 3 else h, convs[i], weights[i])
            outs.append(o if kept[i] else None)
            h, mean, invstd = _bn_train(o, bns[i], gammas[i], betas[i])
            del o
            stats += [mean, invstd]
            if i < 2:
                h.relu_()
            elif i == 2:
                out = h
        out += h if len(convs) == 4 else x
        out.relu_()
        ctx.conf = (shift, convs, bns)
        ctx.save_for_backward(x, out, *outs, *stats, *params)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        shift, convs, bns = ctx.conf
        saved = ctx.saved_tensors
        n = len(convs)
        x, out = saved[:2]
        block = _Recomputing(
            x, shift, convs, bns, saved[2 : 2 + n], saved[2 + n : 2 + 3 * n], saved[2 + 3 * n :]
        )
        grads: list = [None] * n
        g = aten.threshold_backward(grad_out, out, 0)  # the last ReLU
        if n == 4:
            grad_x, grads[3] = block.bn_conv_backward(g, 3)
        else:
            grad_x = g
        for i in (2, 1, 0):
            g, grads[i] = block.bn_conv_backward(g, i)
            if i > 0:  # the input of conv i is the output of the ReLU after bn (i - 1)
                g = aten.threshold_backward(g, block.inputs.pop(i), 0)
        del block
        # grad_x (the identity's or the downsample's gradient) is this function's own tensor
        if shift is not None:
            shift_adjoint_add_(grad_x, g, *shift)
        else:
            grad_x += g
        return (grad_x, None, None, None, None, *[t for triple in grads for t in triple])


class _Recomputing:
    """The tensors of one backward of ``_LeanBottleneck``: each convolution's input and output
    rebuilt when first asked for (from what the forward kept) and dropped once used."""

    def __init__(self, x, shift, convs, bns, outs, stats, params):
        self.x, self.shift, self.convs, self.bns = x, shift, convs, bns
        self.outs = list(outs)  # None where not kept
        self.means, self.invstds = stats[0::2], stats[1::2]
        self.weights, self.gammas, self.betas = params[0::3], params[1::3], params[2::3]
        self.inputs: dict[int, torch.Tensor] = {}

    def conv_input(self, i: int) -> torch.Tensor:
        if i not in self.inputs:
            if i == 3:  # the downsample's
                self.inputs[i] = self.x
            elif i == 0:
                shift = self.shift
                self.inputs[i] = temporal_shift(self.x, *shift) if shift is not None else self.x
            else:
                self.inputs[i] = _bn_relu_again(
                    self.conv_output(i - 1), self.bns[i - 1], self.gammas[i - 1], self.betas[i - 1]
                )
        return self.inputs[i]

    def conv_output(self, i: int) -> torch.Tensor:
        if self.outs[i] is None:
            self.outs[i] = _conv(self.conv_input(i), self.convs[i], self.weights[i])
        return self.outs[i]

    def bn_conv_backward(self, g: torch.Tensor, i: int) -> tuple:
        """From the gradient at bn i's output: the gradient at conv i's input, and those of conv
        i's weight and bn i's weight and bias."""
        gi, g_gamma, g_beta = _bn_backward(
            g, self.conv_output(i), self.bns[i], self.gammas[i], self.means[i], self.invstds[i]
        )
        self.outs[i] = None
        g_in, g_weight = _conv_backward(gi, self.conv_input(i), self.convs[i], self.weights[i])
        del gi
        if i in (0, 3):
            self.inputs.pop(i, None)
        return g_in, (g_weight, g_gamma, g_beta)
