"""A run's state and its checkpoints (PySlowFast's checkpoint.py): where the run stands
(`RunState`), the RNG state, the collective save, the choice of the checkpoint to resume and
resuming from it, fine-tuning from another run, and the EMA file.

The keys of a run's checkpoint are written here, once (`run_checkpoint`): the model checkpoint
of ops/checkpoint.py (`model_checkpoint`: the published keys and what describes the model) plus
the training state: the optimizer, `iteration` (inside the next epoch), the schedule's position,
the run's `run_config` (ops/engine/config.py), the AMP scaler, every rank's RNG state and weight
checksum, a mid-epoch position (`samples_done` with the `world_size` and `batch_per_process` that
reached it), whether the last epoch's validation is pending, `runtime` (what actually ran,
ops/engine/runtime_report.py), `ema` (--ema's average) and `written_by` (the package and torch
versions that wrote it: tests/data/checkpoints/ keeps one per version, read by every test run). The EMA file (`ckpt.ema.pth.tar`) is
a model checkpoint of the average's weights. Files are written through ops/checkpoint.py
(atomically, read back with `weights_only=True`). Checkpoints of older versions of this code
(whose record of the run is a flat `args` dict) and published ones resume and fine-tune as before.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import os
import random
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ops import distributed as du
from ops.checkpoint import (
    HEADS,
    CheckpointError,
    load_checkpoint,
    load_weights,
    missing_file_message,
    model_checkpoint,
    save_checkpoint,
    strip_module_prefix,
)
from ops.engine.config import RunConfig, to_dict
from ops.engine.ema import WeightEMA
from ops.model_loading import model_config_of

logger = logging.getLogger(__name__)

CHECKPOINT = "ckpt.pth.tar"  # every epoch (and at a stop): what --resume auto continues
BEST = "ckpt.best.pth.tar"  # the best validation top-1 so far
EMA_CHECKPOINT = "ckpt.ema.pth.tar"  # --ema: the average's weights, a checkpoint like the others
CHECKPOINTS = (CHECKPOINT, BEST)


@dataclass
class RunState:
    """Where a training run stands: ``epoch`` completed epochs, ``iteration`` iterations of the
    next epoch already trained (a mid-epoch stop), the best validation top-1 so far, and after a
    mid-epoch resume this rank's RNG state to continue from (None: seed the epoch afresh).

    A mid-epoch position is kept as ``samples_done``, the global position in that epoch's sample
    order (ops/engine/seeding.py), with the size of the order (``epoch_samples``) and the
    ``world_size`` and per-process ``batch`` of the run that stopped, so that a run with another
    number of processes or batch size continues at the same sample. ``validation_pending``: epoch
    ``epoch`` was trained but a stop cut its validation passes (precise BN, validation, EMA
    validation) short; ``pending_train`` holds that epoch's training statistics for its log row, and the
    resumed run runs the passes first.
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


# ---------------------------------------------------------------------------------------------
# random state and weight checks
# ---------------------------------------------------------------------------------------------
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
# saving
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Saver:
    """What every save of one run writes besides its state: built once per run (`save` then
    takes the state), so that the training loop passes one object around."""

    cfg: RunConfig
    model: nn.Module  # the unwrapped model (no DDP / compile prefix in the checkpoint)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    iters_per_epoch: int
    ctx: du.DistContext
    ema: WeightEMA | None = None

    def save(self, state: RunState, paths: list[str], runtime: dict | None = None) -> dict:
        """The collective save (`save_run`) of `state` to `paths`."""
        return save_run(paths, self.contents(state, runtime), self.model, state, self.ctx)

    def contents(self, state: RunState, runtime: dict | None) -> dict:
        return run_checkpoint(
            self.cfg, self.model, self.optimizer, self.scaler, state, self.iters_per_epoch,
            self.ctx, runtime, self.ema,
        )  # fmt: skip

    def save_ema(self, contents: dict, top1: float) -> None:
        """Write the EMA file (rank 0 alone; a failure is logged, it must not leave the other
        ranks waiting): the average's weights with `contents`' description of the model."""
        if self.ema is None or not self.ctx.is_main:
            return
        folder = self.cfg.paths.model_dir
        path = os.path.join(folder, EMA_CHECKPOINT)
        try:
            save_checkpoint(ema_checkpoint(contents, self.ema, top1), path)
            logger.info("saved %s", path)
        except CheckpointError as exc:
            logger.error("%s (the EMA is also in %s)", exc, os.path.join(folder, CHECKPOINT))


def run_checkpoint(
    cfg: RunConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    state: RunState,
    iters_per_epoch: int,
    ctx: du.DistContext,
    runtime: dict | None = None,
    ema: WeightEMA | None = None,
) -> dict:
    """A run's checkpoint contents (every rank calls this: it gathers the ranks' RNG states and
    weight checksums). Everything is tensors or plain Python values, so
    ``torch.load(weights_only=True)`` reads it."""
    checksums = du.all_gather_objects(param_checksum(model), ctx)
    if len(set(checksums)) > 1:
        logger.error("the DDP replicas' weights differ (checksums %s)", checksums)
    return model_checkpoint(
        model.state_dict(),
        arch=cfg.model.arch,
        model_config=model.model_config(),
        dataset=cfg.data.dataset,
        dense_sample=cfg.data.dense_sample,
        class_names=cfg.data.class_names,
        epoch=state.epoch,  # completed epochs (= the epoch to resume from), as TSM stored it
        best_prec1=state.best_prec1,
        optimizer=optimizer.state_dict(),
        iteration=state.iteration,
        run_config=to_dict(cfg),
        lr_scheduler={
            "epoch": state.epoch,
            "iteration": state.iteration,
            "iters_per_epoch": iters_per_epoch,
            "position": state.epoch + state.iteration / max(iters_per_epoch, 1),
        },
        scaler=scaler.state_dict() if scaler is not None else None,
        samples_done=state.samples_done,
        epoch_samples=state.epoch_samples,
        batch_per_process=state.batch,
        validation_pending=state.validation_pending,
        pending_train=state.pending_train,
        rng_states=du.all_gather_objects(rng_state(), ctx),
        world_size=ctx.world_size,
        replica_checksums=checksums,
        runtime=runtime,
        written_by=written_by(),
        **({"ema": ema_state(ema)} if ema is not None else {}),
    )


