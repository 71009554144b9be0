"""Train TSM / RNL video classifiers (single process, multi-GPU, multi-node, CPU).

    python main.py                      # the embedded demo: synthetic videos, small TSM+RNL, CPU
    python main.py --dataset kinetics --dense_sample --dist-url 'tcp://localhost:6666' \
        --dist-backend 'nccl' --multiprocessing-distributed --available_gpus 0,1,2,3 \
        --world-size 1 --rank 0 --gd 20 --shift --shift_div=8 --shift_place=blockres --npb \
        --lr 0.02 --wd 2e-4 --dropout 0.5 --num_segments 8 --batch_size 16 --batch_multiplier 4 \
        --use_warmup --warmup_epochs 5 --lr_type cos --epochs 100 --non_local --suffix 1
    python main.py ... --dry_run        # print the resolved plan and exit, reading no data

Reads top to bottom: parse (opts.py) -> `resolve` the command line once into a frozen
`RunConfig` (ops/engine/config.py; pairs of options that cannot work together are refused
here) -> launch (spawn / torchrun / SLURM / single) -> in each worker: build the model,
optimizer and loaders, claim the run folder, resume -> the epochs (train, save, the validation
passes, save, log) -> (demo) final evaluation. Outputs: `<root_model>/<run name>/`
(`ckpt.pth.tar` every epoch, `ckpt.best.pth.tar`, `run_config.json`: a folder holding another
run is refused unless --resume or --overwrite) and `<root_log>/<run name>/` (tensorboardX,
log.csv, log.txt, args.txt). A run that fails before its first step leaves no folder behind. A
result is never reported from no data or non-finite numbers: an epoch or validation that saw 0
clips, a NaN loss and non-finite weights end the run with one line. A stop request (SIGTERM,
SIGUSR1, Ctrl-C) is honoured within a batch in every pass: in training the exact position is
saved, in an epoch's validation passes (precise BN, validation, EMA validation) the trained epoch
is saved and a resumed run runs its passes again (their results do not depend on how far the
stopped ones got).
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
from dataclasses import dataclass

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from ops import bf16_guard
from ops import distributed as du
from ops.checkpoint import CheckpointError
from ops.data_problems import DataError, data_error_message
from ops.dataset import TSNDataSet
from ops.dataset_config import DATA_FLAGS, default_data_root
from ops.device_augment import DeviceTrainAugment, use_device_decoding
from ops.device_input import InputNorm, ToUint8Tensor
from ops.engine import config, run_lock
from ops.engine.compile import maybe_compile
from ops.engine.config import (
    LaunchConfig,
    LoopConfig,
    ModelConfig,
    OptimConfig,
    PathsConfig,
    RecipeConfig,
    RunConfig,
    ScheduleConfig,
    describe,
    to_dict,
    tsn_kwargs,
)
from ops.engine.ema import WeightEMA
from ops.engine.loaders import make_loader
from ops.engine.lr_scheduler import WarmupSchedule
from ops.engine.mixing import ClipMix
from ops.engine.precise_bn import precise_bn
from ops.engine.preflight import check_data_before_training
from ops.engine.recipe import mixing_on, training_criterion
from ops.engine.repeated_aug import RepeatedAugSampler
from ops.engine.run_folder import (
    RunFolderError,
    check_read_before_resolving,
    check_run_paths,
    check_training_state,
    claim_run_folder,
    output_error_message,
)
from ops.engine.run_logger import RunLogError, RunLogger
from ops.engine.runtime_report import compile_status, runtime_report
from ops.engine.seeding import EpochSampler, SeededDataset, derive_seed, seed_all, start_epoch
from ops.engine.state import (
    BEST,
    CHECKPOINT,
    RunState,
    Saver,
    resume,
    resume_checkpoint,
    resume_ema,
    tune_from,
)
from ops.engine.stop import StopRequest, requeue_slurm_job
from ops.engine.timed_save import SaveClock
from ops.engine.trainer import (
    EpochStats,
    LoopSettings,
    NonFiniteLossError,
    TrainParts,
    stop_agreed,
    train_one_epoch,
    validate,
)
from ops.evaluation import build_test_transform
from ops.fast_augment import fast_train_augment, use_fast_decoding
from ops.memory import give_memory_back
from ops.metrics import summarize
from ops.model_loading import load_model
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
# The command line, resolved once
# --------------------------------------------------------------------------------------------


def resolve(args: argparse.Namespace) -> RunConfig:
    """The command line resolved once, in the launcher, into the frozen config every rank gets:
    the GPUs, the dataset entry and its class names, the run name, the launch plan, the batch per
    process, fc lr x5 (reading --tune_from once), SyncBN. Pairs of options that cannot work
    together are refused here, before anything is read or written."""
    gpus = args.available_gpus if args.dry_run else du.choose_gpus(args.available_gpus, os.environ)
    data = config.resolve_data(
        args.dataset,
        args.modality,
        {k: getattr(args, k) for k in DATA_FLAGS},
        dense_sample=args.dense_sample,
        clip_sampling=args.clip_sampling,
        device_aug=args.device_aug,
        train_pixels=args.train_pixels,
        skip_bad_lines=args.skip_bad_lines,
        strict_data=args.strict_data,
        dry_run=args.dry_run,
    )
    name = run_name(args)
    launch = dict({k: getattr(args, k) for k in config.LAUNCH_FLAGS}, available_gpus=gpus)
    plan = config.plan_launch(launch, gpu=args.gpu, dry_run=args.dry_run)
    model_dir, log_dir = os.path.join(args.root_model, name), os.path.join(args.root_log, name)
    if not args.dry_run and not args.evaluate:  # no output is an input, before it is read
        check_read_before_resolving("--tune_from", args.tune_from, model_dir, log_dir)
    same = config.tune_same_dataset(args.tune_from, args.dataset)
    batch = du.per_process_batch(args.batch_size, plan.local_world_size)
    total = batch * plan.local_world_size * plan.nodes * args.batch_multiplier
    cfg = RunConfig(
        name=name,
        data=data,
        model=ModelConfig(**_pick(args, ModelConfig, tune_same_dataset=same)),
        optim=OptimConfig(
            **_pick(args, OptimConfig, fc_lr5=config.resolve_fc_lr5(args.fc_lr5, same),
                    sync_bn=config.resolve_sync_bn(args.sync_bn, plan),
                    batch_per_process=batch, total_batch=total)  # fmt: skip
        ),
        schedule=ScheduleConfig(**_pick(args, ScheduleConfig, lr_steps=tuple(args.lr_steps))),
        loop=LoopConfig(**_pick(args, LoopConfig, demo_eval=args.demo and not args.no_demo_eval)),
        recipe=RecipeConfig(**_pick(args, RecipeConfig)),
        launch=LaunchConfig(plan=plan, available_gpus=gpus, dist_timeout=args.dist_timeout),
        paths=PathsConfig(**_pick(args, PathsConfig, model_dir=model_dir, log_dir=log_dir)),
        demo=args.demo,
    )
    config.check_combinations(cfg)
    return cfg


def run_name(args: argparse.Namespace) -> str:
    """The TSM / RNL run name of a command line (ops.engine.config.run_name)."""
    names = {k: getattr(args, k) for k in config.NAME_FLAGS}
    return config.run_name(**names, recipe=RecipeConfig(**_pick(args, RecipeConfig)))


def _pick(args: argparse.Namespace, cls: type, **resolved) -> dict:
    """The keywords of config class `cls`: the flags of its fields' names, `resolved` values
    for the fields that are decided here."""
    return {
        f.name: resolved[f.name] if f.name in resolved else getattr(args, f.name)
        for f in dataclasses.fields(cls)
    }


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def build_datasets(cfg: RunConfig, model: TSN) -> tuple[TSNDataSet, TSNDataSet]:
    """Training (augmented) and validation (resize + centre crop) TSNDataSets, as TSM built them.

    The workers return uint8 clips; `ops.utils.to_device` normalises them on the device with the
    model's `InputNorm` (the same float32 values as TSM's in-worker normalisation, a quarter of
    the bytes through the loader). With --device_aug the workers only read the frames and draw
    the crops; the device does the rest (ops/device_augment.py)."""
    d = cfg.data
    common = dict(
        num_segments=cfg.model.num_segments,
        new_length=1 if d.modality == "RGB" else 5,
        modality=d.modality,
        image_tmpl=d.image_tmpl,
        dense_sample=d.dense_sample,
        clip_sampling=d.clip_sampling,
        num_class=d.num_class,
        skip_bad_lines=d.skip_bad_lines,
        strict_data=d.strict_data,
    )
    augmentation = model.get_augmentation(flip=d.flip)
    fast = None  # --train_pixels fast (ops/fast_augment.py); None: PIL's pixels
    if d.device_aug:
        train_tf = DeviceTrainAugment.like(augmentation)
    else:
        fast = fast_train_augment(d.train_pixels, d.modality, augmentation, cfg.recipe.randaugment)
        randaugment = clip_randaugment(cfg.recipe.randaugment)  # [] unless --randaugment
        train_tf = fast or torchvision.transforms.Compose(
            [augmentation, *randaugment, Stack(roll=False), ToUint8Tensor()]
        )
    val_tf = torchvision.transforms.Compose(
        [
            GroupScale(int(model.scale_size)),
            GroupCenterCrop(model.crop_size),
            Stack(roll=False),
            ToUint8Tensor(),
        ]
    )
    train = TSNDataSet(d.root_path, d.train_list, transform=train_tf, **common)
    if d.device_aug:
        use_device_decoding(train)
    elif fast is not None:
        use_fast_decoding(train, fast)
    val = TSNDataSet(d.root_path, d.val_list, transform=val_tf, random_shift=False, **common)
    return train, val


@dataclass(frozen=True)
class Loaders:
    """This rank's loaders (ops/engine/loaders.py): training batches in a seeded order per
    epoch (resumable mid-epoch) with per-clip seeded augmentation, validation batches in list
    order, and --precise_bn's augmented training batches in their own seeded order (so that the
    training loader's position is untouched)."""

    train: DataLoader
    val: DataLoader
    precise_bn: DataLoader | None
    iters_per_epoch: int


