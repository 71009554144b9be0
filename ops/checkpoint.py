"""Checkpoints: the one module that writes, reads and applies them (main.py, test_models.py and
tools/ all come here).

- Files: ``save_checkpoint`` writes atomically; ``load_checkpoint`` is the one loading path and
  dispatches on the file type. It never unpickles arbitrary objects: ``torch.load(weights_only=True)``
  accepts tensors and plain Python containers / numbers / strings, plus numpy scalars and dtypes,
  which older checkpoints sometimes hold for ``best_prec1``. Anything else (a class, a call such as
  ``os.system``) is refused with a one-line ``CheckpointError``. A ``.safetensors`` file (weights
  only, no pickle at all) is read with its JSON sidecar, ``<name>.json``, which holds what our
  checkpoints store besides the weights (``SIDECAR_KEYS``) and the checksum of the weights it
  was written with (``tools/export.py --format safetensors`` writes both).
- What a checkpoint says about itself (``checkpoint_info``): its *model config*, which always
  means the ``TSN`` constructor keywords that rebuild its network (``TSN.model_config()``), the
  dataset it was trained on, whether with dense sampling, and where it stood (epoch, best top-1).
  Published checkpoints (SPEC section 6) are ``{'epoch', 'arch', 'state_dict', 'optimizer',
  'best_prec1'}`` with ``module.``-prefixed keys and the settings only in the file name, e.g.
  ``TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e100_cos_dense_nl_lr0.02_wd2.0e-04.pth.tar``;
  ours store them inside (and the class names, ``class_names``), so their file name does not
  matter; a converted published checkpoint carries the settings parsed from its name in its
  sidecar (or in the converted ``.pth.tar``).
- Models: ``load_model(path, **overrides) -> (model, meta)`` for evaluation and the tools;
  ``load_weights`` (strict, with a one-line list of what does not fit).
- Training: the contents of a run's checkpoint (``save_training_checkpoint``: weights, optimizer,
  AMP scaler, schedule position, every rank's RNG state, what ran), the choice of the checkpoint
  to resume, made once by rank 0 for all ranks (``resume_checkpoint``, which also sends its
  contents to ranks that cannot read the file), ``resume`` from one, and ``tune_from`` one of
  another run. ``same_dataset`` is the one rule for "trained on this dataset", used both
  to keep the classifier when fine-tuning and to switch off the classifier's lr x5.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import pickle
import random
import re
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ops import distributed as du
from ops.non_local import block_settings

logger = logging.getLogger(__name__)


class CheckpointError(Exception):
    """A checkpoint could not be read, written or applied; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------
def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A crash or a full disk leaves either the old file or the new one, never half a file. On failure
    the temporary file is removed and ``CheckpointError`` says that the previous checkpoint is intact.
    Temporary files of an earlier save of the same path that was killed (``kill -9``) are removed
    first: one process writes a given checkpoint path. The file gets the permissions of any new
    file (the umask), not the private ones of a temporary file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        prefix = os.path.basename(path) + "."
        for stale in glob.glob(os.path.join(glob.escape(folder), glob.escape(prefix) + "*.tmp")):
            with contextlib.suppress(OSError):
                os.remove(stale)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
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


def _umask() -> int:
    """The process's umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def nonfinite_weights(model: nn.Module) -> tuple[int, str] | None:
    """``(number of non-finite values, first tensor holding one)`` in the model's floating-point
    parameters and buffers, or None when all are finite."""
    bad, first = 0, ""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point():
            n = int(t.numel() - torch.isfinite(t.detach()).sum())
            if n and not first:
                first = name
            bad += n
    return (bad, first) if bad else None


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

    A bare state_dict file is returned as ``{'state_dict': sd}``.
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
            return {"state_dict": ckpt}
        raise CheckpointError(
            f"{path} is not a checkpoint: it has no 'state_dict' (keys: {sorted(ckpt)[:8]})"
        )
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
_HEADS = ("new_fc", "base_model.classifier", "base_model.fc")


def classifier_head(state_dict: dict) -> tuple[str, int] | None:
    """``(module name, number of classes)`` of the classifier in a TSN state_dict, or None."""
    sd = strip_module_prefix(state_dict)
    for head in _HEADS:
        weight = sd.get(f"{head}.weight")
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            return head, int(weight.shape[0])
    return None


def _stored_config(ckpt: dict) -> dict:
    """The model config stored in one of our checkpoints, in today's keywords."""
    cfg = dict(ckpt["model_config"])
    if "rnl_options" in cfg:  # written before block settings were generalised
        cfg["nl_options"] = cfg.pop("rnl_options")
    if cfg.get("non_local"):  # fill in the defaults of settings the checkpoint predates
        cfg["nl_options"] = block_settings(cfg.get("nl_type", "rnl"), cfg.get("nl_options"))
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
        cfg = _stored_config(ckpt)
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


