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
(`ckpt.pth.tar` every epoch, `ckpt.best.pth.tar`) and `<root_log>/<run name>/` (tensorboardX,
log.csv, log.txt, args.txt).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from archs import imagenet_weights_path, load_imagenet_state_dict
from ops import distributed as du
from ops.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    strip_module_prefix,
)
from ops.dataset_config import NO_FLIP_DATASETS, category_file, resolve_dataset
from ops.lr_scheduler import WarmupSchedule
from ops.models import TSN
from ops.run_logger import RunLogger
from ops.seeding import EpochSampler, SeededDataset, rng_state, seed_all, seed_epoch, set_rng_state
from ops.trainer import NonFiniteLossError, StopRequest, train_one_epoch, validate
from ops.utils import setup_logging
from opts import parse_args

logger = logging.getLogger("main")

# Class counts of the published datasets, used only by --dry_run when the category file is absent.
PUBLISHED_CLASS_COUNTS = {"something": 174, "somethingv2": 174, "jester": 27, "ucf101": 101}

# Errors that end a run with a one-line message (no traceback).
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    CheckpointError,
    NonFiniteLossError,
    du.DistributedSetupError,
    du.RankFailureError,
)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def run_name(args: argparse.Namespace) -> str:
    """TSM / RNL run naming, e.g. TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e100_cos
    _dense_nl_lr0.02_wd2.0e-04_do0.5_1 (ops.checkpoint.parse_published_name reads it back)."""
    arch = args.arch
    if args.shift:
        arch += f"_shift{args.shift_div}_{args.shift_place}"
    if args.temporal_pool:
        arch += "_tpool"
    parts = ["TSM", args.dataset, args.modality, arch, args.consensus_type]
    name = "_".join(parts + [f"segment{args.num_segments}", f"e{args.epochs}"])
    if args.pretrain != "imagenet":
        pretrain = os.path.splitext(os.path.basename(args.pretrain.rstrip("/")))[0]
        name += f"_{pretrain.replace('_', '-')}"
    if args.lr_type != "step":
        name += f"_{args.lr_type}"
    if args.dense_sample:
        name += "_dense"
    if args.non_local:
        name += "_nl" if args.nl_type == "rnl" else f"_nl_{args.nl_type}"
    name += f"_lr{args.lr}_wd{args.weight_decay:.1e}_do{args.dropout}"
    if args.suffix is not None:
        name += f"_{args.suffix}"
    return name


def resolve_data(args: argparse.Namespace, dry_run: bool) -> dict:
    """The dataset entry (class count, lists, frame folder, template); touches no data in dry run."""
    try:
        num_class, train_list, val_list, root_path, tmpl = resolve_dataset(args, args.modality)
        note = ""
    except FileNotFoundError as exc:
        # Only the category file is read here; a dry run may lack it.
        if not dry_run:
            raise
        if args.dataset not in PUBLISHED_CLASS_COUNTS:
            raise
        root = args.data_root or os.environ.get("RNL_DATA_ROOT") or "data"
        args_copy = argparse.Namespace(**vars(args))
        args_copy.num_class = PUBLISHED_CLASS_COUNTS[args.dataset]
        num_class, train_list, val_list, root_path, tmpl = resolve_dataset(args_copy, args.modality)
        note = f" (category file {category_file(args.dataset, args.modality, root)} not found: published count)"
        logger.debug("dry run without category file: %s", exc)
    return dict(
        num_class=num_class,
        train_list=train_list,
        val_list=val_list,
        root_path=root_path,
        image_tmpl=tmpl,
        note=note,
    )


def model_kwargs(args: argparse.Namespace, num_class: int, pretrain: str) -> dict:
    """TSN constructor keywords from the command line (TSM's main.py mapping)."""
    return dict(
        num_class=num_class,
        num_segments=args.num_segments,
        modality=args.modality,
        base_model=args.arch,
        consensus_type=args.consensus_type,
        dropout=args.dropout,
        img_feature_dim=args.img_feature_dim,
        partial_bn=not args.no_partialbn,
        pretrain=pretrain,
        is_shift=args.shift,
        shift_div=args.shift_div,
        shift_place=args.shift_place,
        # fc lr x5 / x10 unless fine-tuning from a checkpoint of the same dataset (SPEC 7).
        fc_lr5=not (args.tune_from and args.dataset in os.path.basename(args.tune_from)),
        temporal_pool=args.temporal_pool,
        non_local=args.non_local,
        nl_type=args.nl_type,
        input_size=args.input_size,
    )