def build_loaders(
    cfg: RunConfig, train: TSNDataSet, val: TSNDataSet, ctx: du.DistContext
) -> Loaders:
    batch, seed, workers = cfg.optim.batch_per_process, cfg.loop.seed, cfg.loop.workers
    ranks = dict(num_replicas=ctx.world_size, rank=ctx.rank)
    # --repeated_aug 1 (the default) is exactly EpochSampler's order.
    sampler = RepeatedAugSampler(len(train), repeats=cfg.recipe.repeated_aug, seed=seed, **ranks)
    if len(sampler) < batch:
        raise ValueError(
            f"{train.list_file} has {len(train)} videos, fewer than one batch of {batch} "
            "per process: lower --batch_size or add videos"
        )
    kw = dict(batch_size=batch, workers=workers, seed=seed, pin_memory=ctx.device.type == "cuda")
    kw.update(persistent_workers=cfg.loop.persistent_workers)
    train_loader = make_loader(
        SeededDataset(train, seed=seed), sampler=sampler, drop_last=True, **kw
    )
    val_loader = make_loader(val, sampler=EpochSampler(len(val), shuffle=False, **ranks), **kw)
    bn_loader = None
    if cfg.recipe.precise_bn:
        bn_seed = derive_seed(seed, 5)
        bn_loader = make_loader(
            SeededDataset(train, seed=bn_seed),
            sampler=EpochSampler(len(train), seed=bn_seed, **ranks),
            batch_size=batch,
            workers=workers,
            seed=bn_seed,
            drop_last=True,
        )
    return Loaders(train_loader, val_loader, bn_loader, len(sampler) // batch)


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


def build_model(cfg: RunConfig, ctx: du.DistContext) -> TSN:
    """The TSN of the run with its first weights (identical on every rank; --tune_from's)."""
    seed_all(cfg.loop.seed)
    model = build_video_model(**tsn_kwargs(cfg), print_spec=ctx.is_main)
    if cfg.model.tune_from:
        tune_from(model, cfg.model.tune_from, cfg.model.tune_same_dataset)
    return model


def min_batch(model: nn.Module, batch: int) -> int:
    """Clips a training batch needs: 2 with the RNL channel gate, whose BatchNorm1d normalises
    over clips (looked for before SyncBatchNorm replaces it); an error when a process gets
    fewer."""
    needed = 2 if any(isinstance(m, nn.BatchNorm1d) for m in model.modules()) else 1
    if batch < needed:
        raise ValueError(
            f"{batch} clip per process is too few: the non-local channel gate's BatchNorm1d "
            f"needs {needed}; raise --batch_size (it is per node, split over its processes)"
        )
    return needed


def prepare_model(cfg: RunConfig, ctx: du.DistContext) -> tuple[TSN, LoopSettings]:
    """The model on this rank's device in train mode (SyncBatchNorm where it applies,
    channels-last), and the loops' settings with the model's smallest batch (measured before
    the SyncBatchNorm conversion) and input normalisation."""
    model = build_model(cfg, ctx)
    needed = min_batch(model, cfg.optim.batch_per_process)
    settings = LoopSettings.of(cfg, min_batch=needed, input_norm=InputNorm.of(model))
    if cfg.optim.sync_bn and ctx.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same Parameter objects
    model.to(ctx.device)
    if cfg.loop.channels_last:
        model.to_channels_last()  # 2-D conv weights only (the RNL parts are 5-D)
    give_memory_back(model, ctx.device.type, cfg.loop.compile)  # freed activations (ops/memory.py)
    shape = bf16_guard.clip_shape(model, cfg.optim.batch_per_process)
    # --amp bf16 on a CPU: layers whose bf16 kernel is wrong are routed (ops/bf16_guard.py)
    bf16_guard.guard_bf16(
        model, shape, ctx.device, cfg.loop.amp, cfg.loop.channels_last, ctx.is_main
    )
    return model.train(), settings


def training_model(model: TSN, loop: LoopConfig, ctx: du.DistContext) -> nn.Module:
    """The module the training loop calls: DDP around the model when distributed, and
    torch.compile around that with --compile (lazy: a failure shows at the first step, where the
    wrapper falls back to eager mode)."""
    wrapped: nn.Module = model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return maybe_compile(wrapped, loop.compile, backend=loop.compile_backend)


def build_optimizer(
    model: TSN, cfg: RunConfig
) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler | None]:
    """SGD over the model's parameter groups (ops/param_groups.py), and the gradient scaler of
    --amp fp16."""
    o = cfg.optim
    optimizer = torch.optim.SGD(
        model.get_optim_policies(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
    )
    return optimizer, torch.amp.GradScaler("cuda") if cfg.loop.amp == "fp16" else None


@dataclass(frozen=True)
class Built:
    """Everything a rank builds before it claims the run folder (any of it may fail)."""

    model: TSN
    settings: LoopSettings
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    train_set: TSNDataSet
    val_set: TSNDataSet
    loaders: Loaders


def build(cfg: RunConfig, ctx: du.DistContext) -> Built:
    model, settings = prepare_model(cfg, ctx)
    optimizer, scaler = build_optimizer(model, cfg)
    train_set, val_set = build_datasets(cfg, model)
    # each list has a video that reads (the random generators untouched: ops/engine/preflight.py)
    check_data_before_training(None if cfg.loop.evaluate else train_set, val_set, ctx.is_main)
    loaders = build_loaders(cfg, train_set, val_set, ctx)
    return Built(model, settings, optimizer, scaler, train_set, val_set, loaders)


# --------------------------------------------------------------------------------------------
# Training (one process)
# --------------------------------------------------------------------------------------------


def train(ctx: du.DistContext, cfg: RunConfig, stop: StopRequest) -> dict:
    """Everything one process does: build, claim the run folder, resume, then the epochs."""
    built = build(cfg, ctx)
    found = resume_checkpoint(cfg.paths.resume, cfg.paths.model_dir, ctx)  # read, not applied
    if cfg.loop.evaluate and not found and not cfg.model.tune_from:
        raise ValueError(
            "--evaluate needs trained weights, and "
            + (f"--resume auto found none in {cfg.paths.model_dir}" if cfg.paths.resume
               else "none were given")  # fmt: skip
            + ": pass --resume PATH/TO/ckpt.best.pth.tar (random weights are never scored)"
        )
    if found and not cfg.loop.evaluate:  # an export, a published or an EMA file: weights only
        check_training_state(*found)
    run_log = start_run(cfg, ctx)
    try:
        state = RunState()
        if found:
            optimizer = None if cfg.loop.evaluate else built.optimizer
            state = resume(found[0], model=built.model, optimizer=optimizer,
                           scaler=built.scaler, ctx=ctx, ckpt=found[1])  # fmt: skip
        run_log.keep_epochs(state.epoch)  # the rows of epochs this run trains (again) go
        if cfg.loop.evaluate:
            return evaluate_only(cfg, ctx, built, stop)
        run = make_run(cfg, ctx, stop, built, run_log, found)
        return run_epochs(run, state, resumed=found is not None)
    finally:
        run_log.close()


def evaluate_only(cfg: RunConfig, ctx: du.DistContext, built: Built, stop: StopRequest) -> dict:
    """--evaluate: validate the resumed (or --tune_from) weights; writes nothing."""
    summary = {"run_name": cfg.name, "model_dir": cfg.paths.model_dir}
    criterion = nn.CrossEntropyLoss().to(ctx.device)
    val = validate(built.model, built.loaders.val, criterion, built.settings, ctx, stop=stop)
    if val.stopped_at is not None:
        logger.warning("--evaluate stopped by %s: no result", stop.signal_name or "another rank")
        return dict(summary, stopped=True)
    checked(val, "--evaluate", built.val_set)
    logger.info("Testing Results: Prec@1 %.3f Prec@5 %.3f Loss %.5f", *val.metrics())
    return dict(summary, val_top1=val.top1, val_top5=val.top5, val_loss=val.loss)


@dataclass(frozen=True)
class Run:
    """What the epochs of one process work with, built once (`make_run`)."""

    cfg: RunConfig
    ctx: du.DistContext
    stop: StopRequest
    built: Built
    parts: TrainParts  # the training loop's view: the (wrapped) model, loss, optimizer, ...
    ema: WeightEMA | None
    saver: Saver
    run_log: RunLogger
    runtime: dict  # what actually runs (ops/engine/runtime_report.py), stored in checkpoints

    def save(self, state: RunState, best: bool = False) -> dict:
        """The run's checkpoint (and the best one), with the compile status as of now."""
        paths = [os.path.join(self.cfg.paths.model_dir, CHECKPOINT)]
        paths += [os.path.join(self.cfg.paths.model_dir, BEST)] * best
        runtime = dict(self.runtime, compile=compile_status(self.parts.model, self.cfg.loop))
        contents = self.saver.save(state, paths, runtime)
        if self.parts.save_clock is not None:  # --save_every counts from the last save
            self.parts.save_clock.reset()
        return contents


def make_run(
    cfg: RunConfig,
    ctx: du.DistContext,
    stop: StopRequest,
    built: Built,
    run_log: RunLogger,
    found: tuple[str, dict] | None,
) -> Run:
    """The training model (DDP / compile), loss, mixing, EMA and saver of a run."""
    model, recipe = built.model, cfg.recipe
    ema = WeightEMA(model, recipe.ema) if recipe.ema else None  # of the resumed weights
    if ema is not None:
        resume_ema(ema, found)
    mix = None
    if mixing_on(recipe):
        mix = ClipMix(cfg.data.num_class, recipe.mixup, recipe.cutmix, recipe.mix_prob,
                      recipe.mix_switch_prob)  # fmt: skip
        note = "mixup/cutmix on: training Prec@1/Prec@5 count each clip's dominant label"
        logger.info(note)
        run_log.line(note)
    train_model = training_model(model, cfg.loop, ctx)
    parts = TrainParts(
        train_model,
        training_criterion(recipe).to(ctx.device),
        built.optimizer,
        WarmupSchedule(lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                       **dataclasses.asdict(cfg.schedule)),  # fmt: skip
        built.settings,
        ctx,
        built.scaler,
        stop,
        run_log,
        mix,
        ema.update if ema is not None else None,
        SaveClock(cfg.loop.save_every, ctx.is_main),
    )
    saver = Saver(cfg, model, built.optimizer, built.scaler, built.loaders.iters_per_epoch, ctx,
                  ema)  # fmt: skip
    runtime = runtime_report(model, train_model, cfg.loop, cfg.launch.plan, ctx)
    return Run(cfg, ctx, stop, built, parts, ema, saver, run_log, runtime)


def run_epochs(run: Run, state: RunState, resumed: bool) -> dict:
    """The epoch loop: train an epoch, then its validation passes, save, log; until the last
    epoch (or --stop_after_epochs), a stop request, or a failure."""
    cfg, epochs = run.cfg, run.cfg.schedule.epochs
    last_epoch = min(epochs, cfg.loop.stop_after_epochs or epochs)
    if resumed and state.epoch >= epochs and not state.validation_pending:
        logger.info(
            "the run in %s is finished (%d of %d epochs): nothing to train; --overwrite trains "
            "it afresh", cfg.paths.model_dir, state.epoch, epochs,
        )  # fmt: skip
    summary: dict = {"run_name": cfg.name, "model_dir": cfg.paths.model_dir}
    stopped = ""  # where a stop request (SIGTERM, SIGUSR1, Ctrl-C) ended the run early
    while state.validation_pending or state.epoch < last_epoch:
        if state.validation_pending:  # resumed before this epoch's validation passes ended
            stats = EpochStats(**state.pending_train)
        else:
            state, stats, stopped = train_epoch(run, state)
            if stopped:
                break
        state, results, stopped = end_epoch(run, state, stats)
        summary.update(results)
        if stopped:
            break
        if stop_agreed(run.stop, run.ctx):
            stopped = f"after epoch {state.epoch}" if state.epoch < epochs else ""
            break
    return finish(run, state, stopped, summary)


def train_epoch(run: Run, state: RunState) -> tuple[RunState, EpochStats, str]:
    """Train epoch `state.epoch`; returns the state after it (with its validation passes
    pending when it has some), its stats and, when a stop request ended it early, where (its
    exact position is saved then)."""
    cfg, ctx, loaders = run.cfg, run.ctx, run.built.loaders
    batch = cfg.optim.batch_per_process
    sampler, dataset = loaders.train.sampler, loaders.train.dataset
    start_epoch(state, sampler, dataset, batch, loaders.iters_per_epoch, ctx.rank)

    def at(i: int) -> RunState:  # the exact position before iteration i of this epoch
        return dataclasses.replace(
            state, samples_done=sampler.position((i - state.iteration) * batch), iteration=i,
            epoch_samples=len(run.built.train_set), world_size=ctx.world_size, batch=batch,
        )  # fmt: skip

    stats = train_one_epoch(run.parts, loaders.train, state, loaders.iters_per_epoch,
                            save_at=lambda i: run.save(at(i)))  # --save_every  # fmt: skip
    if stats.stopped_at is not None:  # preempted: save the exact position and leave
        state = at(stats.stopped_at)
        run.save(state)
        return state, stats, f"at epoch {state.epoch + 1}, iteration {state.iteration}"
    checked(stats, f"training epoch {state.epoch + 1}", run.built.train_set)
    epoch = state.epoch + 1
    passes = epoch % cfg.loop.eval_freq == 0 or epoch == cfg.schedule.epochs
    state = RunState(epoch, best_prec1=state.best_prec1, validation_pending=passes,
                     pending_train=dataclasses.asdict(stats) if passes else None)  # fmt: skip
    return state, stats, ""


def end_epoch(run: Run, state: RunState, stats: EpochStats) -> tuple[RunState, dict, str]:
    """The validation passes of a trained epoch (when pending), its checkpoint (and the best,
    and the EMA file) and its log row. Returns the state, the results for the summary, and
    where a stop request ended the passes ('' when none did)."""
    val = ema_val = None
    if state.validation_pending:
        passes = validation_passes(run, state.epoch)
        if passes is None:  # stopped: keep the trained epoch, its passes run again on resume
            run.save(state)
            return state, {}, f"while validating epoch {state.epoch} (validated on resume)"
        val, ema_val = passes
    best_path = os.path.join(run.cfg.paths.model_dir, BEST)
    best = val is not None and (val.top1 > state.best_prec1 or not os.path.isfile(best_path))
    top1 = max(state.best_prec1, val.top1 if val is not None else 0.0)
    state = dataclasses.replace(
        state, validation_pending=False, pending_train=None, best_prec1=top1
    )
    bad = bad_data_counts([run.built.train_set, run.built.val_set], run.ctx)
    contents = run.save(state, best)  # before logging: a full log disk loses no epoch
    if ema_val is not None:
        run.saver.save_ema(contents, ema_val.top1)
    run.run_log.epoch(state.epoch, train=stats, val=val, best_top1=top1, bad_data=bad)
    results = {}
    if val is not None:
        results.update(val_top1=val.top1, val_top5=val.top5)
    if ema_val is not None:
        results.update(ema_val_top1=ema_val.top1, ema_val_top5=ema_val.top5)
    return state, results, ""


def validation_passes(run: Run, epoch: int) -> tuple[EpochStats, EpochStats | None] | None:
    """Precise BN (--precise_bn, of the weights and of their EMA), validation, EMA validation
    (--ema) after epoch `epoch`; None when a stop request ended one of them (every pass polls
    it before each batch)."""
    cfg, ctx, stop, built = run.cfg, run.ctx, run.stop, run.built
    nets = [built.model] + ([run.ema.module] if run.ema is not None else [])
    bn_loader = built.loaders.precise_bn
    for net in nets if bn_loader is not None else []:
        logger.info("epoch %d: precise BN over %d batches", epoch, cfg.recipe.precise_bn)
        bn_loader.sampler.set_epoch(epoch)
        bn_loader.dataset.set_epoch(epoch)
        precise_bn(net, bn_loader, cfg.recipe.precise_bn, ctx, built.settings, stop)
        if stop_agreed(stop, ctx):
            return None
    criterion = nn.CrossEntropyLoss().to(ctx.device)  # validation: plain cross-entropy
    logger.info("epoch %d: validation", epoch)
    val = validate(built.model, built.loaders.val, criterion, built.settings, ctx, stop=stop)
    if val.stopped_at is not None:
        return None
    checked(val, f"validation after epoch {epoch}", built.val_set)
    if run.ema is None:
        return val, None
    logger.info("epoch %d: validation of the EMA weights", epoch)
    ema_val = validate(
        run.ema.module, built.loaders.val, criterion, built.settings, ctx, "val ema", stop
    )
    if ema_val.stopped_at is not None:
        return None
    note = "EMA weights: Prec@1 {:.3f} Prec@5 {:.3f} Loss {:.5f}".format(*ema_val.metrics())
    logger.info(note)
    run.run_log.line(f"Epoch {epoch}: {note}")
    run.run_log.scalars({"ema/val_top1": ema_val.top1}, epoch)
    return val, ema_val


def finish(run: Run, state: RunState, stopped: str, summary: dict) -> dict:
    """Say how the run ended (a stop, --stop_after_epochs), requeue the SLURM job after
    SIGUSR1 (rank 0, once everything is saved), report the bad data; the summary."""
    cfg, ctx, stop = run.cfg, run.ctx, run.stop
    # SLURM's early warning (SIGUSR1) to any rank: rank 0 requeues the job once it is saved.
    requeue = torch.tensor([float(stop.requeue)])
    asked = du.all_reduce_sum(requeue, ctx)[0] if stopped else 0
    if stopped:
        logger.warning(
            "stopped by %s %s; saved %s (--resume auto continues)",
            stop.signal_name or "a signal to another rank", stopped,
            os.path.join(cfg.paths.model_dir, CHECKPOINT),
        )  # fmt: skip
    elif state.epoch < cfg.schedule.epochs:
        logger.info("--stop_after_epochs %d reached: continue with --resume auto", state.epoch)
    if asked > 0 and ctx.is_main:
        requeue_slurm_job()
    if ctx.is_main:
        logger.info(run.built.train_set.bad_data_report())
    # compiled: True when every training step ran through torch.compile (False without --compile)
    compiled = bool(getattr(run.parts.model, "compiled", False))
    done = dict(stopped=state.epoch < cfg.schedule.epochs or state.validation_pending)
    return dict(summary, **done, best_prec1=state.best_prec1, compiled=compiled)


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


def start_run(cfg: RunConfig, ctx: du.DistContext) -> RunLogger:
    """The run's checkpoint folder and its logs (rank 0 writes them), with the resolved
    configuration logged and saved as args.txt. The folder is claimed first
    (ops/engine/run_folder.py): a folder holding another run is refused, on every rank, unless
    --resume (the same run) or --overwrite. --evaluate only reads: it writes nothing."""
    error, action = None, ""
    if ctx.is_main and not cfg.loop.evaluate:
        try:
            check_run_paths(cfg)  # no output is an input
            run_lock.hold(cfg.paths.model_dir)  # one live run per folder, until this process ends
            run_lock.hold(cfg.paths.log_dir, "--root_log")
            action = claim_run_folder(cfg)
        except RunFolderError as exc:
            error = str(exc)
    error = du.broadcast_object(error, ctx)
    if error:
        raise RunFolderError(error)
    log_dir = cfg.paths.log_dir
    try:
        run_log = RunLogger(log_dir, enabled=ctx.is_main and not cfg.loop.evaluate)
    except OSError as exc:
        raise RunFolderError(output_error_message(exc, "--root_log", log_dir)) from None
    if ctx.is_main:
        for line in describe(cfg):
            logger.info(line)
        said = {
            "new": f"starting a new run in {cfg.paths.model_dir}",
            "resume": f"continuing the run in {cfg.paths.model_dir} (--resume {cfg.paths.resume})",
            "overwrite": f"--overwrite: removed the previous run's files in {cfg.paths.model_dir}",
        }
        if action:
            logger.info(said[action])
        run_log.write_config(to_dict(cfg))
    return run_log


# --------------------------------------------------------------------------------------------
# Demo
# --------------------------------------------------------------------------------------------


def prepare_demo_data(data_root: str) -> None:
    """Write the synthetic dataset under the data root (reused when already there)."""
    logger.info("demo: synthetic dataset in %s", os.path.join(data_root, "synthetic"))
    make_synthetic(data_root, seed=0)


def demo_evaluation(cfg: RunConfig) -> dict | None:
    """Score the demo's best checkpoint on the validation videos (the published test
    transform, one view), through the training loop's loader and batch path; None when a stop
    request ended it (the training is saved: run the demo again to evaluate). Stop requests are
    caught from the start, before the line that announces the evaluation."""
    stop = StopRequest().install()
    try:
        return _demo_evaluation(cfg, stop)
    finally:
        stop.uninstall()


def _demo_evaluation(cfg: RunConfig, stop: StopRequest) -> dict | None:
    model, _ = load_model(os.path.join(cfg.paths.model_dir, BEST))
    transform = build_test_transform(
        1, model.scale_size, model.crop_size, model.input_mean, model.input_std
    )
    dataset = TSNDataSet(
        cfg.data.root_path,
        cfg.data.val_list,
        num_segments=cfg.model.num_segments,
        new_length=1,
        modality=cfg.data.modality,
        image_tmpl=cfg.data.image_tmpl,
        transform=transform,
        random_shift=False,
        test_mode=True,
    )
    loader = make_loader(dataset, batch_size=8, workers=cfg.loop.workers, seed=cfg.loop.seed)
    settings = LoopSettings(input_norm=InputNorm.of(model))
    logger.info("demo: evaluating the best checkpoint on %d validation videos", len(dataset))
    cpu = du.DistContext(False, 0, 1, 0, 1, torch.device("cpu"), None)
    outputs: list = []
    stats = validate(model, loader, nn.CrossEntropyLoss(), settings, cpu, "test", stop, outputs)
    if stats.stopped_at is not None:
        logger.warning("demo evaluation stopped by %s: run the demo again for it", stop.signal_name)
        return None
    if stats.clips < len(dataset):
        logger.warning("%d unreadable videos were left out", len(dataset) - stats.clips)
    return summarize(torch.cat([o for o, _ in outputs]), torch.cat([t for _, t in outputs]))


# --------------------------------------------------------------------------------------------
# Processes and entry point
# --------------------------------------------------------------------------------------------


def worker(local_rank: int, cfg: RunConfig) -> dict:
    """Train on one device: everything after the launch. Returns a summary (rank 0).

    Stop requests (SIGTERM, SIGUSR1, Ctrl-C) are caught from the start, so that one arriving
    during set-up still ends the run with a checkpoint. In a distributed run a failure ends this
    process with one log line and exit code 1 (without the process-group teardown, which could
    wait on a dead peer); the launcher (spawn, torchrun) then stops the other ranks, which also
    notice on their own through the collective timeout.
    """
    stop = StopRequest().install()
    try:
        ctx = du.init_worker(cfg.launch.plan, local_rank, cfg.launch.dist_timeout)
        # Per process: workers started by --multiprocessing-distributed do not inherit it.
        torch.backends.cudnn.benchmark = True
        if cfg.launch.plan.mode != "single":
            setup_logging(ctx.rank)
        try:
            summary = train(ctx, cfg, stop)
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


def _spawn_entry(local_rank: int, cfg: RunConfig):
    """Entry point of a worker spawned by --multiprocessing-distributed."""
    plan = cfg.launch.plan
    setup_logging(rank=plan.node_rank * plan.nprocs + local_rank)
    worker(local_rank, cfg)


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


def dry_run(cfg: RunConfig) -> dict:
    """--dry_run: print the resolved plan and the serialised RunConfig; read and write nothing
    (the model is built with random weights to count its parameters)."""
    lines = describe(cfg)
    lines.append(config.check_pretrained(cfg.model.pretrain, cfg.model.arch, dry_run=True))
    model = build_video_model(**tsn_kwargs(cfg, pretrain="scratch"), print_spec=False)
    n_params = sum(p.numel() for p in model.parameters())
    lines.append(f"model built: {n_params / 1e6:.2f}M parameters (weights not loaded)")
    text = ["dry run: nothing was trained or read", *lines, "run config:", config.to_json(cfg)]
    print("\n".join(text))
    return {"config": to_dict(cfg), "lines": lines}


def _run(args: argparse.Namespace) -> dict:
    if args.demo and not args.dry_run:
        prepare_demo_data(args.data_root or default_data_root())
    cfg = resolve(args)
    if args.dry_run:
        return dry_run(cfg)
    logger.info(config.check_pretrained(cfg.model.pretrain, cfg.model.arch, dry_run=False))
    start = time.perf_counter()
    plan = cfg.launch.plan
    if plan.node_rank == 0 and not cfg.loop.evaluate:  # refused before anything is built or
        check_run_paths(cfg)  # spawned: no output is an input, and no live run holds the folders
        run_lock.check_free(cfg.paths.model_dir)  # (rank 0 takes the locks at the claim)
        run_lock.check_free(cfg.paths.log_dir)
    if plan.mode == "spawn":
        du.spawn(_spawn_entry, plan.nprocs, (cfg,))
        summary = {"run_name": cfg.name, "model_dir": cfg.paths.model_dir}
    else:
        summary = worker(0, cfg)
    summary["seconds"] = time.perf_counter() - start
    if cfg.loop.demo_eval and not summary.get("stopped"):
        result = demo_evaluation(cfg)
        if result is not None:
            summary["demo_eval"] = result
            print(
                f"demo: {result['num_videos']} validation videos, top-1 {result['top1']:.1f}%, "
                f"top-5 {result['top5']:.1f}%, mean class accuracy "
                f"{result['mean_class_acc']:.1f}% (trained in {summary['seconds'] / 60:.1f} min; "
                f"run {cfg.name})"
            )
    return summary


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