def load_model(path: str | os.PathLike, **overrides) -> tuple[nn.Module, dict]:
    """The ``TSN`` a checkpoint holds, with its weights, in eval mode, and ``checkpoint_info``.

    ``overrides`` change TSN keywords that the weights do not depend on (``num_segments``,
    ``input_size``, fast-path switches such as ``rnl_fused``); None values are ignored. The
    backbone is built from scratch: every weight comes from the checkpoint, nothing is
    downloaded. ``meta['model_config']`` is the rebuilt model's, overrides included.
    """
    # Inside the function until load_model moves next to the model (issue 24): ops.models reads
    # --pretrain files with read_torch_file from this module.
    from ops.models import TSN

    ckpt = load_checkpoint(path)
    meta = checkpoint_info(ckpt, path)
    kwargs = dict(meta["model_config"])
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    # The settings of a .safetensors file come from its sidecar: a mismatch is the sidecar's.
    where = f"the sidecar {sidecar_path(path)} of {path}" if is_safetensors(path) else str(path)
    try:
        model = TSN(**kwargs, pretrain="scratch", print_spec=False)
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


# ---------------------------------------------------------------------------------------------
# training runs: contents, saving on rank 0, resuming, fine-tuning
# ---------------------------------------------------------------------------------------------
@dataclass
class RunState:
    """Where a training run stands: ``epoch`` completed epochs, ``iteration`` iterations of the
    next epoch already trained (a mid-epoch stop), the best validation top-1 so far, and after a
    mid-epoch resume this rank's RNG state to continue from (None: seed the epoch afresh).

    A mid-epoch position is kept as ``samples_done``, the global position in that epoch's sample
    order (ops/engine/seeding.py), with the size of the order (``epoch_samples``) and the
    ``world_size`` and per-process ``batch`` of the run that stopped, so that a run with another
    number of processes or batch size continues at the same sample. ``validation_pending``: epoch
    ``epoch`` was trained but a stop cut its validation short; ``pending_train`` holds that
    epoch's training statistics for its log row, and the resumed run validates it first.
    """

    epoch: int = 0
    iteration: int = 0
    best_prec1: float = 0.0
    rng_state: dict | None = None
    samples_done: int = 0
    epoch_samples: int | None = None
    world_size: int | None = None
    batch: int | None = None
    validation_pending: bool = False
    pending_train: dict | None = None


def rng_state() -> dict:
    """The global generators' states as tensors / plain types (loadable with weights_only).

    On a GPU only this process's own device's generator is kept: that is the one its training
    draws from, and a resumed process may see fewer devices than this one did."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device's
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned (after a round trip through a checkpoint); the CUDA
    state goes to this process's current device. Older checkpoints hold one state per device
    the process could see: the current device's is used when there is one."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):
            index = torch.cuda.current_device()
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def param_checksum(model: nn.Module) -> str:
    """SHA-256 of all parameters' bytes: equal on two ranks iff their weights are bit-identical."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _plain(v) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    return False


