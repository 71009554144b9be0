"""Which run a run folder belongs to: its config file, and the rule that protects it.

The run name leaves most flags out (``--seed``, ``--input_size``, ``--batch_size``, ...), so two
different runs can get the same ``<root_model>/<run name>/`` folder. Each run therefore writes
its serialised ``RunConfig`` (ops/engine/config.py) to ``run_config.json`` in that folder, and a
new run refuses to start in a folder that already holds a run (a config file, a checkpoint, or
logged epochs) unless

- ``--resume`` (a path or ``auto``) is given and the stored config has the same defining fields:
  the run continues (a folder from before config files existed is taken as this run's; a flat
  flag file written before ``RunConfig`` is compared on the flags it recorded as given); or
- ``--overwrite`` is given: the old run's files (ours only, by name) are removed first.

The fields marked ``execution`` in ops/engine/config.py (paths, workers, launch, compile, batch
split, ...) only say where or how fast the run executes and are not compared, so a run resumes
on another machine or number of GPUs. Everything is decided by rank 0; the other ranks receive
the decision. The same folder is also where stale temporary checkpoint files of a killed save
are removed.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os

from ops.atomic import temp_files, write_atomically
from ops.engine.config import RunConfig, defining, is_serialised, leaves, to_dict
from ops.engine.state import CHECKPOINTS, EMA_CHECKPOINT
from ops.output_paths import Named, PathClashError, check_outputs, weights_inputs

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"
LOG_FILES = ("log.csv", "log.txt", "args.txt")


class RunFolderError(ValueError):
    """A run folder holds another run, or cannot be written; the message says what to do."""


def _logged_epochs(log_dir: str) -> bool:
    """Whether the run's log.csv has at least one epoch row (more than its header)."""
    try:
        with open(os.path.join(log_dir, "log.csv")) as f:
            return sum(1 for line in f if line.strip()) > 1
    except OSError:
        return False


def _stored_config(model_dir: str) -> dict | None:
    path = os.path.join(model_dir, RUN_CONFIG)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, ValueError) as exc:
        raise RunFolderError(
            f"{path} is not readable ({exc}): remove it, or pass --overwrite to start afresh"
        ) from None
    return stored if isinstance(stored, dict) else {}


def differences(stored: dict, config: dict) -> list[tuple[str, object, object]]:
    """``(setting, stored value, value now)`` for each defining setting that differs between a
    stored run config and `config` (a serialised RunConfig). A flat flag dict written before
    RunConfig existed is compared on the flags it recorded with a value (None: not given)."""
    now = leaves(defining(config))
    if is_serialised(stored):
        was = leaves(defining(stored))
        keys = sorted(set(was) | set(now))
    else:
        by_name = {path.rsplit(".", 1)[-1]: path for path in now}
        was = {by_name[k]: v for k, v in stored.items() if k in by_name and v is not None}
        was = json.loads(json.dumps(was))
        keys = sorted(was)
    changed = [k for k in keys if was.get(k) != now.get(k)]
    return [(k.rsplit(".", 1)[-1], was.get(k), now.get(k)) for k in changed]


def _describe(found: list[tuple[str, object, object]]) -> str:
    shown = ", ".join(f"--{k} {a!r} there vs {b!r} now" for k, a, b in found[:4])
    return shown + (f" (+{len(found) - 4} more)" if len(found) > 4 else "")


def check_run_folder(
    model_dir: str, log_dir: str, config: dict, *, resume: str, overwrite: bool
) -> str:
    """Decide whether this run may use ``model_dir`` / ``log_dir``; returns what it does there:
    'new' (empty folder), 'resume' (the same run, continued) or 'overwrite'. Raises
    ``RunFolderError`` (one line) when the folder holds another run or the same run without
    ``--resume``. ``config``: this run's serialised RunConfig."""
    stored = _stored_config(model_dir)
    checkpoints = [c for c in CHECKPOINTS if os.path.isfile(os.path.join(model_dir, c))]
    occupied = stored is not None or checkpoints or _logged_epochs(log_dir)
    if not occupied:
        return "new"
    if overwrite:
        return "overwrite"
    found = differences(stored, config) if stored is not None else []
    if found:
        raise RunFolderError(
            f"{model_dir} holds another run with the same name ({_describe(found)}): "
            "give this run its own name with --suffix NAME, or pass --overwrite to replace it"
        )
    if resume:
        check_resume_auto(model_dir, log_dir, resume)
        return "resume"
    what = ", ".join(checkpoints) if checkpoints else "its config and logs"
    raise RunFolderError(
        f"{model_dir} already holds this run ({what}): pass --resume auto to continue it, "
        "--overwrite to start it afresh, or --suffix NAME for a separate run"
    )


