"""MobileNetV2 (Sandler et al., CVPR 2018) in the module layout of the TSM release.

TSM's MobileNetV2 checkpoints name the layers ``features.<i>.conv.<j>`` with the expansion, depthwise
and projection convolutions flattened into one ``conv`` Sequential (8 entries, or 5 when the
expansion ratio is 1) and a bare ``classifier`` Linear. torchvision nests them differently, so
``from_torchvision_state_dict`` renames torchvision's ImageNet weights into this layout.
"""

from __future__ import annotations

import re

import torch
from torch import nn

# expansion t, output channels c, repeats n, first stride s
SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _conv_bn(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:  # point-wise expansion
            layers += [
                nn.Conv2d(inp, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # depthwise
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False),  # linear projection
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0):
        super().__init__()
        channels = int(32 * width_mult)
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        features: list[nn.Module] = [_conv_bn(3, channels, 3, 2)]
        for t, c, n, s in SETTINGS:
            out = int(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        features.append(_conv_bn(channels, self.last_channel, 1, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.last_channel, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x)).flatten(1)
        return self.classifier(x)


def from_torchvision_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision ``mobilenet_v2`` keys to this module's layout."""
    out = {}
    for key, value in sd.items():
        new = key.replace("classifier.1.", "classifier.")
        m = re.match(r"features\.(\d+)\.conv\.(.*)$", key)
        if m:
            block, rest = int(m.group(1)), m.group(2)
            # expansion-1 block: [dw(0.0, 0.1), proj 1, bn 2] -> 0, 1, 3, 4
            # others: [pw(0.0, 0.1), dw(1.0, 1.1), proj 2, bn 3] -> 0, 1, 3, 4, 6, 7
            table = (
                {"0.0": "0", "0.1": "1", "1": "3", "2": "4"}
                if block == 1
                else {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}
            )
            for src, dst in sorted(table.items(), key=lambda kv: -len(kv[0])):
                if rest.startswith(src + "."):
                    new = f"features.{block}.conv.{dst}.{rest[len(src) + 1 :]}"
                    break
        out[new] = value
    return out
