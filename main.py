"""Train TSM / RNL video classifiers (single process, multi-GPU, multi-node, CPU).

    python main.py                      # the embedded demo: synthetic videos, small TSM+RNL, CPU
    python main.py --dataset kinetics --dense_sample --dist-url 'tcp://localhost:6666' \
        --dist-backend 'nccl' --multiprocessing-distributed --available_gpus 0,1,2,3 \
        --world-size 1 --rank 0 --gd 20 --shift --shift_div=8 --shift_place=blockres --npb \
        --lr 0.02 --wd 2e-4 --dropout 0.5 --num_segments 8 --batch_size 16 --batch_multiplier 4 \
        --use_warmup --warmup_epochs 5 --lr_type cos --epochs 100 --non_local --suffix 1
    python main.py ... --dry_run        # print the resolved plan and exit, reading no data

Reads top to bottom: parse -> resolve dataset and run name -> plan the launch (spawn / torchrun /
SLURM / single) -> in each worker: build the model, optimizer, loaders -> resume -> epoch loop
(train, validate, checkpoint) -> (demo) final evaluation. Outputs: `<root_model>/<run name>/`
(`ckpt.pth.tar` every epoch, `ckpt.best.pth.tar`, `run_config.json`: a folder holding another
run is refused unless --resume or --overwrite) and `<root_log>/<run name>/` (tensorboardX,
log.csv, log.txt, args.txt). A result is never reported from no data or non-finite numbers:
an epoch or validation that saw 0 clips, a NaN loss and non-finite weights end the run with one
line, and each epoch's checkpoint is saved before its log row.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting make PyTorch on a busy CPU (a shared node, other jobs,
# DataLoader workers) 5-20x slower; passive waiting costs little when the CPU is idle. Must be
# set before torch loads its OpenMP runtime; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import dataclasses
import logging
import math
import sys
import time

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from ops import bf16_guard
from ops import distributed as du
from ops.checkpoint import (
    CheckpointError,
    RunState,
    load_model,
    resume,
    resume_checkpoint,
    save_training_checkpoint,
    tune_from,
)
from ops.data_problems import DataError, data_error_message
from ops.dataset import TSNDataSet, collate
from ops.dataset_config import NO_FLIP_DATASETS, dataset_class_names, default_data_root
from ops.device_augment import DeviceTrainAugment, collate_encoded, use_device_decoding
from ops.device_input import InputNorm, ToUint8Tensor
from ops.engine import run_lock
from ops.engine.compile import maybe_compile
from ops.engine.ema import WeightEMA, resume_ema, save_ema_checkpoint
from ops.engine.lr_scheduler import WarmupSchedule
from ops.engine.mixing import ClipMix
from ops.engine.precise_bn import precise_bn
from ops.engine.preflight import check_data_before_training
from ops.engine.recipe import mixing_on, training_criterion
from ops.engine.repeated_aug import RepeatedAugSampler
from ops.engine.run_config import (
    check_pretrained,
    describe,
    model_kwargs,
    plan_launch,
    resolve_data,
    resolve_sync_bn,
    resolved_config,
    run_name,
)
from ops.engine.run_folder import (
    RunFolderError,
    check_run_paths,
    check_training_state,
    claim_run_folder,
    output_error_message,
)
from ops.engine.run_logger import RunLogError, RunLogger
from ops.engine.runtime_report import compile_status, runtime_report
from ops.engine.seeding import EpochSampler, SeededDataset, derive_seed, seed_all, start_epoch
from ops.engine.stop import StopRequest, loader_worker_init, requeue_slurm_job
from ops.engine.trainer import (
    EpochStats,
    LoopSettings,
    NonFiniteLossError,
    TrainParts,
    train_one_epoch,
    validate,
)
from ops.evaluation import build_test_transform, evaluate_model
from ops.fast_augment import fast_train_augment, use_fast_decoding
from ops.memory import pin_mmap_threshold
from ops.metrics import summarize
from ops.models import TSN
from ops.models import build_model as build_video_model
from ops.randaugment import clip_randaugment
from ops.synthetic import make_synthetic
from ops.transforms import GroupCenterCrop, GroupScale, Stack
from ops.utils import setup_logging
from opts import parse_args

logger = logging.getLogger("main")

# Errors that end a run with a one-line message (no traceback).
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    CheckpointError,
    DataError,
    NonFiniteLossError,
    RunFolderError,
    RunLogError,
    du.DistributedSetupError,
    du.RankFailureError,
)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def build_datasets(args: argparse.Namespace, model: TSN, data: dict):
    """Training (augmented) and validation (resize + centre crop) TSNDataSets, as TSM built them.

    The workers return uint8 clips; `ops.utils.to_device` normalises them on the device with the
    model's `InputNorm` (the same float32 values as TSM's in-worker normalisation, a quarter of
    the bytes through the loader)."""
    common = dict(
        num_segments=args.num_segments,
        new_length=1 if args.modality == "RGB" else 5,
        modality=args.modality,
        image_tmpl=data["image_tmpl"],
        dense_sample=args.dense_sample,
        clip_sampling=args.clip_sampling,
        num_class=data["num_class"],
        skip_bad_lines=args.skip_bad_lines,
        strict_data=args.strict_data,
    )
    flip = args.dataset not in NO_FLIP_DATASETS
    fast = None  # --train_pixels fast (ops/fast_augment.py); None: PIL's pixels
    if not args.device_aug:
        aug = model.get_augmentation(flip=flip)
        fast = fast_train_augment(args.train_pixels, args.modality, aug, args.randaugment)
    train_tf = fast or torchvision.transforms.Compose(
        [
            model.get_augmentation(flip=flip),
            *clip_randaugment(args.randaugment),  # [] unless --randaugment
            Stack(roll=False),
            ToUint8Tensor(),
        ]
    )
    val_tf = torchvision.transforms.Compose(
        [
            GroupScale(int(model.scale_size)),
            GroupCenterCrop(model.crop_size),
            Stack(roll=False),
            ToUint8Tensor(),
        ]
    )
    if args.device_aug:  # the workers read and draw the crops, the device does the rest
        train_tf = DeviceTrainAugment.like(model.get_augmentation(flip=flip))
    train = TSNDataSet(data["root_path"], data["train_list"], transform=train_tf, **common)
    if args.device_aug:
        use_device_decoding(train)
    elif fast is not None:
        use_fast_decoding(train, fast)
    val = TSNDataSet(
        data["root_path"], data["val_list"], transform=val_tf, random_shift=False, **common
    )
    return train, val


def build_loaders(
    args: argparse.Namespace, train: TSNDataSet, val: TSNDataSet, batch: int, ctx: du.DistContext
) -> tuple[DataLoader, DataLoader, int]:
    """This rank's loaders, training batches in a seeded order per epoch (resumable mid-epoch)
    with per-clip seeded augmentation, validation batches in list order; and the number of
    training iterations per epoch."""
    loader_kw = dict(
        batch_size=batch,
        num_workers=args.workers,
        pin_memory=ctx.device.type == "cuda",
        # Workers live for the whole run (SeededDataset shares the epoch with them).
        persistent_workers=args.persistent_workers and args.workers > 0,
        collate_fn=collate,  # drops unreadable videos (counted by the dataset)
        # The loaders' own generator seeds their workers, so starting an epoch leaves the
        # global RNG (dropout) alone; augmentation draws come from SeededDataset.
        generator=torch.Generator().manual_seed(args.seed),
        # Workers ignore SIGTERM / SIGINT / SIGUSR1: the training process decides to stop.
        worker_init_fn=loader_worker_init(),
    )
    # --repeated_aug 1 (the default) is exactly EpochSampler's order.
    sampler = RepeatedAugSampler(
        len(train),
        repeats=args.repeated_aug,
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=True,
        seed=args.seed,
    )
    if len(sampler) < batch:
        raise ValueError(
            f"{train.list_file} has {len(train)} videos, fewer than one batch of {batch} "
            "per process: lower --batch_size or add videos"
        )
    train_kw = dict(loader_kw, collate_fn=collate_encoded) if args.device_aug else loader_kw
    train_loader = DataLoader(
        SeededDataset(train, seed=args.seed), sampler=sampler, drop_last=True, **train_kw
    )
    val_sampler = EpochSampler(len(val), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False)
    return train_loader, DataLoader(val, sampler=val_sampler, **loader_kw), len(sampler) // batch


def precise_bn_batches(
    args: argparse.Namespace, train: TSNDataSet, batch: int, ctx: du.DistContext
) -> DataLoader:
    """--precise_bn's batches: the augmented training clips in their own seeded order per epoch
    (call `.sampler.set_epoch(e)` and `.dataset.set_epoch(e)`), apart from the training loader
    so that its position (and exact resuming) is untouched."""
    seed = derive_seed(args.seed, 5)
    return DataLoader(
        SeededDataset(train, seed=seed),
        sampler=EpochSampler(len(train), num_replicas=ctx.world_size, rank=ctx.rank, seed=seed),
        batch_size=batch,
        drop_last=True,
        num_workers=args.workers,
        collate_fn=collate,
        worker_init_fn=loader_worker_init(),
        generator=torch.Generator().manual_seed(seed),
    )


def bad_data_counts(datasets: list[TSNDataSet], ctx: du.DistContext) -> dict[str, int]:
    """Videos skipped and frames replaced so far, over all ranks and loader workers."""
    keys = ("videos_skipped", "frames_missing", "frames_unreadable")
    local = [0.0] * len(keys)
    for ds in datasets:
        counts = ds.bad_data_counts()
        local = [a + counts.get(k, 0) for a, k in zip(local, keys)]
    total = du.all_reduce_sum(torch.tensor(local, dtype=torch.float64), ctx).tolist()
    return {"videos_skipped": int(total[0]), "frames_replaced": int(total[1] + total[2])}


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def build_model(
    args: argparse.Namespace, num_class: int, plan: du.LaunchPlan, ctx: du.DistContext
) -> TSN:
    """The TSN of the command line on this rank's device: identical initial weights on every
    rank, --tune_from weights, SyncBatchNorm where it applies, in train mode."""
    seed_all(args.seed)
    model = build_video_model(
        **model_kwargs(args, num_class, args.pretrain), print_spec=ctx.is_main
    )
    if args.tune_from:
        tune_from(model, args.tune_from, args.dataset)
    if resolve_sync_bn(args, plan):
        if not plan.use_cuda:
            logger.warning("--sync_bn ignored: SyncBatchNorm needs GPUs, keeping BatchNorm on CPU")
        elif ctx.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same Parameter objects
    model.to(ctx.device)
    if args.channels_last:
        model.to_channels_last()  # 2-D conv weights only (the RNL parts are 5-D)
    return model.train()


def training_model(model: TSN, args: argparse.Namespace, ctx: du.DistContext) -> nn.Module:
    """The module the training loop calls: DDP around the model when distributed, and
    torch.compile around that with --compile (lazy: a failure shows at the first step, where the
    wrapper falls back to eager mode)."""
    wrapped: nn.Module = model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return maybe_compile(wrapped, args.compile, backend=args.compile_backend)


def min_batch(model: nn.Module, batch: int) -> int:
    """Clips a training batch needs: 2 with the RNL channel gate, whose BatchNorm1d normalises
    over clips; an error when a process gets fewer."""
    needed = 2 if any(isinstance(m, nn.BatchNorm1d) for m in model.modules()) else 1
    if batch < needed:
        raise ValueError(
            f"{batch} clip per process is too few: the non-local channel gate's BatchNorm1d "
            f"needs {needed}; raise --batch_size (it is per node, split over its processes)"
        )
    return needed


def build_optimizer(
    model: TSN, args: argparse.Namespace, ctx: du.DistContext
) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler | None]:
    """SGD over the model's parameter groups (ops/param_groups.py), and the gradient scaler of
    --amp fp16."""
    optimizer = torch.optim.SGD(
        model.get_optim_policies(),
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
    )
    if args.amp == "fp16" and ctx.device.type != "cuda":
        raise ValueError("--amp fp16 needs a GPU: use --amp bf16 on CPU, or --amp off")
    return optimizer, torch.amp.GradScaler("cuda") if args.amp == "fp16" else None


# --------------------------------------------------------------------------------------------
# Training (one process)
# --------------------------------------------------------------------------------------------


def train(
    ctx: du.DistContext, plan: du.LaunchPlan, args: argparse.Namespace, name: str, stop: StopRequest
) -> dict:
    """Everything one process does: build, resume, then the epochs with their checkpoints."""
    data = resolve_data(args, dry_run=False)
    batch = du.per_process_batch(args.batch_size, plan.local_world_size)
    model_dir, run_log = start_run(args, plan, data, name, ctx)
    model = build_model(args, data["num_class"], plan, ctx)
    shape = bf16_guard.clip_shape(model, batch)  # --amp bf16 on a CPU: route faulty kernels
    bf16_guard.guard_bf16(model, shape, ctx.device, args.amp, args.channels_last, ctx.is_main)
    optimizer, scaler = build_optimizer(model, args, ctx)
    state, found = RunState(), resume_checkpoint(args.resume, model_dir, ctx)
    if args.evaluate and not found and not args.tune_from:
        raise ValueError(
            "--evaluate needs trained weights, and "
            + (f"--resume auto found none in {model_dir}" if args.resume else "none were given")
            + ": pass --resume PATH/TO/ckpt.best.pth.tar (random weights are never scored)"
        )
    if found:
        optim = None if args.evaluate else optimizer
        path, ckpt = found
        if not args.evaluate:  # an export, a published or an EMA file: weights only
            check_training_state(path, ckpt)
        state = resume(path, model=model, optimizer=optim, scaler=scaler, ctx=ctx, ckpt=ckpt)
    run_log.keep_epochs(state.epoch)  # the rows of epochs this run trains (again) are rewritten
    if found and not args.evaluate and state.epoch >= args.epochs and not state.validation_pending:
        logger.info(
            "the run in %s is finished (%d of %d epochs): nothing to train; --overwrite trains "
            "it afresh",
            model_dir,
            state.epoch,
            args.epochs,
        )
    train_set, val_set = build_datasets(args, model, data)
    check_data_before_training(None if args.evaluate else train_set, val_set, ctx.is_main)
    train_loader, val_loader, iters_per_epoch = build_loaders(args, train_set, val_set, batch, ctx)
    settings = LoopSettings.from_args(
        args, min_batch=min_batch(model, batch), input_norm=InputNorm.of(model)
    )
    criterion = nn.CrossEntropyLoss().to(ctx.device)  # validation: plain cross-entropy
    train_criterion = training_criterion(args).to(ctx.device)
    ema = WeightEMA(model, args.ema) if args.ema else None
    if ema is not None:
        resume_ema(ema, found[1] if found else None, found[0] if found else None)
    summary: dict = {"run_name": name, "model_dir": model_dir}
    if args.evaluate:
        val = checked(validate(model, val_loader, criterion, settings, ctx), "--evaluate", val_set)
        logger.info("Testing Results: Prec@1 %.3f Prec@5 %.3f Loss %.5f", *val.metrics())
        run_log.close()
        return dict(summary, val_top1=val.top1, val_top5=val.top5, val_loss=val.loss)

    schedule = WarmupSchedule.from_args(args)
    train_model = training_model(model, args, ctx)
    runtime = runtime_report(model, train_model, args, plan, ctx)
    parts = TrainParts(
        train_model, train_criterion, optimizer, schedule, settings, ctx, scaler, stop
    )
    parts.run_logger = run_log
    if mixing_on(args):
        parts.mix = ClipMix(
            data["num_class"], args.mixup, args.cutmix, args.mix_prob, args.mix_switch_prob
        )
        note = "mixup/cutmix on: training Prec@1/Prec@5 count each clip's dominant label"
        logger.info(note)
        run_log.line(note)
    if ema is not None:
        parts.after_step = ema.update
    bn_batches = precise_bn_batches(args, train_set, batch, ctx) if args.precise_bn else None
    ckpt_path = os.path.join(model_dir, "ckpt.pth.tar")
    best_path = os.path.join(model_dir, "ckpt.best.pth.tar")
    saving = dict(args=args, model=model, optimizer=optimizer, scaler=scaler, ctx=ctx)
    names = dataset_class_names(
        args.dataset, args.modality, args.data_root, args.category_file, data["num_class"]
    )  # stored in the checkpoints, so that tools/predict.py can name its classes
    saving.update(iters_per_epoch=iters_per_epoch, class_names=names, runtime=runtime)

    def save(paths: list[str], ema_top1: float | None = None) -> None:
        runtime["compile"] = compile_status(train_model, args)
        extra = {"ema": ema.state_dict()} if ema is not None else None
        contents = save_training_checkpoint(paths, state=state, extra=extra, **saving)
        if ema is not None and ema_top1 is not None and ctx.is_main:  # after a validation
            keys = ("epoch", "arch", "model_config", "dataset", "dense_sample", "class_names")
            keep = {k: contents[k] for k in keys + ("args",)}
            try:  # rank 0 alone: a failure must not leave the other ranks waiting
                logger.info("saved %s", save_ema_checkpoint(model_dir, ema, keep, ema_top1))
            except CheckpointError as exc:
                logger.error("%s (the EMA is also in %s)", exc, paths[0])

    stopped = ""  # where a stop request (SIGTERM, SIGUSR1, Ctrl-C) ended the run early
    last_epoch = min(args.epochs, args.stop_after_epochs or args.epochs)
    try:
        while state.validation_pending or state.epoch < last_epoch:
            if state.validation_pending:  # resumed after a stop during this epoch's validation
                stats = EpochStats(**state.pending_train)
            else:
                start_epoch(
                    state, train_loader.sampler, train_loader.dataset, batch, iters_per_epoch,
                    ctx.rank,
                )  # fmt: skip
                stats = train_one_epoch(parts, train_loader, state, iters_per_epoch)
                if stats.stopped_at is None:
                    checked(stats, f"training epoch {state.epoch + 1}", train_set)
                if stats.stopped_at is not None:  # preempted: save the exact position and leave
                    drawn = (stats.stopped_at - state.iteration) * batch
                    state.samples_done = train_loader.sampler.position(drawn)
                    state.iteration = stats.stopped_at
                    state.epoch_samples, state.world_size, state.batch = (
                        len(train_set), ctx.world_size, batch,
                    )  # fmt: skip
                    save([ckpt_path])
                    stopped = f"at epoch {state.epoch + 1}, iteration {state.iteration}"
                    break
                state = RunState(state.epoch + 1, best_prec1=state.best_prec1)
            val = ema_val = None
            if state.epoch % args.eval_freq == 0 or state.epoch == args.epochs:
                if bn_batches is not None:
                    for net in [model] + ([ema.module] if ema is not None else []):
                        bn_batches.sampler.set_epoch(state.epoch)
                        bn_batches.dataset.set_epoch(state.epoch)
                        precise_bn(
                            net, bn_batches, args.precise_bn, ctx, args.amp, args.channels_last,
                            settings.input_norm,
                        )  # fmt: skip
                val = validate(model, val_loader, criterion, settings, ctx, stop=stop)
                if val.stopped_at is not None:  # the epoch is trained: keep it, validate later
                    state.validation_pending = True
                    state.pending_train = dataclasses.asdict(stats)
                    save([ckpt_path])
                    stopped = f"while validating epoch {state.epoch} (validated on resume)"
                    break
                checked(val, f"validation after epoch {state.epoch}", val_set)
                summary.update(val_top1=val.top1, val_top5=val.top5)
                if ema is not None:  # not interruptible: a stop waits for this pass
                    ema_val = validate(ema.module, val_loader, criterion, settings, ctx, "val ema")
                    top1, top5, loss = ema_val.metrics()
                    note = f"EMA weights: Prec@1 {top1:.3f} Prec@5 {top5:.3f} Loss {loss:.5f}"
                    logger.info(note)
                    run_log.line(f"Epoch {state.epoch}: {note}")
                    run_log.scalars({"ema/val_top1": ema_val.top1}, state.epoch)
                    summary.update(ema_val_top1=ema_val.top1, ema_val_top5=ema_val.top5)
            state.validation_pending, state.pending_train = False, None
            best = val is not None and (
                val.top1 > state.best_prec1 or not os.path.isfile(best_path)
            )
            state.best_prec1 = max(state.best_prec1, val.top1 if val is not None else 0.0)
            bad = bad_data_counts([train_set, val_set], ctx)
            # before logging: a full log disk loses no epoch
            save([ckpt_path] + [best_path] * best, ema_val.top1 if ema_val is not None else None)
            run_log.epoch(
                state.epoch, train=stats, val=val, best_top1=state.best_prec1, bad_data=bad
            )
            if du.all_reduce_sum(torch.tensor([float(stop.requested)]), ctx)[0] > 0:
                stopped = f"after epoch {state.epoch}" if state.epoch < args.epochs else ""
                break
        # SLURM's early warning (SIGUSR1) to any rank: rank 0 requeues the job once it is saved.
        asked = du.all_reduce_sum(torch.tensor([float(stop.requeue)]), ctx)[0] if stopped else 0
    finally:
        run_log.close()
    if stopped:
        by = stop.signal_name or "a signal to another rank"
        logger.warning(
            "stopped by %s %s; saved %s (--resume auto continues)", by, stopped, ckpt_path
        )
    elif state.epoch < args.epochs:
        logger.info("--stop_after_epochs %d reached: continue with --resume auto", state.epoch)
    if asked > 0 and ctx.is_main:
        requeue_slurm_job()
    if ctx.is_main:
        logger.info(train_set.bad_data_report())
    # compiled: True when every training step ran through torch.compile (False without --compile)
    compiled = bool(getattr(train_model, "compiled", False))
    return dict(
        summary, stopped=state.epoch < args.epochs, best_prec1=state.best_prec1, compiled=compiled
    )


def checked(stats: EpochStats, what: str, dataset: TSNDataSet) -> EpochStats:
    """`stats` of a pass that may be reported: an error for a pass that saw no clip (all its
    videos missing or unreadable) or whose loss is not finite (the weights are not), instead
    of "Prec@1 0.000" or a checkpoint of NaN weights."""
    if stats.clips == 0:
        raise DataError(
            f"{what} saw 0 clips: none of the {len(dataset)} videos of {dataset.list_file} could "
            "be read (missing or unreadable frames): check --data_root / the frame folders "
            "(tools/check_data.py lists the files)"
        )
    if not math.isfinite(stats.loss):
        raise NonFiniteLossError(
            f"{what}: the loss is {stats.loss} over {stats.clips} clips, so the weights are not "
            "finite; no checkpoint was written over the last good one: lower --lr, set --gd"
        )
    return stats


def start_run(
    args: argparse.Namespace, plan: du.LaunchPlan, data: dict, name: str, ctx: du.DistContext
) -> tuple[str, RunLogger]:
    """The run's checkpoint folder and its logs (rank 0 writes them), with the resolved
    configuration logged and saved as args.txt. The folder is claimed first
    (ops/engine/run_folder.py): a folder holding another run is refused, on every rank, unless
    --resume (the same run) or --overwrite. --evaluate only reads: it writes nothing."""
    model_dir = os.path.join(args.root_model, name)
    log_dir = os.path.join(args.root_log, name)
    error, action = None, ""
    if ctx.is_main and not args.evaluate:
        try:
            check_run_paths(model_dir, log_dir, args, data)  # no output is an input
            run_lock.hold(model_dir)  # one live run per folder, until this process ends
            run_lock.hold(log_dir, "--root_log")
            action = claim_run_folder(model_dir, log_dir, args)
        except RunFolderError as exc:
            error = str(exc)
    error = du.broadcast_object(error, ctx)
    if error:
        raise RunFolderError(error)
    try:
        run_log = RunLogger(log_dir, enabled=ctx.is_main and not args.evaluate)
    except OSError as exc:
        raise RunFolderError(output_error_message(exc, "--root_log", log_dir)) from None
    if ctx.is_main:
        for line in describe(args, plan, data, name):
            logger.info(line)
        said = {
            "new": f"starting a new run in {model_dir}",
            "resume": f"continuing the run in {model_dir} (--resume {args.resume})",
            "overwrite": f"--overwrite: removed the previous run's files in {model_dir}",
        }
        if action:
            logger.info(said[action])
        run_log.write_config(vars(args))
    return model_dir, run_log


# --------------------------------------------------------------------------------------------
# Demo
# --------------------------------------------------------------------------------------------


def prepare_demo_data(args: argparse.Namespace) -> None:
    """Write the synthetic dataset under the data root (reused when already there)."""
    args.data_root = args.data_root or default_data_root()
    logger.info("demo: synthetic dataset in %s", os.path.join(args.data_root, "synthetic"))
    make_synthetic(args.data_root, seed=0)


def demo_evaluation(args: argparse.Namespace, name: str) -> dict:
    """Score the demo's best checkpoint on the validation videos with the evaluation code."""
    data = resolve_data(args, dry_run=False)
    model, _ = load_model(os.path.join(args.root_model, name, "ckpt.best.pth.tar"))
    transform = build_test_transform(
        1, model.scale_size, model.crop_size, model.input_mean, model.input_std
    )
    dataset = TSNDataSet(
        data["root_path"],
        data["val_list"],
        num_segments=args.num_segments,
        new_length=1,
        modality=args.modality,
        image_tmpl=data["image_tmpl"],
        transform=transform,
        random_shift=False,
        test_mode=True,
    )
    scores, labels = evaluate_model(
        model, dataset, num_views=1, batch_size=8, workers=args.workers, progress=True
    )
    return summarize(scores, labels)