def clear_run(model_dir: str, log_dir: str) -> None:
    """Remove a previous run's files from its folders (only the names this code writes)."""
    names = [os.path.join(model_dir, n) for n in (*CHECKPOINTS, EMA_CHECKPOINT, RUN_CONFIG)]
    names += [os.path.join(log_dir, n) for n in LOG_FILES]
    names += glob.glob(os.path.join(glob.escape(log_dir), "events.out.tfevents.*"))
    for path in names + stale_temp_files(model_dir):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def stale_temp_files(folder: str) -> list[str]:
    """Temporary files that ``ops.checkpoint.save_checkpoint`` leaves when killed mid-save
    (``<checkpoint name>.<random>.tmp``, ``ops.atomic``'s)."""
    return [tmp for name in CHECKPOINTS for tmp in temp_files(os.path.join(folder, name))]


def write_run_config(model_dir: str, config: dict) -> None:
    """Store the run's serialised RunConfig as ``run_config.json`` (atomically)."""
    path = os.path.join(model_dir, RUN_CONFIG)
    write_atomically(path, json.dumps(config, indent=1, sort_keys=True))


def claim_run_folder(cfg: RunConfig) -> str:
    """Check (``check_run_folder``), clear on ``--overwrite``, create the folders and write the
    config; removes stale temporary checkpoint files. Returns 'new', 'resume' or 'overwrite'.
    Output folders that cannot be created raise ``RunFolderError`` naming the path and flag."""
    model_dir, log_dir, config = cfg.paths.model_dir, cfg.paths.log_dir, to_dict(cfg)
    action = check_run_folder(
        model_dir, log_dir, config, resume=cfg.paths.resume, overwrite=cfg.paths.overwrite
    )
    for folder, flag in ((model_dir, "--root_model"), (log_dir, "--root_log")):
        make_output_dir(folder, flag)
    if action == "overwrite":
        clear_run(model_dir, log_dir)
    for path in stale_temp_files(model_dir):  # a save that was killed: never a finished file
        logger.info("removing %s, left by an interrupted checkpoint save", path)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    try:
        write_run_config(model_dir, config)
    except OSError as exc:
        raise RunFolderError(output_error_message(exc, "--root_model")) from None
    return action


