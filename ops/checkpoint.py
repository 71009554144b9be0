"""Checkpoint files: the file-format leaf that main.py, test_models.py and tools/ read and write
through (it imports no model, no distributed and no training code).

- Writing: ``atomic_write`` (``ops.atomic.write_atomically``, its errors as ``CheckpointError``)
  under ``save_checkpoint`` (``torch.save``) and ``save_safetensors`` (weights + JSON sidecar).
- Reading: ``load_checkpoint`` is the one loading path and dispatches on the file type. It never
  unpickles arbitrary objects: ``torch.load(weights_only=True)`` accepts tensors and plain Python
  containers / numbers / strings, plus numpy scalars and dtypes, which older checkpoints sometimes
  hold for ``best_prec1``. Anything else (a class, a call such as ``os.system``) is refused with a
  one-line ``CheckpointError``. A ``.safetensors`` file (weights only, no pickle at all) is read
  with its JSON sidecar, ``<name>.json``, which holds what our checkpoints store besides the
  weights (``SIDECAR_KEYS``) and the checksum of the weights it was written with.
- The keys of a model checkpoint (``model_checkpoint``): the published ones (SPEC section 6:
  ``{'epoch', 'arch', 'state_dict', 'optimizer', 'best_prec1'}``) and ours that describe the
  model (``SIDECAR_KEYS``: its *model config*, the constructor keywords that rebuild its
  network, a ``TSN`` or an ``I3D``, the dataset, dense sampling, the class names). A run's checkpoint adds its training
  state on top (ops/engine/state.py).
- What a checkpoint says about itself (``checkpoint_info``): published checkpoints have
  ``module.``-prefixed keys and the settings only in the file name, e.g.
  ``TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e100_cos_dense_nl_lr0.02_wd2.0e-04.pth.tar``;
  ours store them inside, so their file name does not matter; a converted published checkpoint
  carries the settings parsed from its name in its sidecar (or in the converted ``.pth.tar``).
  mmaction2's I3D checkpoints are read as they are published and converted to ours on loading
  (``ops/mmaction_compat.py``).
  ``same_dataset`` is the one rule for "trained on this dataset", used both to keep the
  classifier when fine-tuning and to switch off the classifier's lr x5.
- Weights: ``load_weights`` (strict, with a one-line list of what does not fit). Building the
  model a checkpoint holds is ``ops/model_loading.load_model``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
import torch
from torch import nn

from ops import mmaction_compat
from ops.atomic import write_atomically
from ops.utils import key_mismatch

logger = logging.getLogger(__name__)


class CheckpointError(Exception):
    """A checkpoint could not be read, written or applied; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` atomically with ``write(binary file)`` (``ops.atomic.write_atomically``:
    a temporary file in the same folder, fsync, rename; what killed earlier saves of the same path
    left is removed first, as one process writes a given checkpoint path).

    A crash or a full disk leaves either the old file or the new one, never half a file; a failure
    raises ``CheckpointError`` saying whether a previous file there is intact.
    """
    path = os.fspath(path)
    try:
        write_atomically(path, write, clear_stale=True)
    except Exception as exc:
        previous = (
            "the previous checkpoint there is intact"
            if os.path.exists(path)
            else "no checkpoint was written"
        )
        raise CheckpointError(
            f"could not write checkpoint {path} ({type(exc).__name__}: {exc}); {previous}"
        ) from exc


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """``torch.save(state)`` to ``path`` atomically (``atomic_write``)."""
    atomic_write(path, lambda f: torch.save(state, f))


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


def missing_file_message(path: str, what: str = "checkpoint") -> str:
    """Why ``path`` is not a file to read: a folder, or nothing there."""
    if os.path.isdir(path):
        return f"{what} {path} is a folder, not a file: give the path of the file inside it"
    return f"{what} {path} does not exist: check the path"


# How the files torch.save writes begin: a zip archive (since PyTorch 1.6) or a pickle (older).
_TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")


def read_torch_file(path: str, what: str = "checkpoint"):
    """The object a ``torch.save`` file holds, loaded with ``weights_only=True`` onto the CPU;
    a one-line ``CheckpointError`` for a folder, a missing file, a file that torch.save did not
    write (a README, a text file), a truncated one, and a pickle that would run code."""
    if not os.path.isfile(path):
        raise CheckpointError(missing_file_message(path, what))
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(_TORCH_FILE_STARTS):
        raise CheckpointError(
            f"{what} {path} is not a file written by torch.save (it starts with {head!r}): "
            "give a .pth / .pth.tar checkpoint file"
        )
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        detail = (
            f"it would call {found.group(1)}"
            if found
            else "it holds objects other than tensors and plain values"
        )
        raise CheckpointError(
            f"refused to load {what} {path}: {detail} when unpickled; "
            "only load checkpoints from sources you trust, re-saved as plain state_dicts"
        ) from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0].split(". ")[0][:160] if str(exc).strip() else ""
        raise CheckpointError(
            f"cannot read {what} {path} ({type(exc).__name__}{': ' + first if first else ''}): "
            "the file is incomplete or damaged; download or copy it again"
        ) from None


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint file safely onto the CPU: a ``.safetensors`` file with its sidecar
    (``load_safetensors``), anything else with ``torch.load(weights_only=True)``
    (``read_torch_file``).

    A bare state_dict file is returned as ``{'state_dict': sd}``; an mmaction2 I3D checkpoint as
    one of ours (``ops/mmaction_compat.py``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(missing_file_message(path))
    if is_safetensors(path):
        return load_safetensors(path)
    ckpt = read_torch_file(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path} is not a checkpoint: expected a dict, found {type(ckpt).__name__}"
        )
    if "state_dict" not in ckpt:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            ckpt = {"state_dict": ckpt}
        else:
            raise CheckpointError(
                f"{path} is not a checkpoint: it has no 'state_dict' (keys: {sorted(ckpt)[:8]})"
            )
    if mmaction_compat.is_mmaction_checkpoint(ckpt):  # read as one of ours (I3D settings inside)
        try:
            return mmaction_compat.convert(ckpt, path)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
    return ckpt


# ---------------------------------------------------------------------------------------------
# safetensors files: weights, and a JSON sidecar with the rest
# ---------------------------------------------------------------------------------------------
SAFETENSORS_SUFFIX = ".safetensors"
# What the sidecar holds besides the link to its weights: what our .pth.tar checkpoints store
# besides the weights and the training state, in the same keys.
SIDECAR_KEYS = ("model_config", "dataset", "dense_sample", "class_names")


def is_safetensors(path: str | os.PathLike) -> bool:
    return os.fspath(path).endswith(SAFETENSORS_SUFFIX)


def sidecar_path(path: str | os.PathLike) -> str:
    """The JSON sidecar of ``x.safetensors``: ``x.json`` next to it."""
    path = os.fspath(path)
    return path[: -len(SAFETENSORS_SUFFIX)] + ".json"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (the sidecar records it to recognise its own weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_safetensors(path: str | os.PathLike) -> dict:
    """A ``.safetensors`` file and its sidecar as a checkpoint dict: ``state_dict`` plus the
    sidecar's ``SIDECAR_KEYS``, so everything downstream treats it as one of our checkpoints.

    One-line ``CheckpointError`` for a missing or unreadable sidecar, one without
    ``model_config``, a sidecar written for other weights (its recorded SHA-256 differs) and a
    file that is not complete safetensors (truncated, or something else).
    """
    path = os.fspath(path)
    side = sidecar_path(path)
    if not os.path.isfile(side):
        raise CheckpointError(
            f"{path} has no sidecar {side}: a .safetensors file holds only weights, the model "
            "settings are in the .json that tools/export.py wrote next to it; put it there under "
            "that name (or export the original checkpoint again)"
        )
    try:
        with open(side, encoding="utf-8") as f:
            settings = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"the sidecar {side} of {path} is not readable JSON ({exc}): export the checkpoint again"
        ) from None
    if not isinstance(settings, dict) or not isinstance(settings.get("model_config"), dict):
        raise CheckpointError(
            f"{side} is not the sidecar of {path}: it has no 'model_config' (the model settings); "
            "use the .json that tools/export.py wrote with these weights"
        )
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(
            f"reading {path} needs the safetensors package: pip install -r requirements.txt"
        ) from None
    try:
        state_dict = load_file(path, device="cpu")
    except Exception as exc:  # SafetensorError (a bad header or size), OSError
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read {path} as safetensors ({detail}): the file is incomplete (truncated) "
            "or not a safetensors file; copy or export it again"
        ) from None
    recorded = (settings.get("safetensors") or {}).get("sha256")
    if recorded and recorded != file_sha256(path):
        raise CheckpointError(
            f"the sidecar {side} was written for other weights than {path} (their SHA-256 "
            "differs): use the .json exported together with these weights"
        )
    ckpt = {key: settings.get(key) for key in SIDECAR_KEYS}
    ckpt["dense_sample"] = bool(ckpt["dense_sample"])
    ckpt["state_dict"] = state_dict
    return ckpt


def save_safetensors(state_dict: dict, sidecar: dict, path: str | os.PathLike) -> dict:
    """Write ``state_dict`` to ``path`` (safetensors) and ``sidecar`` (``SIDECAR_KEYS`` and
    whatever else describes the weights) to its sidecar with the weights' SHA-256, both
    atomically; returns that link (``{'file', 'sha256'}``), which ``load_safetensors`` checks."""
    try:
        from safetensors.torch import save
    except ImportError:
        raise CheckpointError(
            f"writing {path} needs the safetensors package: pip install -r requirements.txt"
        ) from None
    # Own copies: safetensors refuses tensors that share memory, and needs contiguous ones.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    data = save(tensors, metadata={"format": "pt"})
    atomic_write(path, lambda f: f.write(data))
    link = {"file": os.path.basename(os.fspath(path)), "sha256": file_sha256(path)}
    text = json.dumps(dict(sidecar, safetensors=link), indent=1).encode("utf-8")
    atomic_write(sidecar_path(path), lambda f: f.write(text))
    return link


# ---------------------------------------------------------------------------------------------
# the keys of a model checkpoint
# ---------------------------------------------------------------------------------------------
def model_checkpoint(
    state_dict: dict,
    *,
    arch: str,
    model_config: dict,
    dataset: str | None,
    dense_sample: bool,
    class_names: list[str] | None,
    epoch: int = 0,
    best_prec1: float = 0.0,
    **more,
) -> dict:
    """A checkpoint's contents: the published keys (``epoch``: completed epochs, ``arch``,
    ``state_dict``, ``best_prec1``; a run's checkpoint adds ``optimizer`` in ``more``) and ours
    that describe the model (``SIDECAR_KEYS``), then ``more``. Every writer of a checkpoint
    (a run's, its EMA file, tools/export.py) builds it here."""
    return {
        "epoch": epoch,
        "arch": arch,
        "state_dict": state_dict,
        "best_prec1": float(best_prec1),
        "model_config": model_config,
        "dataset": dataset,
        "dense_sample": bool(dense_sample),
        "class_names": list(class_names) if class_names else None,
        **more,
    }


# ---------------------------------------------------------------------------------------------
# what a checkpoint says about itself
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


# Classifier weights of a TSN state_dict: new_fc (dropout > 0), the published MobileNetV2 head
# (renamed to new_fc by load_weights), the backbone's own fc (dropout 0).
HEADS = ("new_fc", "base_model.classifier", "base_model.fc")


def classifier_head(state_dict: dict) -> tuple[str, int] | None:
    """``(module name, number of classes)`` of the classifier in a TSN state_dict, or None."""
    sd = strip_module_prefix(state_dict)
    for head in HEADS:
        weight = sd.get(f"{head}.weight")
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            return head, int(weight.shape[0])
    return None


def stored_model_config(ckpt: dict) -> dict:
    """The model config stored in one of our checkpoints, in today's keywords (the block
    settings as stored; ``ops.model_loading.model_config_of`` fills in the defaults)."""
    cfg = dict(ckpt["model_config"])
    if "rnl_options" in cfg:  # written before block settings were generalised
        cfg["nl_options"] = cfg.pop("rnl_options")
    return cfg


def checkpoint_info(ckpt: dict, path: str | os.PathLike) -> dict:
    """What a loaded checkpoint says about itself.

    Returns ``model_config`` (TSN keywords; for a published checkpoint parsed from the file name,
    with the classes and head read from its weights), ``dataset`` (None when unknown),
    ``dense_sample``, ``class_names`` (one per class; None when the checkpoint stores none, as
    published ones and ours from before they were stored), ``published`` (settings from the file
    name), ``epoch``, ``best_prec1`` and ``path``. Raises ``CheckpointError`` for a file that says
    neither inside nor in its name.
    """
    info = {
        "path": os.fspath(path),
        "epoch": ckpt.get("epoch"),
        "best_prec1": ckpt.get("best_prec1"),
    }
    if isinstance(ckpt.get("model_config"), dict):
        cfg = stored_model_config(ckpt)
        return dict(
            info,
            model_config=cfg,
            dataset=ckpt.get("dataset"),
            dense_sample=bool(ckpt.get("dense_sample", False)),
            class_names=_stored_class_names(ckpt, cfg.get("num_class"), path),
            published=False,
        )
    parsed = parse_published_name(path)
    head = classifier_head(ckpt["state_dict"])
    if head is None:
        raise CheckpointError(
            f"{path} has no classifier weights (new_fc / base_model.fc): is it a TSN checkpoint?"
        )
    keys = ("modality", "base_model", "is_shift", "shift_div", "shift_place", "temporal_pool")
    cfg = {k: parsed[k] for k in keys + ("consensus_type", "num_segments", "non_local")}
    cfg.update(num_class=head[1], dropout=0.0 if head[0] == "base_model.fc" else 0.5)
    return dict(
        info,
        model_config=cfg,
        dataset=parsed["dataset"],
        dense_sample=parsed["dense_sample"],
        class_names=None,
        published=True,
    )


def _stored_class_names(ckpt: dict, num_class: int | None, path) -> list[str] | None:
    """The checkpoint's class names when they are one string per class, else None (logged)."""
    names = ckpt.get("class_names")
    if names is None:
        return None
    if (
        not isinstance(names, (list, tuple))
        or not all(isinstance(n, str) for n in names)
        or (num_class is not None and len(names) != num_class)
    ):
        logger.warning(
            "%s: its class_names are not one name per class (%s classes): ignored", path, num_class
        )
        return None
    return list(names)


def checkpoint_dataset(ckpt: dict, path: str | os.PathLike) -> str | None:
    """The dataset a checkpoint was trained on: stored in ours, in the file name of a published
    one; None when neither says (e.g. a renamed published file or a bare state_dict)."""
    if isinstance(ckpt.get("model_config"), dict) or ckpt.get("dataset"):
        return ckpt.get("dataset")
    try:
        return parse_published_name(path)["dataset"]
    except CheckpointError:
        return None


def same_dataset(path: str | os.PathLike, dataset: str, ckpt: dict | None = None) -> bool:
    """Whether checkpoint ``path`` was trained on ``dataset``: the one rule for fine-tuning (keep
    its classifier, and train the classifier at the base lr instead of x5, as published).

    A checkpoint that does not say which dataset it was trained on counts as another dataset.
    """
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    trained_on = checkpoint_dataset(ckpt, path)
    if trained_on is None:
        logger.warning(
            "%s does not say which dataset it was trained on (no stored dataset, no published "
            "file name): treated as another dataset than %s",
            path,
            dataset,
        )
    return trained_on == dataset


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def non_float_weights(own: dict, state_dict: dict) -> str | None:
    """Why ``state_dict`` cannot load into a model whose state is ``own``, when tensors whose
    model counterpart is floating point are not (BatchNorm's ``num_batches_tracked`` is int64 in
    both); None when every one is. Copied into float weights they would load without a word and
    score chance (a file converted to integers)."""
    bad = [
        f"{k} {str(v.dtype).removeprefix('torch.')}"
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor)
        and isinstance(own.get(k), torch.Tensor)
        and own[k].is_floating_point()
        and not v.is_floating_point()
    ]
    if not bad:
        return None
    more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
    return (
        f"{len(bad)} weight tensor(s) are not floating point where the model's are "
        f"({', '.join(bad[:3])}{more}): a weights file must hold floating-point tensors; save or "
        "export the weights again"
    )


def load_weights(model: nn.Module, state_dict: dict) -> None:
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
    wrong_type = non_float_weights(own, sd)
    if wrong_type:
        raise CheckpointError(wrong_type)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in sd and hasattr(sd[k], "shape") and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"checkpoint does not fit the model ({key_mismatch(missing, unexpected, mismatched)}): "
            "check the architecture settings (arch, shift, non-local, number of classes)"
        )
    model.load_state_dict(sd, strict=True)
