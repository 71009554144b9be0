"""mmaction2's I3D checkpoints, read as they are published.

An mmaction2 recognizer file is ``{'meta': ..., 'state_dict': ...}`` with ``backbone.*`` (the
``ResNet3d``, its convolutions wrapped as ``ConvModule``s: ``conv1.conv`` / ``conv1.bn``,
``downsample.conv`` / ``downsample.bn``, mmcv's ``NonLocal3d`` as ``non_local_block``) and
``cls_head.fc_cls.*`` keys, e.g. the NL I3D-ResNet50 of
``i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb_20220812-afd8f562.pth``.
``convert`` turns it into one of our checkpoints: the ``I3D`` settings (``model_config``, read from
the tensors: depth, non-local places, sub-sampling, classes; the non-local mode from the file's
config text or its published name, since the embedded-Gaussian and dot-product blocks have the
same tensors) and the state_dict under our names. The mapping is strict: every tensor of the
file is used, every tensor of the model comes from the file, every shape is checked; anything
else is a one-line error naming the mmaction2 keys. (An unpublished file's data preprocessor
``mean`` / ``std`` are checked to be the ImageNet normalisation and left out.)

The name mapping (ours -> mmaction2, ``mmaction_key``):
``base_model.conv1`` / ``bn1`` -> ``backbone.conv1.conv`` / ``.bn``; ``layerS.B[.block].convN`` /
``bnN`` -> ``layerS.B.convN.conv`` / ``.bn``; ``downsample.0`` / ``.1`` -> ``downsample.conv`` /
``.bn``; ``layerS.B.nl.theta`` -> ``non_local_block.theta.conv``; ``nl.phi`` / ``nl.g`` ->
``phi.0.conv`` / ``g.0.conv`` (``phi.conv`` / ``g.conv`` without sub-sampling); ``nl.W.0`` / ``nl.W.1``
-> ``conv_out.conv`` / ``conv_out.bn``; ``new_fc`` -> ``cls_head.fc_cls``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import torch
from torch import nn

from archs.i3d import I3D_ARCHS, STAGE_BLOCKS
from ops.utils import key_mismatch

HEAD = "cls_head.fc_cls."
# ops.models.build_model, registered by ops.models when it is imported: ops.checkpoint converts
# these files on reading them and ops.models imports ops.checkpoint, so this module cannot
# import ops.models (a cycle) and the checkpoint file format does not import the model.
_build_model: Callable[..., nn.Module] | None = None
MODE_NAMES = {  # the non-local mode as the published file names and config texts write it
    "embedded_gaussian": ("nl-embedded-gaussian", "embedded_gaussian"),
    "dot_product": ("nl-dot-product", "dot_product"),
    "gaussian": ("nl-gaussian", "gaussian"),
}


def register_model_builder(build: Callable[..., nn.Module]) -> None:
    """Called by ``ops.models`` with its ``build_model`` (see ``_build_model``)."""
    global _build_model
    _build_model = build


def is_mmaction_checkpoint(ckpt: dict) -> bool:
    """Whether a loaded checkpoint is an mmaction2 recognizer (``backbone.*`` and
    ``cls_head.fc_cls.*`` keys, with or without ``meta``)."""
    sd = ckpt.get("state_dict")
    return (
        isinstance(sd, dict)
        and "backbone.conv1.conv.weight" in sd
        and f"{HEAD}weight" in sd
        and "model_config" not in ckpt
    )


def mmaction_key(key: str, sub_sample: bool = True) -> str | None:
    """The mmaction2 name of our I3D state_dict key, or None for a part mmaction2 has not
    (e.g. an RNL block)."""
    if key.startswith("new_fc."):
        return HEAD + key[len("new_fc.") :]
    if not key.startswith("base_model."):
        return None
    key = key[len("base_model.") :].replace(".block.", ".", 1)
    m = re.fullmatch(r"(conv1|bn1)\.(\w+)", key)
    if m:
        return f"backbone.conv1.{'conv' if m[1] == 'conv1' else 'bn'}.{m[2]}"
    m = re.fullmatch(r"(layer\d\.\d+)\.(.+)", key)
    if not m:
        return None
    block, rest = m[1], m[2]
    pool = ".0" if sub_sample else ""
    rules = (
        (r"conv(\d)\.weight", lambda r: f"conv{r[1]}.conv.weight"),
        (r"bn(\d)\.(\w+)", lambda r: f"conv{r[1]}.bn.{r[2]}"),
        (r"downsample\.0\.weight", lambda r: "downsample.conv.weight"),
        (r"downsample\.1\.(\w+)", lambda r: f"downsample.bn.{r[1]}"),
        (r"nl\.theta\.(\w+)", lambda r: f"non_local_block.theta.conv.{r[1]}"),
        (r"nl\.(phi|g)\.(\w+)", lambda r: f"non_local_block.{r[1]}{pool}.conv.{r[2]}"),
        (r"nl\.W\.0\.(\w+)", lambda r: f"non_local_block.conv_out.conv.{r[1]}"),
        (r"nl\.W\.1\.(\w+)", lambda r: f"non_local_block.conv_out.bn.{r[1]}"),
    )
    for pattern, name in rules:
        r = re.fullmatch(pattern, rest)
        if r:
            return f"backbone.{block}.{name(r)}"
    return None


def _text(meta) -> str:
    """The config text an mmengine checkpoint keeps in its meta, if any."""
    if not isinstance(meta, dict):
        return ""
    return "\n".join(str(meta[k]) for k in ("cfg", "config") if isinstance(meta.get(k), str))


def _mode(sd: dict, meta, path: str) -> str:
    """The non-local mode: Gaussian has no theta; embedded Gaussian and dot product have the
    same tensors, so the config text in ``meta`` or the published file name must say which."""
    if not any(".non_local_block.theta." in k for k in sd):
        return "gaussian"
    text = _text(meta)
    said = [
        mode
        for mode in ("embedded_gaussian", "dot_product")
        if re.search(rf"mode\s*=\s*['\"]{mode}['\"]", text)
    ]
    name = os.path.basename(path)
    said += [m for m in ("embedded_gaussian", "dot_product") if MODE_NAMES[m][0] in name]
    if len(set(said)) != 1:
        raise ValueError(
            f"cannot tell whether {path} holds embedded-Gaussian or dot-product non-local blocks "
            "(the tensors are the same, and neither its config nor its name says): keep the "
            "published file name (...-nl-embedded-gaussian_... or ...-nl-dot-product_...)"
        )
    return said[0]


def _use_scale(meta) -> bool:
    return bool(re.search(r"use_scale\s*=\s*True", _text(meta)))


def _dataset(meta, path: str) -> str | None:
    return "kinetics" if "kinetics400" in os.path.basename(path) + _text(meta) else None


def model_config_of(sd: dict, meta, path: str) -> dict:
    """The ``I3D`` settings of an mmaction2 NL I3D state_dict ``sd`` (see the module docstring)."""
    blocks = {int(m[1]) for k in sd if (m := re.match(r"backbone\.layer3\.(\d+)\.", k))}
    depth = next((d for d, n in STAGE_BLOCKS.items() if n[2] == len(blocks)), None)
    if depth is None:
        raise ValueError(
            f"{path}: an mmaction2 ResNet3d with {len(blocks)} res4 blocks; we build I3D "
            f"ResNet-50 and ResNet-101 ({', '.join(I3D_ARCHS)})"
        )
    places = sorted(
        {m[1] for k in sd if (m := re.match(r"backbone\.(layer\d\.\d+)\.non_local_", k))}
    )
    cfg = {
        "num_class": int(sd[f"{HEAD}weight"].shape[0]),
        "num_segments": 32,
        "modality": "RGB",
        "base_model": f"i3d_resnet{depth}",
        "dropout": 0.5,
        "non_local": bool(places),
        "nl_type": "nl",
        "nl_where": places or None,
        "nl_options": {},
        "input_size": 224,
    }
    if places:
        cfg["nl_options"] = {
            "sub_sample": any(".non_local_block.g.0." in k for k in sd),
            "mode": _mode(sd, meta, path),
            "use_scale": _use_scale(meta),
            "out_bias": any(".non_local_block.conv_out.conv.bias" in k for k in sd),
        }
    return cfg


def _without_normalisation(sd: dict, model, path: str) -> dict:
    """``sd`` without the data preprocessor's mean and std (unpublished mmaction2 files keep
    them; ``tools/deployment/publish_model.py`` removes them), after checking that they are our
    model's normalisation in 0-255 units."""
    ours = {"mean": model.input_mean, "std": model.input_std}
    for name, values in ours.items():
        key = f"data_preprocessor.{name}"
        if key in sd:
            given = sd[key].flatten().double()
            wanted = torch.tensor(values, dtype=torch.float64) * 255
            if given.shape != wanted.shape or not torch.allclose(given, wanted, atol=1e-3):
                raise ValueError(
                    f"{path}: its {key} {given.tolist()} is not the ImageNet normalisation "
                    f"{wanted.tolist()} the models here take"
                )
    return {k: v for k, v in sd.items() if not k.startswith("data_preprocessor.")}


