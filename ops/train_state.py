"""Checkpoint contents of a training run, resuming, and fine-tuning initialisation.

A checkpoint (`<root_model>/<run name>/ckpt.pth.tar`, `ckpt.best.pth.tar`) keeps the published
keys (`epoch`, `arch`, `state_dict`, `optimizer`, `best_prec1`) and adds what continuing exactly
and evaluating without the command line need: `model_config` (TSN keywords), `dataset`,
`args`, the position (`epoch` completed epochs + `iteration` inside the next one), the
schedule position, the AMP scaler and every rank's RNG state. Everything is tensors or plain
Python values, so `torch.load(weights_only=True)` reads it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from dataclasses import dataclass

import torch

from ops import distributed as du
from ops.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    strip_module_prefix,
)
from ops.models import TSN
from ops.run_logger import RunLogger

logger = logging.getLogger(__name__)


def checkpoint_state(
    *,
    args: argparse.Namespace,
    model: TSN,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    iteration: int,
    iters_per_epoch: int,
    best_prec1: float,
    rng_states: list,
    world_size: int,
    replica_checksums: list[str] | None = None,
) -> dict:
    """Everything needed to rebuild the model and continue the run exactly (weights_only-safe)."""
    return {
        "epoch": epoch,  # completed epochs (= the epoch to resume from), as TSM stored it
        "iteration": iteration,  # iterations of `epoch` already trained (mid-epoch stop)
        "arch": args.arch,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "best_prec1": float(best_prec1),
        "model_config": model.model_config(),
        "dataset": args.dataset,
        "dense_sample": bool(args.dense_sample),
        "args": {k: v for k, v in vars(args).items() if _plain(v)},
        "lr_scheduler": {
            "epoch": epoch,
            "iteration": iteration,
            "iters_per_epoch": iters_per_epoch,
            "position": epoch + iteration / max(iters_per_epoch, 1),
        },
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng_states": rng_states,
        "world_size": world_size,
        # Each rank's parameter checksum at save time: equal unless DDP replicas diverged.
        "replica_checksums": replica_checksums or [],
    }


def param_checksum(model: torch.nn.Module) -> str:
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
    return False


def check_resumable(ckpt: dict, model: TSN, path: str) -> None:
    """Refuse to continue a run with a different architecture (clear message instead of keys)."""
    saved = ckpt.get("model_config")
    if not isinstance(saved, dict):
        return  # a published checkpoint: load_model_weights reports any mismatch
    own = model.model_config()
    diff = [k for k in own if k in saved and saved[k] != own[k]]
    if diff:
        pairs = ", ".join(f"{k}: {saved[k]!r} in checkpoint vs {own[k]!r} now" for k in diff)
        raise CheckpointError(
            f"{path} was trained with other model settings ({pairs}): pass the same flags to resume"
        )


def save_on_master(state: dict, paths: list[str], ctx: du.DistContext, run_log: RunLogger) -> None:
    """Rank 0 writes `state` to each path atomically; every rank learns whether that failed.

    On failure every rank raises CheckpointError saying that the previous checkpoint is intact,
    so that all of them stop together instead of the others waiting for rank 0.
    """
    error = None
    if ctx.is_main:
        try:
            for path in paths:
                save_checkpoint(state, path)
            run_log.line(f"saved {', '.join(paths)}")
        except CheckpointError as exc:
            error = str(exc)
    error = du.broadcast_object(error, ctx)
    if error:
        raise CheckpointError(error)


@dataclass
class ResumePoint:
    """Where a run continues: the epoch, the iteration inside it, the best accuracy so far, and
    this rank's RNG state when the run stopped mid-epoch (None: re-seed for the epoch)."""

    epoch: int = 0
    iteration: int = 0
    best_prec1: float = 0.0
    rng_state: dict | None = None
    path: str | None = None


def find_resume(resume: str, run_dir: str) -> str | None:
    """The checkpoint `--resume` names: a path, or 'auto' = `run_dir/ckpt.pth.tar` if present."""
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
            f"--resume {resume} does not exist: give a ckpt.pth.tar path or 'auto'"
        )
    return resume


def resume_from(
    path: str,
    *,
    model: TSN,
    optimizer: torch.optim.Optimizer | None,
    scaler: torch.amp.GradScaler | None,
    ctx: du.DistContext,
) -> ResumePoint:
    """Load weights (and optimizer / scaler state when given) and return the position to continue."""
    ckpt = load_checkpoint(path)
    check_resumable(ckpt, model, path)
    load_model_weights(model, ckpt["state_dict"])
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
    point = ResumePoint(
        epoch=int(ckpt.get("epoch", 0)),
        iteration=int(ckpt.get("iteration", 0)),
        best_prec1=float(ckpt.get("best_prec1", 0.0)),
        path=path,
    )
    states = ckpt.get("rng_states") or []
    if point.iteration:
        if ckpt.get("world_size") == ctx.world_size and len(states) > ctx.rank:
            point.rng_state = states[ctx.rank]
        else:
            logger.warning(
                "%s stopped mid-epoch with another number of processes: the rest of that epoch "
                "continues with fresh random draws (not bit-identical)",
                path,
            )
    logger.info(
        "resumed %s: epoch %d, iteration %d, best prec@1 %.3f",
        path,
        point.epoch,
        point.iteration,
        point.best_prec1,
    )
    return point


def tune_from(model: TSN, path: str, dataset: str) -> None:
    """Initialise from another run's checkpoint; its classifier too only for the same dataset."""
    ckpt = load_checkpoint(path)
    sd = strip_module_prefix(ckpt["state_dict"])
    saved_dataset = ckpt.get("dataset")
    same = saved_dataset == dataset or (saved_dataset is None and dataset in os.path.basename(path))
    if not same:
        own = model.state_dict()
        head = ("new_fc.", "base_model.fc.", "base_model.classifier.")
        sd = {k: v for k, v in sd.items() if not k.startswith(head)}
        sd.update({k: v for k, v in own.items() if k.startswith(head)})  # keep the new classifier
        logger.info("=> new dataset: classifier weights of %s not loaded", path)
    load_model_weights(model, sd)
    logger.info("=> fine-tuning from %s", path)