@functools.cache
def _package_version() -> str:
    try:
        return importlib.metadata.version("rnl-tsm")
    except importlib.metadata.PackageNotFoundError:  # run from a clone that was not installed
        return "unknown"


def written_by() -> dict:
    """The versions of the code that writes a checkpoint (its ``written_by`` key)."""
    return {"package": "rnl-tsm", "version": _package_version(), "torch": str(torch.__version__)}


def save_run(
    paths: list[str], contents: dict, model: nn.Module, state: RunState, ctx: du.DistContext
) -> dict:
    """Save a run's checkpoint: every rank calls this, rank 0 writes `contents` to each path
    atomically. Non-finite weights (on any rank) are refused before anything is written. If
    writing fails, every rank raises ``CheckpointError`` (the previous file is intact), so that
    all stop together instead of the others waiting for rank 0. Returns `contents`."""
    found = nonfinite_weights(model)
    flags = du.all_reduce_sum(torch.tensor([float(found is not None)], dtype=torch.float64), ctx)
    if flags[0] > 0:
        detail = f"{found[0]} NaN/Inf values, first in {found[1]}" if found else "on another rank"
        raise CheckpointError(
            f"the weights are not finite after epoch {state.epoch} ({detail}): nothing was "
            "saved over the last good checkpoint; lower --lr, set --gd, or check the data"
        )
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


# ---------------------------------------------------------------------------------------------
# the EMA (--ema): in the run's checkpoint, and as a checkpoint of its own
# ---------------------------------------------------------------------------------------------
def ema_state(ema: WeightEMA) -> dict:
    """What the run's checkpoint keeps of the average (key ``ema``), to continue it exactly."""
    return {"decay": ema.decay, "updates": ema.updates, "state_dict": ema.module.state_dict()}


def ema_checkpoint(contents: dict, ema: WeightEMA, top1: float | None) -> dict:
    """The EMA file: the run checkpoint's description of the model (`contents`) with the
    average's weights as ``state_dict`` and their validation top-1 as ``best_prec1``, so
    test_models.py, tools/predict.py and --tune_from take it like any other checkpoint."""
    return model_checkpoint(
        ema.module.state_dict(),
        arch=contents["arch"],
        model_config=contents["model_config"],
        dataset=contents["dataset"],
        dense_sample=contents["dense_sample"],
        class_names=contents["class_names"],
        epoch=contents["epoch"],
        best_prec1=float(top1 or 0.0),
        run_config=contents["run_config"],
        ema_of_weights={"decay": ema.decay, "updates": ema.updates},
    )


def resume_ema(ema: WeightEMA, found: tuple[str, dict] | None) -> None:
    """Restore the EMA from a resumed checkpoint; one that has none (its run had no --ema)
    starts the average from the resumed weights, said in the log."""
    if found is None:
        return
    path, ckpt = found
    if isinstance(ckpt.get("ema"), dict):
        ema.load_state_dict(ckpt["ema"])
        logger.info("resumed the weight EMA of %s (%d updates)", path, ema.updates)
    else:
        logger.warning("%s has no weight EMA: --ema starts averaging from its weights", path)


# ---------------------------------------------------------------------------------------------
# resuming
# ---------------------------------------------------------------------------------------------
def find_resume(resume: str, run_dir: str) -> str | None:
    """The checkpoint ``--resume`` names: a path, or 'auto' = ``run_dir/ckpt.pth.tar`` if present."""
    if not resume:
        return None
    if resume == "auto":
        path = os.path.join(run_dir, CHECKPOINT)
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
        saved, own = model_config_of(ckpt), model.model_config()
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


# ---------------------------------------------------------------------------------------------
# fine-tuning
# ---------------------------------------------------------------------------------------------
def tune_from(model: nn.Module, path: str, same_dataset: bool) -> None:
    """Initialise ``model`` from another run's checkpoint; its classifier too only when it was
    trained on the same dataset (``same_dataset``, decided once by the launcher with
    ``ops.checkpoint.same_dataset``)."""
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"--tune_from: {exc}") from None
    sd = strip_module_prefix(ckpt["state_dict"])
    if not same_dataset:
        own = model.state_dict()
        heads = tuple(f"{head}." for head in HEADS)
        sd = {k: v for k, v in sd.items() if not k.startswith(heads)}
        sd.update({k: v for k, v in own.items() if k.startswith(heads)})  # keep the new classifier
        logger.info("=> new dataset: classifier weights of %s not loaded", path)
    try:
        load_weights(model, sd)
    except CheckpointError as exc:
        raise CheckpointError(f"--tune_from {path}: {exc}") from None
    logger.info("=> fine-tuning from %s", path)
