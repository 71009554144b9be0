"""What the published RNL-TSM training step keeps for the backward, counted from shapes.

Read off the released code (the RNL repository's ``ops/temporal_shift.py``, ``ops/rnl.py``,
``ops/depthwise_conv.py`` and ``ops/models.py``) and torchvision's ResNet, operation by operation:
the tensors each operation's backward needs, which autograd keeps alive from the forward to the
backward. A tensor kept by several operations (a ReLU output that is also the next convolution's
input) is counted once; parameters and the step's inputs are not counted (they exist anyway).

* TSM shift (not in place): a new zero-filled tensor receives the shifted channels by slice
  copies, which keep nothing; the convolution after it keeps the shifted copy.
* Bottleneck: each convolution keeps its input (the shifted copy; BN-ReLU outputs), each
  train-mode BatchNorm its input and the batch mean and inverse std, each ReLU (in place) its
  output; the projection (downsample) convolution keeps the block input (kept already by the
  block before, except for layer1.0, whose input is the max-pool output).
* Channel gate: the softmax keeps its output (one weight per position); ``x.reshape`` of the
  transposed block output is a copy, kept by the matrix product together with the weights; the
  two linear layers, the BatchNorm1d and the ReLU keep their small inputs and outputs.
* RNL block: theta's convolution keeps its input; the region convolution keeps theta and the
  masked weight ``weight * mask`` (a new tensor each step); the affinity product keeps the region
  features; the softmax keeps the ``P x P`` affinity, which the value product keeps too, with
  theta; ``W``'s convolution keeps ``y`` and its BatchNorm3d its input and batch statistics.
* Stem: BatchNorm and ReLU as above, the max-pool its int64 indices. Head: dropout keeps its
  float mask, the classifier its input, the loss its log-softmax and the total weight.

``published_step_bytes`` adds these up for the published RNL-TSM-ResNet50 (shift 1/8 blockres,
RNL after layer2.0 (with the channel gate), layer2.2, layer3.0, layer3.2, layer3.4), fp32, train
mode with batch-statistics BatchNorm (no partial BN), dropout > 0. The published module also
keeps each RNL block's input and affinity as attributes (``feature_maps``, ``attention_maps``,
for visualisation) until its next forward; those are the same tensors, so they add nothing here,
but they stay alive after their block's backward (``retained_bytes``).
"""

from __future__ import annotations

from ops.rnl import RNLBlock

FLOAT, INDEX = 4, 8  # bytes: fp32 activations, int64 max-pool indices

WIDTHS = (64, 128, 256, 512)  # bottleneck width per stage; the output is 4x
BLOCKS = (3, 4, 6, 3)  # ResNet-50
RNL_AT = {"layer2.0": (3, 7, 7), "layer2.2": (3, 7, 7), "layer3.0": (3, 3, 3),
          "layer3.2": (3, 3, 3), "layer3.4": (3, 3, 3)}  # fmt: skip
GATE_AT = "layer2.0"


def bn_bytes(numel: int, channels: int) -> int:
    """Train-mode BatchNorm: its input, and the batch mean and inverse std."""
    return FLOAT * (numel + 2 * channels)