def visible_gpus(args: argparse.Namespace) -> int:
    """GPUs this run can use (for a dry run without them: as many as --available_gpus names)."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.dry_run and n == 0 and args.available_gpus:
        return len([s for s in args.available_gpus.split(",") if s.strip()])
    return n


def resolve_sync_bn(args: argparse.Namespace, plan: du.LaunchPlan) -> bool:
    """--sync_bn default: on when distributed over GPUs (as the published recipe), else off."""
    if args.sync_bn is not None:
        return bool(args.sync_bn)
    return plan.mode != "single" and plan.use_cuda


def resolved_config(args: argparse.Namespace, plan: du.LaunchPlan, data: dict, name: str) -> dict:
    """The settings a run will use, after defaults, dataset registry and launch plan."""
    per_proc = du.per_process_batch(args.batch_size, plan.local_world_size)
    return {
        "run_name": name,
        "dataset": args.dataset,
        "modality": args.modality,
        "num_class": data["num_class"],
        "arch": args.arch,
        "shift": args.shift,
        "shift_div": args.shift_div,
        "shift_place": args.shift_place,
        "temporal_pool": args.temporal_pool,
        "non_local": args.non_local,
        "dense_sample": args.dense_sample,
        "flip": args.dataset not in NO_FLIP_DATASETS,
        "lr": args.lr,
        "lr_type": args.lr_type,
        "use_warmup": args.use_warmup,
        "warmup_epochs": args.warmup_epochs if args.use_warmup else 0,
        "epochs": args.epochs,
        "weight_decay": args.weight_decay,
        "clip_gradient": args.clip_gradient,
        "launch": plan.mode,
        "processes_per_node": plan.local_world_size,
        "nodes": plan.nodes,
        "world_size": plan.world_size,
        "backend": plan.backend,
        "sync_bn": resolve_sync_bn(args, plan),
        "batch_per_process": per_proc,
        "batch_multiplier": args.batch_multiplier,
        "total_batch": per_proc * plan.local_world_size * plan.nodes * args.batch_multiplier,
    }


def describe(args: argparse.Namespace, plan: du.LaunchPlan, data: dict, name: str) -> list[str]:
    """The resolved configuration as text, printed by --dry_run and logged when a run starts."""
    cfg = resolved_config(args, plan, data, name)
    if plan.mode == "spawn":
        devices = (
            f"GPUs {','.join(map(str, plan.gpu_ids))}"
            if plan.use_cuda and plan.gpu_ids
            else ("all visible GPUs" if plan.use_cuda else "CPU")
        )
        launch = f"spawn {plan.nprocs} processes per node on {devices}"
    elif plan.mode == "env":
        launch = "one process of a torchrun / SLURM / manual launch"
    else:
        launch = "single process"
    return [
        f"run name: {name}",
        f"dataset: {args.dataset} ({args.modality}), {data['num_class']} classes{data['note']}",
        f"  train list: {data['train_list']}",
        f"  val list: {data['val_list']}",
        f"  frames: {data['root_path']} / {data['image_tmpl']}",
        f"  sampling: {'dense' if args.dense_sample else 'TSN segments'}, "
        f"{args.num_segments} segments, flip {'on' if cfg['flip'] else 'off'}",
        f"model: {args.arch}, input {args.input_size}, dropout {args.dropout}, "
        f"partial BN {'off' if args.no_partialbn else 'on'}, pretrain {args.pretrain}",
        f"  shift: {args.shift}, shift_div: {args.shift_div}, shift_place: {args.shift_place}, "
        f"temporal_pool: {args.temporal_pool}",
        f"  non_local: {args.non_local} ({args.nl_type})",
        f"optimizer: SGD lr {args.lr}, momentum {args.momentum}, weight decay {args.weight_decay}, "
        f"clip grad norm {args.clip_gradient}",
        f"  lr_type: {args.lr_type}"
        + (f" (steps {args.lr_steps})" if args.lr_type == "step" else "")
        + f", warmup: {args.use_warmup} ({cfg['warmup_epochs']} epochs from lr/10), "
        f"epochs: {args.epochs}",
        f"distributed: {launch}, world size {plan.world_size}, nodes {plan.nodes}, "
        f"backend {plan.backend or '-'}, dist-url {plan.dist_url or '-'}, sync_bn {cfg['sync_bn']}",
        f"batch: {cfg['batch_per_process']} clips per process x {plan.local_world_size} "
        f"processes per node x {plan.nodes} nodes x batch_multiplier {args.batch_multiplier} "
        f"= total batch {cfg['total_batch']}",
        f"speed: amp {args.amp}, channels_last {args.channels_last}, compile {args.compile}",
        f"outputs: {os.path.join(args.root_model, name)} and {os.path.join(args.root_log, name)}",
    ]


def check_pretrained(args: argparse.Namespace, dry_run: bool) -> str:
    """Say where the backbone weights come from; a real run fetches/validates them once here."""
    if args.pretrain == "scratch":
        return "pretrain: scratch (random initialisation)"
    if args.pretrain != "imagenet":
        if not os.path.isfile(args.pretrain):
            msg = f"--pretrain file {args.pretrain} does not exist"
            if dry_run:
                return f"pretrain: {msg}"
            raise FileNotFoundError(f"{msg}: pass an existing state_dict, imagenet or scratch")
        return f"pretrain: {args.pretrain}"
    path = imagenet_weights_path(args.arch)
    if os.path.isfile(path):
        return f"pretrain: ImageNet weights found at {path}"
    if dry_run:
        return (
            f"pretrain: ImageNet weights NOT found at {path}: a real run downloads them if it can, "
            "else provide that file or pass --pretrain PATH|scratch"
        )
    load_imagenet_state_dict(args.arch)  # downloads once, or raises naming the file to provide
    return f"pretrain: ImageNet weights at {path}"


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def build_datasets(args: argparse.Namespace, model: TSN, data: dict):
    """Training (augmented) and validation (resize + centre crop) TSNDataSets, as TSM built them."""
    from ops.dataset import TSNDataSet
    from ops.transforms import (
        GroupCenterCrop,
        GroupNormalize,
        GroupScale,
        Stack,
        ToTorchFormatTensor,
    )

    normalize = GroupNormalize(model.input_mean, model.input_std)
    new_length = 1 if args.modality == "RGB" else 5
    common = dict(
        num_segments=args.num_segments,
        new_length=new_length,
        modality=args.modality,
        image_tmpl=data["image_tmpl"],
        dense_sample=args.dense_sample,
    )
    flip = args.dataset not in NO_FLIP_DATASETS
    train_tf = torchvision.transforms.Compose(
        [
            model.get_augmentation(flip=flip),
            Stack(roll=False),
            ToTorchFormatTensor(div=True),
            normalize,
        ]
    )
    val_tf = torchvision.transforms.Compose(
        [
            GroupScale(int(model.scale_size)),
            GroupCenterCrop(model.crop_size),
            Stack(roll=False),
            ToTorchFormatTensor(div=True),
            normalize,
        ]
    )
    train = TSNDataSet(data["root_path"], data["train_list"], transform=train_tf, **common)
    val = TSNDataSet(
        data["root_path"], data["val_list"], transform=val_tf, random_shift=False, **common
    )
    return train, val


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


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
    }


def _plain(v) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    return False


def find_resume(args: argparse.Namespace, name: str) -> str | None:
    """The checkpoint path --resume asks for (None: start fresh)."""
    if not args.resume:
        return None
    if args.resume == "auto":
        path = os.path.join(args.root_model, name, "ckpt.pth.tar")
        return path if os.path.isfile(path) else None
    if not os.path.isfile(args.resume):
        raise FileNotFoundError(
            f"--resume {args.resume} does not exist: give a ckpt.pth.tar path or 'auto'"
        )
    return args.resume


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


def save_rank0(
    state: dict | None, paths: list[str], ctx: du.DistContext, run_log: RunLogger
) -> None:
    """Rank 0 writes `state` to each path atomically; every rank learns whether that failed.

    On failure all ranks raise CheckpointError (the previous checkpoint files are intact).
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


