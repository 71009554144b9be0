"""Checkpoints: atomic saving, safe loading, and reading the published ones.

Loading never unpickles arbitrary objects: ``torch.load(weights_only=True)`` accepts tensors and
plain Python containers/numbers/strings, plus numpy scalars and dtypes, which older checkpoints
sometimes hold for ``best_prec1``. Anything else (a class, a function call such as ``os.system``)
is refused with a one-line ``CheckpointError``.

Published checkpoints (SPEC section 6) are ``{'epoch', 'arch', 'state_dict', 'optimizer',
'best_prec1'}`` with ``module.``-prefixed keys and the model settings only in the file name,
e.g. ``TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e100_cos_dense_nl_lr0.02_wd2.0e-04.pth.tar``.
Ours add ``model_config`` (the ``TSN`` keywords) and ``dataset``, so the file name does not matter.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile

import numpy as np
import torch
from torch import nn


class CheckpointError(Exception):
    """A checkpoint could not be read, written or applied; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------
def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A crash or a full disk leaves either the old file or the new one, never half a file. On failure
    the temporary file is removed and ``CheckpointError`` says that the previous checkpoint is intact.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows it
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except Exception as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        previous = (
            "the previous checkpoint there is intact"
            if os.path.exists(path)
            else "no checkpoint was written"
        )
        raise CheckpointError(
            f"could not write checkpoint {path} ({type(exc).__name__}: {exc}); {previous}"
        ) from exc


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def _numpy_safe_globals() -> list:
    allowed = [np.dtype]
    core = np._core if hasattr(np, "_core") else np.core
    scalar = core.multiarray.scalar
    allowed.append(scalar)
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return allowed


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint file safely (``weights_only=True``) onto the CPU.

    A bare state_dict file is returned as ``{'state_dict': sd}``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"checkpoint {path} does not exist: check the path given to --weights/--resume"
        )
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        detail = (
            f"it would call {found.group(1)}"
            if found
            else "it holds objects other than tensors and plain values"
        )
        raise CheckpointError(
            f"refused to load {path}: {detail} when unpickled; "
            "only load checkpoints from sources you trust, re-saved as plain state_dicts"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint ({type(exc).__name__}"
            f"{': ' + str(exc).splitlines()[0] if str(exc).strip() else ''}): check that the file is complete "
            "(download or copy it again) and was written by torch.save"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path} is not a checkpoint: expected a dict, found {type(ckpt).__name__}"
        )
    if "state_dict" not in ckpt:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return {"state_dict": ckpt}
        raise CheckpointError(
            f"{path} is not a checkpoint: it has no 'state_dict' (keys: {sorted(ckpt)[:8]})"
        )
    return ckpt


# ---------------------------------------------------------------------------------------------
# published file names
# ---------------------------------------------------------------------------------------------
_DATASETS = ("something", "somethingv2", "kinetics", "ucf101", "hmdb51", "jester", "synthetic")


def parse_published_name(path: str | os.PathLike) -> dict:
    """Model settings encoded in a TSM/RNL checkpoint file name.

    Returns ``dataset``, ``modality``, ``base_model``, ``is_shift``, ``shift_div``, ``shift_place``,
    ``temporal_pool``, ``consensus_type``, ``num_segments``, ``non_local`` and ``dense_sample``.
    """
    name = os.path.basename(os.fspath(path))
    m = re.search(r"TSM_(.+)$", name)
    tokens = m.group(1).split("_") if m else []
    if len(tokens) < 3 or tokens[0] not in _DATASETS or tokens[1] not in ("RGB", "Flow"):
        raise CheckpointError(
            f"cannot read the model settings from the file name {name!r}: published checkpoints are named like "
            "TSM_<dataset>_<RGB|Flow>_<arch>_shift8_blockres_avg_segment8_..., keep the published name"
        )
    segments = [int(t[len("segment") :]) for t in tokens if re.fullmatch(r"segment\d+", t)]
    if not segments:
        raise CheckpointError(
            f"cannot find the number of segments ('segment<N>') in the file name {name!r}"
        )
    shift = next((i for i, t in enumerate(tokens) if re.fullmatch(r"shift\d+", t)), None)
    if shift is not None and (
        shift + 1 >= len(tokens) or tokens[shift + 1] not in ("blockres", "block")
    ):
        raise CheckpointError(
            f"the file name {name!r} has '{tokens[shift]}' but no shift place (blockres|block) after it"
        )
    stem = re.sub(r"(\.pth)?(\.tar)?$", "", name)
    return {
        "dataset": tokens[0],
        "modality": tokens[1],
        "base_model": tokens[2],
        "is_shift": shift is not None,
        "shift_div": int(tokens[shift][len("shift") :]) if shift is not None else 8,
        "shift_place": tokens[shift + 1] if shift is not None else "blockres",
        "temporal_pool": "tpool" in tokens,
        "consensus_type": "identity" if "identity" in tokens else "avg",
        "num_segments": segments[0],
        "non_local": "nl" in stem.split("_"),
        "dense_sample": "dense" in tokens,
    }