# --------------------------------------------------------------------------------------------
# Processes and entry point
# --------------------------------------------------------------------------------------------


def worker(local_rank: int, plan: du.LaunchPlan, args: argparse.Namespace, name: str) -> dict:
    """Train on one device: everything after the launch. Returns a summary (rank 0).

    Stop requests (SIGTERM, SIGUSR1, Ctrl-C) are caught from the start, so that one arriving
    during set-up still ends the run with a checkpoint. In a distributed run a failure ends this
    process with one log line and exit code 1 (without the process-group teardown, which could
    wait on a dead peer); the launcher (spawn, torchrun) then stops the other ranks, which also
    notice on their own through the collective timeout.
    """
    stop = StopRequest().install()
    pin_mmap_threshold()  # freed activations leave resident memory (ops/memory.py)
    try:
        ctx = du.init_worker(plan, local_rank, args.dist_timeout)
        # Per process: workers started by --multiprocessing-distributed do not inherit it.
        torch.backends.cudnn.benchmark = True
        if plan.mode != "single":
            setup_logging(ctx.rank)
        try:
            summary = train(ctx, plan, args, name, stop)
        except Exception as exc:
            if not ctx.distributed:
                raise
            if du.is_collective_failure(exc):
                msg = data_error_message(exc)
                logger.error("lost contact with another rank (it died or hung): %s", msg)
            elif isinstance(exc, USER_ERRORS):
                logger.error("%s", data_error_message(exc))
            else:
                logger.exception("rank %d failed", ctx.rank)
            sys.stderr.flush()
            os._exit(1)
    finally:
        run_lock.release_all()
        stop.uninstall()
    du.cleanup(ctx)
    return summary