# --------------------------------------------------------------------------------------------
# Worker
# --------------------------------------------------------------------------------------------


def worker(local_rank: int, plan: du.LaunchPlan, args: argparse.Namespace, name: str) -> dict:
    """Train on one device: everything after the launch. Returns a summary (rank 0)."""
    ctx = du.init_worker(plan, local_rank, args.dist_timeout)
    if plan.mode != "single":
        setup_logging(ctx.rank)
    try:
        return _train(ctx, plan, args, name)
    finally:
        du.cleanup(ctx)


def _spawn_entry(local_rank: int, plan: du.LaunchPlan, args: argparse.Namespace, name: str):
    """Entry point of a spawned worker: errors become one log line and exit code 1."""
    setup_logging(rank=plan.node_rank * plan.nprocs + local_rank)
    try:
        worker(local_rank, plan, args, name)
    except USER_ERRORS as exc:
        logger.error("%s", exc)
        sys.stderr.flush()
        os._exit(1)  # skip destructors that could wait on a dead peer
    except RuntimeError as exc:
        if du.is_collective_failure(exc):
            logger.error("lost contact with another rank (it died or hung): %s", _first_line(exc))
            sys.stderr.flush()
            os._exit(1)
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _train(ctx: du.DistContext, plan: du.LaunchPlan, args: argparse.Namespace, name: str) -> dict:
    data = resolve_data(args, dry_run=False)
    per_proc_batch = du.per_process_batch(args.batch_size, plan.local_world_size)
    model_dir = os.path.join(args.root_model, name)
    run_log = RunLogger(os.path.join(args.root_log, name), enabled=ctx.is_main)
    if ctx.is_main:
        os.makedirs(model_dir, exist_ok=True)
        for line in describe(args, plan, data, name):
            logger.info(line)
        run_log.write_config(vars(args))

    # ---- model ----------------------------------------------------------------------------
    seed_all(args.seed)  # identical initial weights on every rank
    model = TSN(**model_kwargs(args, data["num_class"], args.pretrain), print_spec=ctx.is_main)
    if args.tune_from:
        _tune_from(model, args)
    policies = model.get_optim_policies()
    for group in policies:
        logger.debug(
            "group %s: %d params, lr_mult %s, decay_mult %s",
            group["name"],
            len(group["params"]),
            group["lr_mult"],
            group["decay_mult"],
        )
    if resolve_sync_bn(args, plan):
        if not plan.use_cuda:
            logger.warning("--sync_bn on CPU: SyncBatchNorm needs GPUs; keeping BatchNorm")
        elif ctx.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(ctx.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    model.partialBN(not args.no_partialbn)
    model.train()  # partial BN freezes its parameters before DDP records which ones train

    optimizer = torch.optim.SGD(
        policies, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
    if args.amp == "fp16" and ctx.device.type != "cuda":
        raise ValueError("--amp fp16 needs a GPU: use --amp bf16 on CPU, or --amp off")

    # ---- resume -----------------------------------------------------------------------------
    start_epoch, start_iter, best_prec1, saved_rng = 0, 0, 0.0, None
    resume_path = find_resume(args, name)
    if args.resume == "auto" and resume_path is None:
        logger.info("--resume auto: no checkpoint in %s, starting from scratch", model_dir)
    if resume_path:
        ckpt = load_checkpoint(resume_path)
        check_resumable(ckpt, model, resume_path)
        load_model_weights(model, ckpt["state_dict"])
        if "optimizer" in ckpt and not args.evaluate:
            optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt.get("epoch", 0))
        start_iter = int(ckpt.get("iteration", 0))
        best_prec1 = float(ckpt.get("best_prec1", 0.0))
        states = ckpt.get("rng_states") or []
        if start_iter and ckpt.get("world_size") == ctx.world_size and len(states) > ctx.rank:
            saved_rng = states[ctx.rank]
        logger.info(
            "resumed %s: epoch %d, iteration %d, best prec@1 %.3f",
            resume_path,
            start_epoch,
            start_iter,
            best_prec1,
        )

    ddp_model: nn.Module = model
    if ctx.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    if args.compile:
        ddp_model = torch.compile(ddp_model)

    # ---- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args, model, data)
    train_set = SeededDataset(train_set, seed=args.seed)
    train_sampler = EpochSampler(
        len(train_set), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed
    )
    val_sampler = EpochSampler(
        len(val_set), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False
    )
    collate = _dataset_collate()
    loader_kw = dict(
        num_workers=args.workers,
        pin_memory=ctx.device.type == "cuda",
        collate_fn=collate,
        persistent_workers=False,
    )
    # The loaders' own generator feeds their worker seeds, so creating an iterator leaves the
    # global RNG (dropout) alone; augmentation randomness comes from SeededDataset.
    loader_kw["generator"] = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        train_set, batch_size=per_proc_batch, sampler=train_sampler, drop_last=True, **loader_kw
    )
    val_loader = DataLoader(val_set, batch_size=per_proc_batch, sampler=val_sampler, **loader_kw)
    train_sampler.set_epoch(0)
    iters_per_epoch = len(train_loader)
    if iters_per_epoch == 0:
        raise ValueError(
            f"{data['train_list']} has {len(train_set)} videos, fewer than one batch of "
            f"{per_proc_batch} per process: lower --batch_size or add videos"
        )
    criterion = nn.CrossEntropyLoss().to(ctx.device)
    schedule = WarmupSchedule(
        lr=args.lr,
        epochs=args.epochs,
        lr_type=args.lr_type,
        lr_steps=args.lr_steps,
        use_warmup=args.use_warmup,
        warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay,
    )

    if args.evaluate:
        stats = validate(
            model=model,
            loader=val_loader,
            criterion=criterion,
            ctx=ctx,
            amp=args.amp,
            channels_last=args.channels_last,
        )
        logger.info(
            "Testing Results: Prec@1 %.3f Prec@5 %.3f Loss %.5f", stats.top1, stats.top5, stats.loss
        )
        run_log.close()
        return {"val_top1": stats.top1, "val_top5": stats.top5, "val_loss": stats.loss}

    # ---- epochs -------------------------------------------------------------------------------
    stop = StopRequest().install()
    ckpt_path = os.path.join(model_dir, "ckpt.pth.tar")
    best_path = os.path.join(model_dir, "ckpt.best.pth.tar")

    def make_state(epoch: int, iteration: int) -> dict:
        # A collective (every rank's RNG state is gathered): all ranks call it.
        return checkpoint_state(
            args=args,
            model=model,
            optimizer=optimizer,
            scaler=scaler,
            epoch=epoch,
            iteration=iteration,
            iters_per_epoch=iters_per_epoch,
            best_prec1=best_prec1,
            rng_states=du.all_gather_objects(rng_state(), ctx),
            world_size=ctx.world_size,
        )

    summary: dict = {"run_name": name, "model_dir": model_dir, "stopped": False}
    last_val = None
    try:
        epoch = start_epoch
        end_epoch = args.epochs
        if args.stop_after_epochs is not None:
            end_epoch = min(end_epoch, args.stop_after_epochs)
        while epoch < end_epoch:
            train_sampler.set_epoch(epoch, start=start_iter * per_proc_batch)
            train_set.set_epoch(epoch)
            if start_iter and saved_rng is not None:
                set_rng_state(saved_rng)
            else:
                seed_epoch(args.seed, epoch, ctx.rank)
            stats = train_one_epoch(
                model=ddp_model,
                loader=train_loader,
                criterion=criterion,
                optimizer=optimizer,
                schedule=schedule,
                epoch=epoch,
                iters_per_epoch=iters_per_epoch,
                start_iter=start_iter,
                batch_multiplier=args.batch_multiplier,
                clip_gradient=args.clip_gradient,
                ctx=ctx,
                stop=stop,
                amp=args.amp,
                scaler=scaler,
                channels_last=args.channels_last,
                run_logger=run_log,
                print_freq=args.print_freq,
            )
            if stats.stopped_at is not None:
                # Preempted mid-epoch: save the exact position and leave.
                save_rank0(make_state(epoch, stats.stopped_at), [ckpt_path], ctx, run_log)
                logger.warning(
                    "stopped by %s at epoch %d iteration %d/%d; checkpoint %s "
                    "(continue with --resume auto)",
                    stop.signal_name or "a signal on another rank",
                    epoch + 1,
                    stats.stopped_at,
                    iters_per_epoch,
                    ckpt_path,
                )
                summary["stopped"] = True
                break
            start_iter, saved_rng = 0, None
            row = {
                "epoch": epoch + 1,
                "lr": stats.lr,
                "train_loss": stats.loss,
                "train_top1": stats.top1,
                "train_top5": stats.top5,
                "train_clips_per_s": stats.clips_per_s,
                "seconds": stats.seconds,
            }
            run_log.scalars(
                {
                    "loss/train": stats.loss,
                    "acc/train_top1": stats.top1,
                    "acc/train_top5": stats.top5,
                    "lr": stats.lr,
                    "throughput/clips_per_s": stats.clips_per_s,
                },
                epoch + 1,
            )
            is_best = False
            if (epoch + 1) % args.eval_freq == 0 or epoch + 1 == args.epochs:
                last_val = validate(
                    model=model,
                    loader=val_loader,
                    criterion=criterion,
                    ctx=ctx,
                    amp=args.amp,
                    channels_last=args.channels_last,
                )
                is_best = last_val.top1 > best_prec1 or not os.path.isfile(best_path)
                best_prec1 = max(best_prec1, last_val.top1)
                row.update(
                    val_loss=last_val.loss,
                    val_top1=last_val.top1,
                    val_top5=last_val.top5,
                    best_top1=best_prec1,
                )
                run_log.scalars(
                    {
                        "loss/val": last_val.loss,
                        "acc/val_top1": last_val.top1,
                        "acc/val_top5": last_val.top5,
                        "acc/val_top1_best": best_prec1,
                    },
                    epoch + 1,
                )
                line = (
                    f"Testing Results: Prec@1 {last_val.top1:.3f} Prec@5 {last_val.top5:.3f} "
                    f"Loss {last_val.loss:.5f} (best Prec@1 {best_prec1:.3f})"
                )
                logger.info("epoch %d: %s", epoch + 1, line)
                run_log.line(line)
            row["skipped_videos"] = _bad_data_total(train_set, val_set, ctx)
            run_log.epoch_row(row)

            paths = [ckpt_path] + ([best_path] if is_best else [])
            save_rank0(make_state(epoch + 1, 0), paths, ctx, run_log)
            epoch += 1

            stop_now = du.all_reduce_sum(
                torch.tensor([float(stop.requested)], dtype=torch.float64), ctx
            )
            if stop_now[0] > 0 and epoch < args.epochs:
                logger.warning(
                    "stopped by a signal after epoch %d; checkpoint %s (continue with --resume auto)",
                    epoch,
                    ckpt_path,
                )
                summary["stopped"] = True
                break
        if args.stop_after_epochs is not None and epoch < args.epochs and not summary["stopped"]:
            logger.info(
                "--stop_after_epochs %d reached; continue with --resume auto",
                args.stop_after_epochs,
            )
            summary["stopped"] = True
    finally:
        stop.uninstall()
        run_log.close()
    summary["best_prec1"] = best_prec1
    if last_val is not None:
        summary.update(val_top1=last_val.top1, val_top5=last_val.top5)
    return summary