def make_output_dir(folder: str, flag: str) -> None:
    """``os.makedirs`` with a one-line ``RunFolderError`` naming the flag and path on failure."""
    try:
        os.makedirs(folder, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", folder)
    except OSError as exc:
        raise RunFolderError(output_error_message(exc, flag, folder)) from None


def output_error_message(exc: OSError, flag: str = "", path: str | None = None) -> str:
    """One line for an OSError on an output: the path, why, and what to do."""
    where = exc.filename or path or "?"
    why = exc.strerror or type(exc).__name__
    pointer = f" (from {flag})" if flag else ""
    return f"cannot write {where}{pointer}: {why}; choose a writable folder with free space"


# ---------------------------------------------------------------------------------------------
# what --resume may continue, and what a run may not write over
# ---------------------------------------------------------------------------------------------
def check_resume_auto(model_dir: str, log_dir: str, resume: str) -> None:
    """``--resume auto`` continues from ``ckpt.pth.tar``, the run's training state. Where it is
    missing (deleted to save space) but the folder holds what the run produced (logged epochs,
    ``ckpt.best.pth.tar``, ``ckpt.ema.pth.tar``), a restart from scratch would replace those:
    ``RunFolderError`` with the choices instead. A folder holding only ``run_config.json`` (a
    run that ended before its first checkpoint) has nothing to lose and starts afresh."""
    if resume != "auto" or os.path.isfile(os.path.join(model_dir, CHECKPOINTS[0])):
        return
    best = os.path.join(model_dir, CHECKPOINTS[1])
    record = [
        n for n in CHECKPOINTS[1:] + (EMA_CHECKPOINT,) if os.path.isfile(os.path.join(model_dir, n))
    ]
    record += ["epochs in log.csv"] if _logged_epochs(log_dir) else []
    if not record:
        return
    choice = (
        f"--resume {best} to continue from the best checkpoint"
        if os.path.isfile(best)
        else f"put its {CHECKPOINTS[0]} back"
    )
    raise RunFolderError(
        f"--resume auto: {model_dir} holds a run ({', '.join(record)}) without its training "
        f"state {CHECKPOINTS[0]} (deleted?), and starting it from scratch would replace them: "
        f"pass --overwrite to train it afresh, or {choice}"
    )


def check_training_state(path: str, ckpt: dict) -> None:
    """A checkpoint that ``--resume`` may continue holds the optimizer state of a run (every
    training checkpoint does, ``ckpt.best.pth.tar`` too). An export, a published checkpoint, a
    .safetensors file or ``ckpt.ema.pth.tar`` hold weights only: resuming one would restart the
    schedule at its epoch with fresh momentum, so ``RunFolderError`` pointing to --tune_from."""
    optimizer = ckpt.get("optimizer")
    if "ema_of_weights" in ckpt:
        why = "the weight average (--ema) of a run, without its optimizer state"
    elif not (isinstance(optimizer, dict) and optimizer.get("param_groups")):
        why = "weights without a run's optimizer state (an export, a published checkpoint?)"
    else:
        return
    raise RunFolderError(
        f"--resume {path} holds {why}, so it cannot continue a run: start a new run from its "
        f"weights with --tune_from {path}, or resume the run's own ckpt.pth.tar"
    )


def run_outputs(model_dir: str, log_dir: str) -> list[Named]:
    """The files a run writes, for ``ops.output_paths.check_outputs``."""
    outputs = [
        (f"--root_model ({n})", os.path.join(model_dir, n))
        for n in (*CHECKPOINTS, EMA_CHECKPOINT, RUN_CONFIG)
    ]
    return outputs + [(f"--root_log ({n})", os.path.join(log_dir, n)) for n in LOG_FILES]


def check_read_before_resolving(flag: str, path: str | None, model_dir: str, log_dir: str) -> None:
    """The part of ``check_run_paths`` for a file the launcher reads while it resolves the
    command line (--tune_from, read once to decide fc lr x5): checked before that read."""
    try:
        check_outputs(weights_inputs(flag, path), run_outputs(model_dir, log_dir))
    except PathClashError as exc:
        raise RunFolderError(str(exc)) from None


def check_run_paths(cfg: RunConfig) -> None:
    """No file the run writes is one it reads (``ops/output_paths.py``): --tune_from, a
    --pretrain file, the lists and the category file. A --resume file may be one of the run's
    own checkpoints (read whole before anything is written; continuing a run is exactly
    that), but not another of its outputs."""
    model_dir, log_dir = cfg.paths.model_dir, cfg.paths.log_dir
    pretrain = cfg.model.pretrain if cfg.model.pretrain not in ("imagenet", "scratch") else None
    inputs = [
        *weights_inputs("--tune_from", cfg.model.tune_from),
        *weights_inputs("--pretrain", pretrain),
    ]
    inputs += [("--train_list", cfg.data.train_list), ("--val_list", cfg.data.val_list)]
    inputs += [("--category_file", cfg.data.category_file)]
    outputs = run_outputs(model_dir, log_dir)
    own = {os.path.join(model_dir, n) for n in (*CHECKPOINTS, EMA_CHECKPOINT)}
    resumed = cfg.paths.resume if cfg.paths.resume != "auto" else None
    try:
        check_outputs(inputs, outputs)
        check_outputs(weights_inputs("--resume", resumed), [o for o in outputs if o[1] not in own])
    except PathClashError as exc:
        raise RunFolderError(str(exc)) from None