def _spawn_entry(local_rank: int, plan: du.LaunchPlan, args: argparse.Namespace, name: str):
    """Entry point of a worker spawned by --multiprocessing-distributed."""
    setup_logging(rank=plan.node_rank * plan.nprocs + local_rank)
    worker(local_rank, plan, args, name)


def main(argv: list[str] | None = None) -> dict:
    """Parse `argv` and run; returns rank 0's summary. Errors exit with a one-line message."""
    args = parse_args(argv)
    setup_logging(rank=0)
    try:
        return _run(args)
    except USER_ERRORS as exc:
        msg = data_error_message(exc)
        logger.error("%s", msg)
        raise SystemExit(f"main.py: error: {msg}") from None


def _run(args: argparse.Namespace) -> dict:
    if args.demo and not args.dry_run:
        prepare_demo_data(args)
    if not args.dry_run:  # before CUDA is initialised; a scheduler's own setting is kept
        args.available_gpus = du.choose_gpus(args.available_gpus, os.environ)
    data = resolve_data(args, dry_run=args.dry_run)
    name = run_name(args)
    plan = plan_launch(args)
    if args.dry_run:
        lines = describe(args, plan, data, name) + [check_pretrained(args, dry_run=True)]
        model = build_video_model(
            **model_kwargs(args, data["num_class"], "scratch"), print_spec=False
        )
        n_params = sum(p.numel() for p in model.parameters())
        lines.append(f"model built: {n_params / 1e6:.2f}M parameters (weights not loaded)")
        print("\n".join(["dry run: nothing was trained or read"] + lines))
        return {"resolved": resolved_config(args, plan, data, name), "lines": lines}

    logger.info(check_pretrained(args, dry_run=False))
    start = time.perf_counter()
    if plan.mode == "spawn":
        if plan.nodes == 1:  # the published localhost port may be another run's: find a free one
            plan.dist_url = du.local_rendezvous(plan.dist_url)
        if plan.node_rank == 0 and not args.evaluate:  # refused before spawning (rank 0 locks)
            run_lock.check_free(os.path.join(args.root_model, name))
        du.spawn(_spawn_entry, plan.nprocs, (plan, args, name))
        summary = {"run_name": name, "model_dir": os.path.join(args.root_model, name)}
    else:
        summary = worker(0, plan, args, name)
    summary["seconds"] = time.perf_counter() - start

    if args.demo and not args.no_demo_eval and not summary.get("stopped"):
        result = demo_evaluation(args, name)
        summary["demo_eval"] = result
        print(
            f"demo: {result['num_videos']} validation videos, top-1 {result['top1']:.1f}%, "
            f"top-5 {result['top5']:.1f}%, mean class accuracy {result['mean_class_acc']:.1f}% "
            f"(trained in {summary['seconds'] / 60:.1f} min; run {name})"
        )
    return summary


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
