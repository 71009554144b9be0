"""Backbones: torchvision's ResNets and a TSM-layout MobileNetV2, with offline-friendly ImageNet
weights.

``build_backbone(name, pretrain)`` returns the 2-D network before any temporal module is added.
``pretrain`` is ``'imagenet'`` (torchvision's IMAGENET1K_V1 weights, the ones the published models
started from), ``'scratch'`` or a backbone state_dict in torchvision's layout (``ops.models`` reads
a ``--pretrain PATH`` file into one: this package imports nothing from ``ops``).
ImageNet weights are read from the torch hub cache; when absent they are downloaded if the machine
can, and otherwise a clear error names the file to provide.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

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


def build_backbone(
    name: str, pretrain: str | Mapping[str, torch.Tensor] = "imagenet", source: str | None = None
) -> nn.Module:
    """The backbone ``name`` with ``pretrain``'s weights: ``'imagenet'``, ``'scratch'`` (or empty:
    none) or a state_dict (the classifier's weights in it are ignored). ``source`` names a
    state_dict's origin (its file) in the errors and the log."""
    if name not in ARCHS:
        raise ValueError(f"unknown base model {name!r}: choose one of {', '.join(ARCHS)}")
    net = (
        MobileNetV2() if name == "mobilenetv2" else getattr(torchvision.models, name)(weights=None)
    )
    if isinstance(pretrain, str):
        if pretrain == "scratch" or not pretrain:
            return net
        if pretrain != "imagenet":
            raise ValueError(
                f"pretrain {pretrain!r}: give 'imagenet', 'scratch' or a state_dict "
                "(ops.models.read_backbone_weights reads one from a file)"
            )
        sd = load_imagenet_state_dict(name)
    else:
        sd = dict(pretrain)
    label = source or (pretrain if isinstance(pretrain, str) else "state_dict")
    if name == "mobilenetv2" and any(k.startswith("classifier.1.") for k in sd):
        sd = from_torchvision_state_dict(sd)
    own = net.state_dict()  # the weights-file rule of ops.checkpoint.non_float_weights
    ints = [
        f"{k} {str(v.dtype).removeprefix('torch.')}"
        for k, v in sd.items()
        if isinstance(v, torch.Tensor) and k in own and own[k].is_floating_point()
        and not v.is_floating_point()
    ]  # fmt: skip
    if ints:
        raise ValueError(
            f"--pretrain {label}: {len(ints)} weight tensor(s) are not floating point where the "
            f"model's are ({', '.join(ints[:3])}): a weights file must hold floating-point tensors"
        )
    try:
        missing, unexpected = net.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # tensors of other shapes
        shapes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise ValueError(
            f"--pretrain {label} does not fit {name}: {len(shapes)} tensor(s) of other shapes "
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
    logger.info("loaded %s backbone weights (%s)", name, label)
    return net
