"""Inflated 3-D ResNets (I3D; Carreira and Zisserman, CVPR 2017), as the non-local I3D baseline
of Wang et al. ("Non-local Neural Networks", CVPR 2018) and mmaction2's
``configs/_base_/models/i3d_r50.py`` define them.

The input is a clip ``[N, 3, T, H, W]``; the layout of every tensor follows torchvision's
ResNet (``conv1``, ``bn1``, ``layerX.Y.conv1`` ... ``bn3``, ``downsample.0/1``, ``fc``), so that
ImageNet weights inflate name for name (``inflate_2d_state_dict``). For ResNet-50 at 32 frames:

- stem: ``conv1`` kernel (5, 7, 7), stride (2, 2, 2), padding (2, 3, 3); BN, ReLU; max-pool
  (1, 3, 3), stride (2, 2, 2), padding (0, 1, 1): ``T/4`` frames at ``H/4``;
- ``layer1``, then ``pool2``, a max-pool (2, 1, 1) over time: ``layer2..4`` see ``T/8`` frames;
- bottlenecks in the 'pytorch' style (the stride sits on the 3x3 conv); an *inflated* bottleneck's
  first conv is 3x1x1 (temporal padding 1), the others 1x1x1; the 3x3 convs are always 1x3x3.
  Inflated blocks (``INFLATE``): every block of res2, blocks 0, 2 of res3, 0, 2, 4 of res4 and
  block 1 of res5, mmaction2's ``((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))``;
- head: global average pool and ``fc`` (the video model replaces ``fc``, see ``ops/models.py``).

ResNet-101 has no published I3D configuration in mmaction2; ``inflate_pattern`` extends the
ResNet-50 rule to its 23 res4 blocks (every other block from the first).
"""

from __future__ import annotations

import torch
from torch import nn

# depth -> residual blocks per stage
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
I3D_ARCHS = {"i3d_resnet50": 50, "i3d_resnet101": 101}


def inflate_pattern(depth: int) -> tuple[tuple[int, ...], ...]:
    """Which blocks of each stage get a 3x1x1 first conv (1) or stay 1x1x1 (0): all of res2,
    every other block of res3 and res4 from the first, the middle block of res5. For ResNet-50
    this is mmaction2's ``((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))``."""
    n1, n2, n3, n4 = STAGE_BLOCKS[depth]
    return (
        (1,) * n1,
        tuple(int(i % 2 == 0) for i in range(n2)),
        tuple(int(i % 2 == 0) for i in range(n3)),
        tuple(int(i % 2 == 1) for i in range(n4)),
    )


INFLATE = {depth: inflate_pattern(depth) for depth in STAGE_BLOCKS}