def save_training_checkpoint(
    paths: list[str],
    *,
    args,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    state: RunState,
    iters_per_epoch: int,
    ctx: du.DistContext,
    class_names: list[str] | None = None,
    runtime: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Save a run's checkpoint: every rank calls this, rank 0 writes it to each path atomically.

    The checkpoint keeps the published keys (``epoch``, ``arch``, ``state_dict``, ``optimizer``,
    ``best_prec1``) and adds what continuing exactly and evaluating without the command line
    need: ``model_config``, ``dataset``, ``dense_sample``, ``class_names`` (one per class, from
    the dataset's category file; None when it has none), ``args``, the position (``epoch``
    completed epochs + ``iteration`` inside the next one, and the global ``samples_done`` of a
    mid-epoch stop with ``world_size`` and ``batch_per_process``) and the schedule's, whether the
    last epoch's validation is pending, the AMP scaler, every rank's RNG state and weight checksum
    (equal unless DDP replicas diverged), and ``runtime``: what actually ran (backend, devices,
    attention kernels, compile; ``ops/engine/runtime_report.py``). Everything is
    tensors or plain Python values, so ``torch.load(weights_only=True)`` reads it. If writing
    fails, every rank raises ``CheckpointError`` (the previous file is intact), so that all stop
    together instead of the others waiting for rank 0. ``extra``: more keys (e.g. ``ema``, the
    weight average of --ema). Returns the contents written.
    """
    found = nonfinite_weights(model)
    flags = du.all_reduce_sum(torch.tensor([float(found is not None)], dtype=torch.float64), ctx)
    if flags[0] > 0:
        detail = f"{found[0]} NaN/Inf values, first in {found[1]}" if found else "on another rank"
        raise CheckpointError(
            f"the weights are not finite after epoch {state.epoch} ({detail}): nothing was "
            "saved over the last good checkpoint; lower --lr, set --gd, or check the data"
        )
    checksums = du.all_gather_objects(param_checksum(model), ctx)
    if len(set(checksums)) > 1:
        logger.error("the DDP replicas' weights differ (checksums %s)", checksums)
    contents = {
        "epoch": state.epoch,  # completed epochs (= the epoch to resume from), as TSM stored it
        "iteration": state.iteration,
        "arch": args.arch,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "best_prec1": float(state.best_prec1),
        "model_config": model.model_config(),
        "dataset": args.dataset,
        "dense_sample": bool(args.dense_sample),
        "class_names": list(class_names) if class_names else None,
        "args": {k: v for k, v in vars(args).items() if _plain(v)},
        "lr_scheduler": {
            "epoch": state.epoch,
            "iteration": state.iteration,
            "iters_per_epoch": iters_per_epoch,
            "position": state.epoch + state.iteration / max(iters_per_epoch, 1),
        },
        "scaler": scaler.state_dict() if scaler is not None else None,
        "samples_done": state.samples_done,
        "epoch_samples": state.epoch_samples,
        "batch_per_process": state.batch,
        "validation_pending": state.validation_pending,
        "pending_train": state.pending_train,
        "rng_states": du.all_gather_objects(rng_state(), ctx),
        "world_size": ctx.world_size,
        "replica_checksums": checksums,
        "runtime": runtime,
        **(extra or {}),
    }
    error = None
    if ctx.is_main:
        try:
            for path in paths:
                save_checkpoint(contents, path)
            logger.info("saved %s", ", ".join(paths))
        except CheckpointError as exc:
            error = str(exc)
    error = du.broadcast_object(error, ctx)
    if error:
        raise CheckpointError(error)
    return contents


def find_resume(resume: str, run_dir: str) -> str | None:
    """The checkpoint ``--resume`` names: a path, or 'auto' = ``run_dir/ckpt.pth.tar`` if present."""
    if not resume:
        return None
    if resume == "auto":
        path = os.path.join(run_dir, "ckpt.pth.tar")
        if not os.path.isfile(path):
            logger.info("--resume auto: no checkpoint in %s, starting from scratch", run_dir)
            return None
        return path
    if not os.path.isfile(resume):
        raise FileNotFoundError(
            f"--resume: {missing_file_message(resume)} (give a ckpt.pth.tar path or 'auto')"
        )
    return resume


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def resume_checkpoint(resume: str, run_dir: str, ctx: du.DistContext) -> tuple[str, dict] | None:
    """The checkpoint to resume from, decided once for all ranks: ``(path, contents)`` or None.

    Rank 0 alone resolves ``--resume`` (a path, or 'auto': ``run_dir/ckpt.pth.tar`` if it
    exists) and tells the others, so that all ranks start from the same place even where their
    view of the filesystem differs. A rank that cannot read the very same file (no shared
    filesystem, or another copy at that path) receives its bytes from rank 0 and reads them
    with the same ``weights_only`` loader. A missing ``--resume`` path stops every rank with the
    same one-line error.
    """
    decision: dict = {}
    if ctx.is_main:
        try:
            path = find_resume(resume, run_dir)
            if path is not None:
                decision = {"path": path, "size": os.path.getsize(path), "sha": _file_digest(path)}
        except FileNotFoundError as exc:
            decision = {"error": str(exc)}
    decision = du.broadcast_object(decision, ctx)
    if "error" in decision:
        raise FileNotFoundError(decision["error"])
    if not decision:
        return None
    path = decision["path"]
    same = ctx.is_main or (
        os.path.isfile(path)
        and os.path.getsize(path) == decision["size"]
        and _file_digest(path) == decision["sha"]
    )
    missing = du.all_reduce_sum(torch.tensor([float(not same)], dtype=torch.float64), ctx)
    if missing[0] == 0:
        return path, _load_resume(path)
    if ctx.is_main:
        logger.info("%d rank(s) cannot read %s: sending it to them", int(missing[0]), path)
        with open(path, "rb") as f:
            data = f.read()
    else:
        data = None
    data = du.broadcast_bytes(data, ctx)
    if same:
        return path, _load_resume(path)
    with tempfile.TemporaryDirectory(prefix="resume_") as folder:
        copy = os.path.join(folder, os.path.basename(path))
        with open(copy, "wb") as f:
            f.write(data)
        ckpt = _load_resume(copy)
    return path, ckpt


def _load_resume(path: str) -> dict:
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"--resume: {exc}") from None


def resume(
    path: str,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scaler: torch.amp.GradScaler | None,
    ctx: du.DistContext,
    ckpt: dict | None = None,
) -> RunState:
    """Load weights (and optimizer / scaler state when given) and return where the run stood.

    ``ckpt``: the checkpoint's contents when already loaded (``resume_checkpoint``). Refuses,
    with one line, a checkpoint trained with other model settings (instead of a list of keys
    that do not fit) or whose optimizer state does not fit this run's groups.
    """
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    if isinstance(ckpt.get("model_config"), dict):  # ours; a published one is checked by its keys
        saved, own = _stored_config(ckpt), model.model_config()
        diff = [k for k in own if k in saved and saved[k] != own[k]]
        if diff:
            pairs = ", ".join(f"{k}: {saved[k]!r} in checkpoint vs {own[k]!r} now" for k in diff)
            raise CheckpointError(
                f"{path} was trained with other model settings ({pairs}): pass the same flags "
                "to resume"
            )
    try:
        load_weights(model, ckpt["state_dict"])
    except CheckpointError as exc:
        raise CheckpointError(f"--resume {path}: {exc}") from None
    if optimizer is not None and "optimizer" in ckpt:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as exc:
            raise CheckpointError(
                f"{path}: its optimizer state does not fit ({exc}); use --tune_from to start "
                "a new run from its weights"
            ) from None
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    iteration = int(ckpt.get("iteration", 0))
    state = RunState(
        epoch=int(ckpt.get("epoch", 0)),
        iteration=iteration,
        best_prec1=float(ckpt.get("best_prec1", 0.0)),
        samples_done=int(ckpt.get("samples_done") or 0),
        epoch_samples=ckpt.get("epoch_samples"),
        world_size=ckpt.get("world_size"),
        batch=ckpt.get("batch_per_process"),
        validation_pending=bool(ckpt.get("validation_pending", False)),
        pending_train=ckpt.get("pending_train"),
    )
    if iteration and not state.samples_done and state.world_size != ctx.world_size:
        # Written before positions were global: only its own number of processes can place it.
        raise CheckpointError(
            f"{path} stopped in the middle of an epoch and predates resuming with another "
            f"number of processes: resume it with {state.world_size} processes"
        )
    states = ckpt.get("rng_states") or []
    if iteration and state.world_size == ctx.world_size and len(states) > ctx.rank:
        state.rng_state = states[ctx.rank]
    logger.info(
        "resumed %s: epoch %d, iteration %d, best prec@1 %.3f",
        path,
        state.epoch,
        state.iteration,
        state.best_prec1,
    )
    return state


def tune_from(model: nn.Module, path: str, dataset: str) -> None:
    """Initialise ``model`` from another run's checkpoint; its classifier too only when it was
    trained on the same ``dataset`` (``same_dataset``)."""
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"--tune_from: {exc}") from None
    sd = strip_module_prefix(ckpt["state_dict"])
    if not same_dataset(path, dataset, ckpt):
        own = model.state_dict()
        heads = tuple(f"{head}." for head in _HEADS)
        sd = {k: v for k, v in sd.items() if not k.startswith(heads)}
        sd.update({k: v for k, v in own.items() if k.startswith(heads)})  # keep the new classifier
        logger.info("=> new dataset: classifier weights of %s not loaded", path)
    try:
        load_weights(model, sd)
    except CheckpointError as exc:
        raise CheckpointError(f"--tune_from {path}: {exc}") from None
    logger.info("=> fine-tuning from %s", path)