def _dataset_collate():
    """The data layer's collate (drops samples of unreadable videos), if it provides one."""
    import ops.dataset as dataset_module

    return getattr(dataset_module, "collate", None)


def _bad_data_total(train_set, val_set, ctx: du.DistContext) -> int:
    """Videos skipped so far (all ranks and loader workers), from the data layer's counters."""
    total = 0
    for ds in (train_set, val_set):
        counts = getattr(ds, "bad_data_counts", None)
        if callable(counts):
            total += int(sum(v for v in counts().values() if isinstance(v, (int, float))))
    return int(du.all_reduce_sum(torch.tensor([float(total)], dtype=torch.float64), ctx)[0])


def _tune_from(model: TSN, args: argparse.Namespace) -> None:
    """Initialise from another run's checkpoint; its classifier only if the dataset is the same."""
    ckpt = load_checkpoint(args.tune_from)
    sd = strip_module_prefix(ckpt["state_dict"])
    same_dataset = ckpt.get("dataset") == args.dataset or (
        ckpt.get("dataset") is None and args.dataset in os.path.basename(args.tune_from)
    )
    own = model.state_dict()
    if not same_dataset:
        sd = {k: v for k, v in sd.items() if not (k.startswith("new_fc.") or ".fc." in k)}
        logger.info("=> new dataset: classifier weights of %s not loaded", args.tune_from)
    for k, v in own.items():
        if k not in sd:
            sd[k] = v  # keep the fresh classifier (and nothing else: load_model_weights checks)
    load_model_weights(model, sd)
    logger.info("=> fine-tuning from %s", args.tune_from)