def stem_bytes(frames: int, size: int) -> int:
    """conv1 (keeps the clip) -> bn1 -> relu -> 3x3/2 max-pool."""
    half, quarter = frames * 64 * (size // 2) ** 2, frames * 64 * (size // 4) ** 2
    return bn_bytes(half, 64) + FLOAT * half + INDEX * quarter


def bottleneck_bytes(
    frames: int, c_in: int, size: int, width: int, stride: int, downsample: bool, shifted: bool
) -> int:
    """A torchvision Bottleneck (stride on the 3x3 conv) on ``[frames, c_in, size, size]``."""
    out = size // stride
    kept = FLOAT * frames * c_in * size**2 if shifted else 0  # the shifted copy
    kept += bn_bytes(frames * width * size**2, width) + FLOAT * frames * width * size**2
    kept += bn_bytes(frames * width * out**2, width) + FLOAT * frames * width * out**2
    kept += bn_bytes(frames * 4 * width * out**2, 4 * width) + FLOAT * frames * 4 * width * out**2
    if downsample:
        kept += bn_bytes(frames * 4 * width * out**2, 4 * width)
    return kept


def channel_gate_bytes(clips: int, channels: int, positions: int) -> int:
    """The gate on ``[clips, channels, positions]`` (its input is kept by the block before it)."""
    hidden = channels // 2
    kept = FLOAT * clips * positions  # softmax output
    kept += FLOAT * clips * channels * positions  # the reshape copy of the input
    kept += FLOAT * clips * channels  # W_v1 input (the context)
    kept += bn_bytes(clips * hidden, hidden) + FLOAT * clips * hidden  # bn1, relu
    kept += FLOAT * clips * channels * positions  # the gate's output, kept by the RNL block
    return kept


def rnl_bytes(clips: int, channels: int, positions: int, kernel: tuple) -> int:
    """The RNL block on ``[clips, channels, positions]`` (its input not counted)."""
    inter = channels // 2
    per_group = inter // max(inter // 32, 1)
    kt, kh, kw = kernel
    kept = FLOAT * clips * inter * positions * 3  # theta, region features r, y
    kept += FLOAT * inter * per_group * kt * kh * kw  # weight * mask
    kept += FLOAT * clips * positions**2  # the softmax affinity
    kept += bn_bytes(clips * channels * positions, channels)  # W's conv output
    return kept


def head_bytes(frames: int, clips: int, num_class: int) -> int:
    """Dropout mask and classifier input (2048 features per frame), log-softmax, total weight."""
    return FLOAT * frames * 2048 * 2 + FLOAT * clips * num_class + FLOAT


def published_step_bytes(clips: int, frames: int, size: int, num_class: int) -> dict[str, int]:
    """Bytes kept for the backward by the published step, per unit: ``stem``, ``layerX.Y``
    (the residual block with what is attached after it) and ``head``."""
    nt = clips * frames
    units = {"stem": stem_bytes(nt, size)}
    c_in, res = 64, size // 4
    for stage, (width, blocks) in enumerate(zip(WIDTHS, BLOCKS), start=1):
        for i in range(blocks):
            stride = 2 if (i == 0 and stage > 1) else 1
            name = f"layer{stage}.{i}"
            kept = bottleneck_bytes(nt, c_in, res, width, stride, i == 0, shifted=True)
            if name == "layer1.0":  # the max-pool output, first kept by this block's projection
                kept += FLOAT * nt * c_in * res**2
            c_in, res = 4 * width, res // stride
            if name in RNL_AT:
                positions = frames * res**2
                if name == GATE_AT:
                    kept += channel_gate_bytes(clips, c_in, positions)
                kept += rnl_bytes(clips, c_in, positions, RNL_AT[name])
            units[name] = kept
    units["head"] = head_bytes(nt, clips, num_class)
    return units


def retained_bytes(clips: int, frames: int, size: int) -> int:
    """What the published RNL blocks keep as attributes after their backward (input, affinity)."""
    total = 0
    for name in RNL_AT:
        stage = int(name[5])
        channels, res = 4 * WIDTHS[stage - 1], size // 2 ** (stage + 1)
        positions = frames * res**2
        total += FLOAT * clips * (channels * positions + positions**2)
    return total


def keep_like_published(model) -> None:
    """Make the RNL blocks of ``model`` keep their input and affinity from one forward to the next,
    as the published module does (its ``feature_maps`` and ``attention_maps`` attributes, kept
    for visualisation): the benchmarks' plain configuration then holds what the published code
    holds, also after each block's backward. The affinity is the tensor the softmax keeps anyway
    (``store_attention`` keeps it without a copy)."""

    def keep_input(block, args) -> None:
        block.feature_maps = args[0]

    for m in model.modules():
        if isinstance(m, RNLBlock):
            m.store_attention = True
            m.register_forward_pre_hook(keep_input)