def convert(ckpt: dict, path: str | os.PathLike) -> dict:
    """One of our checkpoints (``state_dict`` under our names, ``model_config``, ``dataset``,
    ``dense_sample``) from a loaded mmaction2 checkpoint; ValueError (one line) when its tensors
    do not fit the I3D they describe."""
    path = os.fspath(path)
    sd, meta = ckpt["state_dict"], ckpt.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    cfg = model_config_of(sd, meta, path)
    if _build_model is None:
        raise ValueError(f"{path} is an mmaction2 checkpoint: import ops.models to read it")
    with torch.device("meta"):  # shapes only
        model = _build_model(**cfg, pretrain="scratch", print_spec=False, partial_bn=False)
    sd = _without_normalisation(sd, model, path)
    sub_sample = cfg["nl_options"].get("sub_sample", True)
    wanted = {mmaction_key(k, sub_sample): (k, v.shape) for k, v in model.state_dict().items()}
    wanted.pop(None, None)
    missing = [k for k in wanted if k not in sd]
    unexpected = [k for k in sd if k not in wanted]
    misshaped = [
        f"{k} {tuple(sd[k].shape)} for {tuple(shape)}"
        for k, (_, shape) in wanted.items()
        if k in sd and (not isinstance(sd[k], torch.Tensor) or sd[k].shape != shape)
    ]
    if missing or unexpected or misshaped:
        raise ValueError(
            f"{path} is an mmaction2 checkpoint that does not fit the {cfg['base_model']} its "
            f"tensors describe ({key_mismatch(missing, unexpected, misshaped, shown=4)})"
        )
    return {
        "state_dict": {ours: sd[mm] for mm, (ours, _) in wanted.items()},
        "model_config": cfg,
        "dataset": _dataset(meta, path),
        "dense_sample": True,  # clips of consecutive frames (SampleFrames 32x2)
        "class_names": None,
        "epoch": meta.get("epoch"),
        "source": "mmaction2",
    }
