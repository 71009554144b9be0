"""The network a checkpoint holds: ``load_model(path, **overrides) -> (model, meta)`` for
evaluation, fine-tuning and the tools, next to the model it builds (ops/models.py).

The file itself is read through ops/checkpoint.py (``load_checkpoint``: ``.pth.tar`` with
``weights_only=True``, ``.safetensors`` with its sidecar); the settings come from the checkpoint
(ours) or its published file name (``checkpoint_info``); the weights are loaded strictly
(``load_weights``).
"""

from __future__ import annotations

import os

from torch import nn

from ops.checkpoint import (
    CheckpointError,
    checkpoint_info,
    is_safetensors,
    load_checkpoint,
    load_weights,
    non_float_weights,
    sidecar_path,
    stored_model_config,
    strip_module_prefix,
)
from ops.models import build_model
from ops.non_local import block_settings


def model_config_of(ckpt: dict) -> dict:
    """The model config stored in one of our checkpoints with the attached block's settings
    complete (the defaults of settings the checkpoint predates filled in), comparable with a
    built model's ``model_config()``."""
    cfg = stored_model_config(ckpt)
    if cfg.get("non_local"):
        cfg["nl_options"] = block_settings(cfg.get("nl_type", "rnl"), cfg.get("nl_options"))
    return cfg


def load_model(path: str | os.PathLike, **overrides) -> tuple[nn.Module, dict]:
    """The model (``TSN`` or ``I3D``) a checkpoint holds, with its weights, in eval mode, and
    ``checkpoint_info``.

    ``overrides`` change TSN keywords that the weights do not depend on (``num_segments``,
    ``input_size``, fast-path switches such as ``rnl_fused``); None values are ignored. The
    backbone is built from scratch: every weight comes from the checkpoint, nothing is
    downloaded. ``meta['model_config']`` is the rebuilt model's, overrides included.
    """
    ckpt = load_checkpoint(path)
    meta = checkpoint_info(ckpt, path)
    kwargs = dict(meta["model_config"])
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    # The settings of a .safetensors file come from its sidecar: a mismatch is the sidecar's.
    where = f"the sidecar {sidecar_path(path)} of {path}" if is_safetensors(path) else str(path)
    try:
        model = build_model(**kwargs, pretrain="scratch", print_spec=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"the model settings of {where} do not build a model ({exc}): "
            "export or save the checkpoint again"
        ) from None
    wrong_type = non_float_weights(model.state_dict(), strip_module_prefix(ckpt["state_dict"]))
    if wrong_type:  # the weights' fault, not the sidecar's
        raise CheckpointError(f"{path}: {wrong_type}")
    try:
        load_weights(model, ckpt["state_dict"])
    except CheckpointError as exc:
        if not is_safetensors(path):
            raise
        raise CheckpointError(f"{where} does not match the weights: {exc}") from None
    meta["model_config"] = model.model_config()
    return model.eval(), meta