# --------------------------------------------------------------------------------------------
# Demo
# --------------------------------------------------------------------------------------------


def prepare_demo_data(args: argparse.Namespace) -> None:
    """Generate the synthetic dataset under the data root unless it is already there."""
    from ops.dataset_config import default_data_root

    root = args.data_root or default_data_root()
    args.data_root = root
    marker = os.path.join(root, "synthetic", "val_videofolder.txt")
    if os.path.isfile(marker):
        logger.info("demo: using the synthetic dataset in %s", os.path.join(root, "synthetic"))
        return
    from tools.make_synthetic import make_synthetic

    logger.info("demo: generating the synthetic dataset in %s", os.path.join(root, "synthetic"))
    make_synthetic(root, seed=0)


def demo_evaluation(args: argparse.Namespace, name: str) -> dict:
    """Score the demo's best checkpoint on the validation videos with the evaluation code."""
    from ops.dataset import TSNDataSet
    from ops.evaluation import build_test_transform, evaluate_model, summarize

    data = resolve_data(args, dry_run=False)
    path = os.path.join(args.root_model, name, "ckpt.best.pth.tar")
    ckpt = load_checkpoint(path)
    cfg = dict(ckpt["model_config"])
    model = TSN(**cfg, pretrain="scratch", print_spec=False)
    load_model_weights(model, ckpt["state_dict"])
    model.eval()
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
# Entry point
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    """Parse `argv` and run; returns rank 0's summary. Errors exit with a one-line message."""
    args = parse_args(argv)
    setup_logging(rank=0)
    try:
        return _run(args)
    except USER_ERRORS as exc:
        logger.error("%s", exc)
        raise SystemExit(f"main.py: error: {exc}") from None


