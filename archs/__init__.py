"""Backbones: torchvision's ResNets and a TSM-layout MobileNetV2, with offline-friendly ImageNet
weights.

``build_backbone(name, pretrain)`` returns the 2-D network before any temporal module is added.
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

from archs.mobilenet_v2 import MobileNetV2, from_torchvision_state_dict

logger = logging.getLogger(__name__)

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
ARCHS = RESNETS + ("mobilenetv2",)


def imagenet_weights_url(name: str) -> str:
    tv_name = "mobilenet_v2" if name == "mobilenetv2" else name
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


def build_backbone(name: str, pretrain: str = "imagenet") -> nn.Module:
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
    from ops.checkpoint import non_float_weights  # here: ops.checkpoint imports the models

    wrong_type = non_float_weights(net.state_dict(), sd)
    if wrong_type:
        raise ValueError(f"--pretrain {pretrain}: {wrong_type}")
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
