"""Backbones: torchvision's ResNets, a TSM-layout MobileNetV2 and inflated 3-D ResNets (I3D,
``archs/i3d.py``), with offline-friendly ImageNet weights.

``build_backbone(name, pretrain)`` returns the 2-D network before any temporal module is added,
or for ``i3d_resnet50`` / ``i3d_resnet101`` the 3-D one, whose ImageNet weights are torchvision's
2-D ones inflated (``archs.i3d.inflate_2d_state_dict``).
``pretrain`` is ``'imagenet'`` (torchvision's IMAGENET1K_V1 weights, the ones the published models
started from), ``'scratch'`` or a path to a backbone state_dict in torchvision's layout.
ImageNet weights are read from the torch hub cache; when absent they are downloaded if the machine
can, and otherwise a clear error names the file to provide.
"""

from __future__ import annotations

import logging
import os

import torch
import torchvision
from torch import nn

from archs.i3d import I3D_ARCHS, ResNet3d, inflate_2d_state_dict
from archs.mobilenet_v2 import MobileNetV2, from_torchvision_state_dict

logger = logging.getLogger(__name__)

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
ARCHS = RESNETS + ("mobilenetv2",)


def imagenet_weights_url(name: str) -> str:
    """torchvision's ImageNet weights of ``name`` (an I3D network: of the 2-D ResNet it inflates)."""
    tv_name = "mobilenet_v2" if name == "mobilenetv2" else name.removeprefix("i3d_")
    return torchvision.models.get_model_weights(tv_name)["IMAGENET1K_V1"].url


def imagenet_weights_path(name: str) -> str:
    """Where the ImageNet weights of ``name`` live in the torch hub cache."""
    filename = os.path.basename(imagenet_weights_url(name))
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def load_imagenet_state_dict(name: str) -> dict:
    path = imagenet_weights_path(name)
    if not os.path.isfile(path):
        try:
            logger.info("downloading ImageNet weights for %s to %s", name, path)
            torch.hub.load_state_dict_from_url(imagenet_weights_url(name), progress=False)
        except Exception as exc:  # offline, proxy, ...
            raise FileNotFoundError(
                f"ImageNet weights for {name} not found at {path} and the download failed ({type(exc).__name__}): "
                f"copy {os.path.basename(path)} there, or pass --pretrain PATH (a state_dict file) or --pretrain scratch"
            ) from None
    return torch.load(path, map_location="cpu", weights_only=True)


def _read_state_dict(path: str) -> dict:
    from ops.checkpoint import read_torch_file  # here: ops.checkpoint imports the models

    sd = read_torch_file(path, what="--pretrain file")  # one-line errors, never unpickles code
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(
            f"--pretrain {path} does not hold a state_dict: expected a dict of tensors"
        )
    return {k.removeprefix("module."): v for k, v in sd.items()}


def build_i3d(name: str, pretrain: str = "imagenet") -> ResNet3d:
    """The I3D ResNet ``name``; ``pretrain`` 'imagenet' inflates torchvision's 2-D ResNet weights,
    a path gives a state_dict of either a 2-D ResNet (inflated) or this 3-D network."""
    net = ResNet3d(I3D_ARCHS[name])
    if pretrain == "scratch" or not pretrain:
        return net
    imagenet = pretrain == "imagenet"
    sd = load_imagenet_state_dict(name) if imagenet else _read_state_dict(pretrain)
    what = f"ImageNet weights of {name[4:]}" if imagenet else f"--pretrain {pretrain}"
    conv1 = sd.get("conv1.weight")
    inflated = isinstance(conv1, torch.Tensor) and conv1.dim() == 4
    if inflated:
        sd = inflate_2d_state_dict(sd, net, what)  # strict, one-line errors
    own = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    bad = sorted(set(own) ^ set(sd)) + [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if bad:
        raise ValueError(
            f"{what} does not fit {name} ({len(bad)} tensors missing, unexpected or of other "
            f"shapes, e.g. {bad[0]}): give a torchvision ResNet state_dict (2-D, inflated) or an "
            f"{name} backbone state_dict"
        )
    net.load_state_dict(sd, strict=False)
    logger.info("loaded %s backbone weights (%s%s)", name, pretrain, ", inflated" * inflated)
    return net


def build_backbone(name: str, pretrain: str = "imagenet") -> nn.Module:
    if name in I3D_ARCHS:
        return build_i3d(name, pretrain)
    if name not in ARCHS:
        raise ValueError(f"unknown base model {name!r}: choose one of {', '.join(ARCHS)}")
    net = (
        MobileNetV2() if name == "mobilenetv2" else getattr(torchvision.models, name)(weights=None)
    )
    if pretrain == "scratch" or not pretrain:
        return net
    sd = load_imagenet_state_dict(name) if pretrain == "imagenet" else _read_state_dict(pretrain)
    if name == "mobilenetv2" and any(k.startswith("classifier.1.") for k in sd):
        sd = from_torchvision_state_dict(sd)
    try:
        missing, unexpected = net.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # tensors of other shapes
        shapes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise ValueError(
            f"--pretrain {pretrain} does not fit {name}: {len(shapes)} tensor(s) of other shapes "
            f"({shapes[0][:150] if shapes else exc}): give a {name} backbone state_dict"
        ) from None
    head = ("fc.", "classifier.")
    missing = [k for k in missing if not k.startswith(head)]
    unexpected = [k for k in unexpected if not k.startswith(head)]
    if missing or unexpected:
        raise ValueError(
            f"pretrained weights do not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            " (expected a torchvision-layout backbone state_dict)"
        )
    logger.info("loaded %s backbone weights (%s)", name, pretrain)
    return net