def _run(args: argparse.Namespace) -> dict:
    if args.demo and not args.dry_run:
        prepare_demo_data(args)
    data = resolve_data(args, dry_run=args.dry_run)
    name = run_name(args)
    plan = du.plan_launch(
        multiprocessing_distributed=args.multiprocessing_distributed,
        world_size=args.world_size,
        rank=args.rank,
        dist_url=args.dist_url,
        dist_backend=args.dist_backend,
        available_gpus=args.available_gpus,
        cpu_procs=args.cpu_procs,
        num_visible_gpus=visible_gpus(args),
    )

    if args.dry_run:
        lines = describe(args, plan, data, name) + [check_pretrained(args, dry_run=True)]
        model = TSN(**model_kwargs(args, data["num_class"], "scratch"), print_spec=False)
        n_params = sum(p.numel() for p in model.parameters())
        lines.append(f"model built: {n_params / 1e6:.2f}M parameters (weights not loaded)")
        print("\n".join(["dry run: nothing was trained or read"] + lines))
        return {"resolved": resolved_config(args, plan, data, name), "lines": lines}

    if args.available_gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.available_gpus
    logger.info(check_pretrained(args, dry_run=False))
    if args.seed is not None:
        torch.backends.cudnn.benchmark = False
    start = time.perf_counter()
    if plan.mode == "spawn":
        if plan.dist_url is None:
            plan.dist_url = f"tcp://127.0.0.1:{du._free_port()}"
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