class Bottleneck3d(nn.Module):
    """ResNet bottleneck on ``[N, C, T, H, W]`` with torchvision's parameter names; ``inflate``
    makes the first conv 3x1x1 (temporal padding 1); the stride is on the 1x3x3 conv."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        inflate: bool = True,
    ) -> None:
        super().__init__()
        kt = 3 if inflate else 1
        self.conv1 = nn.Conv3d(inplanes, planes, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(
            planes, planes, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
        )
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.inflate = inflate

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, T, H, W)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet3d(nn.Module):
    """I3D ResNet (see the module docstring). ``forward``: ``[N, 3, T, H, W]`` -> ``[N, classes]``;
    ``features``: the res5 output ``[N, 2048, T/8, H/32, W/32]``.

    Args:
        depth: 50 or 101.
        num_classes: outputs of ``fc`` (the video model replaces it).
        inflate: per stage, 1 for a block with a 3x1x1 first conv (default ``INFLATE[depth]``).
    """

    def __init__(
        self,
        depth: int = 50,
        num_classes: int = 1000,
        inflate: tuple[tuple[int, ...], ...] | None = None,
    ) -> None:
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"I3D depth {depth}: choose one of {sorted(STAGE_BLOCKS)}")
        inflate = inflate if inflate is not None else INFLATE[depth]
        if [len(s) for s in inflate] != list(STAGE_BLOCKS[depth]):
            raise ValueError(
                f"inflate pattern {inflate} does not have {STAGE_BLOCKS[depth]} blocks per stage"
            )
        self.depth = depth
        self.conv1 = nn.Conv3d(3, 64, (5, 7, 7), stride=(2, 2, 2), padding=(2, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(2, 2, 2), padding=(0, 1, 1))
        self.inplanes = 64
        for stage, (planes, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2))):
            self.add_module(f"layer{stage + 1}", self._make_layer(planes, stride, inflate[stage]))
            if stage == 0:
                self.pool2 = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1))
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(512 * Bottleneck3d.expansion, num_classes)
        self.reset_parameters()

    def _make_layer(self, planes: int, stride: int, inflate: tuple[int, ...]) -> nn.Sequential:
        out = planes * Bottleneck3d.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, out, 1, stride=(1, stride, stride), bias=False),
                nn.BatchNorm3d(out),
            )
        blocks = [Bottleneck3d(self.inplanes, planes, stride, downsample, bool(inflate[0]))]
        self.inplanes = out
        blocks += [Bottleneck3d(out, planes, inflate=bool(i)) for i in inflate[1:]]
        return nn.Sequential(*blocks)

    def reset_parameters(self) -> None:
        """mmaction2's ResNet3d initialisation from scratch: He-normal (fan out) convolutions,
        BatchNorm scale 1 and shift 0, except the last BN of every block, whose scale starts at
        0 (``zero_init_residual``, its default), so a new block is the identity and a deep
        network trains from scratch. ImageNet or checkpoint weights replace all of it."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, Bottleneck3d):
                nn.init.zeros_(m.bn3.weight)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """BN, ReLU and max-pool after ``conv1`` (ops/recompute.py recomputes them)."""
        return self.maxpool(self.relu(self.bn1(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem(self.conv1(x))  # (N, 64, T/4, H/4, W/4)
        x = self.pool2(self.layer1(x))  # (N, 256, T/8, H/4, W/4)
        return self.layer4(self.layer3(self.layer2(x)))  # (N, 2048, T/8, H/32, W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def inflate_2d_state_dict(sd2d: dict, net: ResNet3d, what: str = "2-D weights") -> dict:
    """A state_dict for ``net`` from torchvision-layout 2-D ResNet weights ``sd2d``: each 2-D
    kernel ``[O, I, kh, kw]`` is repeated over the ``kt`` time steps of its 3-D twin and divided
    by ``kt`` (a clip whose frames are all the same then gives the 2-D network's features away
    from the clip's ends); BatchNorm tensors are copied. The classifier (``fc``) is left out.

    Strict: a backbone tensor missing from ``sd2d`` or of another shape raises ValueError
    naming it (and the first few others)."""
    own = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    out, missing, misshaped = {}, [], []
    for key, target in own.items():
        src = sd2d.get(key)
        if src is None:
            if key.endswith("num_batches_tracked"):  # older torchvision files have none
                out[key] = target.clone()
            else:
                missing.append(key)
            continue
        if target.dim() == 5 and src.dim() == 4:
            kt = target.shape[2]
            if tuple(src.shape) != tuple(target.shape[:2]) + tuple(target.shape[3:]):
                misshaped.append(f"{key} {tuple(src.shape)} for {tuple(target.shape)}")
                continue
            out[key] = src.unsqueeze(2).expand_as(target) / kt
        elif tuple(src.shape) == tuple(target.shape):
            out[key] = src.clone()
        else:
            misshaped.append(f"{key} {tuple(src.shape)} for {tuple(target.shape)}")
    if missing or misshaped:
        problems = [f"missing {', '.join(missing[:4])}" if missing else ""]
        problems.append(f"other shapes: {', '.join(misshaped[:3])}" if misshaped else "")
        raise ValueError(
            f"{what} do not inflate into an I3D ResNet-{net.depth} "
            f"({'; '.join(p for p in problems if p)}): give a torchvision ResNet-{net.depth} "
            "state_dict"
        )
    return out