def strip_module_prefix(state_dict: dict) -> dict:
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def model_config_from_checkpoint(ckpt: dict, path: str | os.PathLike) -> dict:
    """``TSN`` keywords (+ ``dataset``) for a checkpoint: stored ones, else parsed from the file name."""
    if isinstance(ckpt.get("model_config"), dict):
        cfg = dict(ckpt["model_config"])
        cfg["dataset"] = ckpt.get("dataset")
        cfg["dense_sample"] = bool(ckpt.get("dense_sample", False))
        return cfg
    parsed = parse_published_name(path)
    sd = strip_module_prefix(ckpt["state_dict"])
    head = next(
        (
            k
            for k in ("new_fc.weight", "base_model.classifier.weight", "base_model.fc.weight")
            if k in sd
        ),
        None,
    )
    if head is None:
        raise CheckpointError(
            f"{path} has no classifier weights (new_fc / base_model.fc): is it a TSN checkpoint?"
        )
    cfg = {
        k: parsed[k]
        for k in (
            "modality",
            "base_model",
            "is_shift",
            "shift_div",
            "shift_place",
            "temporal_pool",
            "consensus_type",
            "num_segments",
            "non_local",
        )
    }
    cfg.update(
        num_class=int(sd[head].shape[0]), dropout=0.5 if head != "base_model.fc.weight" else 0.0
    )
    cfg["dataset"] = parsed["dataset"]
    cfg["dense_sample"] = parsed["dense_sample"]
    return cfg


def load_model_weights(model: nn.Module, state_dict: dict) -> None:
    """Load a (published or own) state_dict into ``model``, strictly.

    Strips ``module.``, renames a published ``base_model.classifier`` head to ``new_fc`` (as the
    published test script did), and raises ``CheckpointError`` listing missing, unexpected and
    mis-shaped keys instead of a stack trace.
    """
    sd = strip_module_prefix(state_dict)
    own = model.state_dict()
    if "new_fc.weight" in own and "new_fc.weight" not in sd:
        for suffix in ("weight", "bias"):
            if (
                f"base_model.classifier.{suffix}" in sd
                and f"base_model.classifier.{suffix}" not in own
            ):
                sd[f"new_fc.{suffix}"] = sd.pop(f"base_model.classifier.{suffix}")
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in sd and hasattr(sd[k], "shape") and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:

        def few(items: list) -> str:
            return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")

        parts = [
            f"{len(missing)} missing: {few(missing)}" if missing else "",
            f"{len(unexpected)} unexpected: {few(unexpected)}" if unexpected else "",
            f"{len(mismatched)} with other shapes: {few(mismatched)}" if mismatched else "",
        ]
        raise CheckpointError(
            "checkpoint does not fit the model (" + "; ".join(p for p in parts if p) + "): "
            "check the architecture settings (arch, shift, non-local, number of classes)"
        )
    model.load_state_dict(sd, strict=True)


NON_MODEL_KEYS = ("dataset", "dense_sample")  # in a checkpoint's config, but not TSN keywords


def build_model_from_checkpoint(ckpt: dict, cfg: dict, **overrides) -> nn.Module:
    """The ``TSN`` a checkpoint was trained as, with its weights, in eval mode.

    ``cfg`` comes from ``model_config_from_checkpoint``; ``overrides`` change TSN keywords that the
    weights do not depend on (``num_segments``, ``input_size``, fast-path switches, ...). The
    backbone is built from scratch: every weight comes from the checkpoint, nothing is downloaded.
    """
    from ops.models import TSN  # local: ops.models is heavy and does not need this module

    kwargs = {k: v for k, v in cfg.items() if k not in NON_MODEL_KEYS}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    kwargs.update(pretrain="scratch", print_spec=False)
    model = TSN(**kwargs)
    load_model_weights(model, ckpt["state_dict"])
    return model.eval()
