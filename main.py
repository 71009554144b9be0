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

import os

# OpenMP threads that spin while waiting make PyTorch on a busy CPU (a shared node, other jobs,
# DataLoader workers) 5-20x slower; passive waiting costs little when the CPU is idle. Must be
# set before torch loads its OpenMP runtime; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import logging
import sys
import time

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from ops import distributed as du
from ops.checkpoint import (
    CheckpointError,
    build_model_from_checkpoint,
    load_checkpoint,
    model_config_from_checkpoint,
)
from ops.compile import maybe_compile
from ops.dataset import DataError, TSNDataSet, collate
from ops.dataset_config import NO_FLIP_DATASETS, default_data_root
from ops.evaluation import build_test_transform, evaluate_model, summarize
from ops.lr_scheduler import WarmupSchedule
from ops.models import TSN
from ops.run_config import (
    check_pretrained,
    describe,
    model_kwargs,
    resolve_data,
    resolve_sync_bn,
    resolved_config,
    run_name,
    visible_gpus,
)
from ops.run_logger import RunLogger
from ops.seeding import EpochSampler, SeededDataset, rng_state, seed_all, seed_epoch, set_rng_state
from ops.train_state import (
    ResumePoint,
    checkpoint_state,
    find_resume,
    param_checksum,
    resume_from,
    save_on_master,
    tune_from,
)
from ops.trainer import NonFiniteLossError, StopRequest, train_one_epoch, validate
from ops.transforms import GroupCenterCrop, GroupNormalize, GroupScale, Stack, ToTorchFormatTensor
from ops.utils import setup_logging
from opts import parse_args
from tools.make_synthetic import make_synthetic

logger = logging.getLogger("main")

# Errors that end a run with a one-line message (no traceback).
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    CheckpointError,
    DataError,
    NonFiniteLossError,
    du.DistributedSetupError,
    du.RankFailureError,
)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def build_datasets(args: argparse.Namespace, model: TSN, data: dict):
    """Training (augmented) and validation (resize + centre crop) TSNDataSets, as TSM built them."""
    normalize = GroupNormalize(model.input_mean, model.input_std)
    common = dict(
        num_segments=args.num_segments,
        new_length=1 if args.modality == "RGB" else 5,
        modality=args.modality,
        image_tmpl=data["image_tmpl"],
        dense_sample=args.dense_sample,
        num_class=data["num_class"],
        skip_bad_lines=args.skip_bad_lines,
        strict_data=args.strict_data,
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
# Worker
# --------------------------------------------------------------------------------------------


def worker(local_rank: int, plan: du.LaunchPlan, args: argparse.Namespace, name: str) -> dict:
    """Train on one device: everything after the launch. Returns a summary (rank 0).

    In a distributed run a failure ends this process with one log line and exit code 1 (without
    the process-group teardown, which could wait on a dead peer); the launcher (spawn, torchrun)
    then stops the other ranks, which also notice on their own through the collective timeout.
    """
    ctx = du.init_worker(plan, local_rank, args.dist_timeout)
    if plan.mode != "single":
        setup_logging(ctx.rank)
    try:
        summary = _train(ctx, plan, args, name)
    except Exception as exc:
        if not ctx.distributed:
            raise
        if du.is_collective_failure(exc):
            logger.error("lost contact with another rank (it died or hung): %s", _first_line(exc))
        elif isinstance(exc, USER_ERRORS):
            logger.error("%s", exc)
        else:
            logger.exception("rank %d failed", ctx.rank)
        sys.stderr.flush()
        os._exit(1)
    du.cleanup(ctx)
    return summary


def _spawn_entry(local_rank: int, plan: du.LaunchPlan, args: argparse.Namespace, name: str):
    """Entry point of a worker spawned by --multiprocessing-distributed."""
    setup_logging(rank=plan.node_rank * plan.nprocs + local_rank)
    worker(local_rank, plan, args, name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _train(ctx: du.DistContext, plan: du.LaunchPlan, args: argparse.Namespace, name: str) -> dict:
    data = resolve_data(args, dry_run=False)
    batch = du.per_process_batch(args.batch_size, plan.local_world_size)
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
        tune_from(model, args.tune_from, args.dataset)
    policies = model.get_optim_policies()
    # The RNL channel gate has a BatchNorm1d over clips, which needs 2 clips to train.
    min_batch = 2 if any(isinstance(m, nn.BatchNorm1d) for m in model.modules()) else 1
    if resolve_sync_bn(args, plan):
        if not plan.use_cuda:
            logger.warning("--sync_bn ignored: SyncBatchNorm needs GPUs, keeping BatchNorm on CPU")
        elif ctx.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same Parameter objects
    model.to(ctx.device)
    if args.channels_last:
        model.to_channels_last()  # 2-D conv weights only (the RNL parts are 5-D)
    model.partialBN(not args.no_partialbn)
    model.train()  # partial BN freezes its parameters before DDP records which ones train
    optimizer = torch.optim.SGD(
        policies, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    if args.amp == "fp16" and ctx.device.type != "cuda":
        raise ValueError("--amp fp16 needs a GPU: use --amp bf16 on CPU, or --amp off")
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None

    resume = find_resume(args.resume, model_dir)
    start = ResumePoint()
    if resume:
        start = resume_from(
            resume,
            model=model,
            optimizer=None if args.evaluate else optimizer,
            scaler=scaler,
            ctx=ctx,
        )
    train_model: nn.Module = model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    # Lazy: a compilation failure shows at the first step, where the wrapper falls back to eager.
    train_model = maybe_compile(train_model, args.compile, backend=args.compile_backend)

    # ---- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args, model, data)
    train_set = SeededDataset(train_set, seed=args.seed)
    train_sampler = EpochSampler(
        len(train_set), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed
    )
    val_sampler = EpochSampler(
        len(val_set), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False
    )
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
    )
    train_loader = DataLoader(train_set, sampler=train_sampler, drop_last=True, **loader_kw)
    val_loader = DataLoader(val_set, sampler=val_sampler, **loader_kw)
    iters_per_epoch = len(train_sampler) // batch
    if iters_per_epoch == 0:
        raise ValueError(
            f"{data['train_list']} has {len(train_set)} videos, fewer than one batch of {batch} "
            "per process: lower --batch_size or add videos"
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
    if batch < min_batch:
        raise ValueError(
            f"{batch} clip per process is too few: the non-local channel gate's BatchNorm1d "
            f"needs {min_batch}; raise --batch_size (it is per node, split over its processes)"
        )
    eval_kw = dict(criterion=criterion, ctx=ctx, amp=args.amp, channels_last=args.channels_last)

    if args.evaluate:
        val = validate(model=model, loader=val_loader, **eval_kw)
        logger.info(
            "Testing Results: Prec@1 %.3f Prec@5 %.3f Loss %.5f", val.top1, val.top5, val.loss
        )
        run_log.close()
        return {"run_name": name, "val_top1": val.top1, "val_top5": val.top5, "val_loss": val.loss}

    # ---- epochs -------------------------------------------------------------------------------
    ckpt_path = os.path.join(model_dir, "ckpt.pth.tar")
    best_path = os.path.join(model_dir, "ckpt.best.pth.tar")
    best_prec1 = start.best_prec1
    end_epoch = min(args.epochs, args.stop_after_epochs or args.epochs)
    summary: dict = {"run_name": name, "model_dir": model_dir, "stopped": False}

    def save(epoch: int, iteration: int, paths: list[str]) -> None:
        # Every rank calls this: all ranks' RNG states and weight checksums go into it.
        checksums = du.all_gather_objects(param_checksum(model), ctx)
        if len(set(checksums)) > 1:
            logger.error("the DDP replicas' weights differ (checksums %s)", checksums)
        state = checkpoint_state(
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
            replica_checksums=checksums,
        )
        save_on_master(state, paths, ctx, run_log)

    stop = StopRequest().install()
    try:
        epoch, start_iter = start.epoch, start.iteration
        while epoch < end_epoch:
            train_sampler.set_epoch(epoch, start=start_iter * batch)
            train_set.set_epoch(epoch)
            if start_iter and start.rng_state is not None:
                set_rng_state(start.rng_state)  # continue the interrupted epoch's random stream
            else:
                seed_epoch(args.seed, epoch, ctx.rank)
            train = train_one_epoch(
                model=train_model,
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
                min_batch=min_batch,
            )
            if train.stopped_at is not None:  # preempted: save the exact position and leave
                save(epoch, train.stopped_at, [ckpt_path])
                logger.warning(
                    "stopped by %s at epoch %d, iteration %d/%d; saved %s (continue with --resume auto)",
                    stop.signal_name or "a signal to another rank",
                    epoch + 1,
                    train.stopped_at,
                    iters_per_epoch,
                    ckpt_path,
                )
                summary["stopped"] = True
                break
            start_iter = 0

            val = None
            if (epoch + 1) % args.eval_freq == 0 or epoch + 1 == args.epochs:
                val = validate(model=model, loader=val_loader, **eval_kw)
                summary.update(val_top1=val.top1, val_top5=val.top5)
            is_best = val is not None and (val.top1 > best_prec1 or not os.path.isfile(best_path))
            if val is not None:
                best_prec1 = max(best_prec1, val.top1)
            bad = _bad_data_counts(train_set, val_set, ctx)
            run_log.epoch(epoch + 1, train=train, val=val, best_top1=best_prec1, bad_data=bad)
            save(epoch + 1, 0, [ckpt_path] + ([best_path] if is_best else []))
            epoch += 1

            if du.all_reduce_sum(torch.tensor([float(stop.requested)]), ctx)[0] > 0:
                if epoch < args.epochs:
                    logger.warning(
                        "stopped by a signal after epoch %d; saved %s (continue with --resume auto)",
                        epoch,
                        ckpt_path,
                    )
                    summary["stopped"] = True
                break
        if not summary["stopped"] and epoch < args.epochs:
            logger.info("--stop_after_epochs %d reached: continue with --resume auto", epoch)
            summary["stopped"] = True
    finally:
        stop.uninstall()
        run_log.close()
    summary["best_prec1"] = best_prec1
    # True when every training step ran through torch.compile (False without --compile).
    summary["compiled"] = bool(getattr(train_model, "compiled", False))
    if ctx.is_main:
        logger.info(train_set.bad_data_report())
    return summary


def _bad_data_counts(train_set, val_set, ctx: du.DistContext) -> dict[str, int]:
    """Videos skipped and frames replaced so far, over all ranks and loader workers."""
    keys = ("videos_skipped", "frames_missing", "frames_unreadable")
    local = [0.0] * len(keys)
    for ds in (train_set, val_set):
        counts = ds.bad_data_counts()
        local = [a + counts.get(k, 0) for a, k in zip(local, keys)]
    total = du.all_reduce_sum(torch.tensor(local, dtype=torch.float64), ctx).tolist()
    return {
        "videos_skipped": int(total[0]),
        "frames_replaced": int(total[1] + total[2]),
    }


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
    path = os.path.join(args.root_model, name, "ckpt.best.pth.tar")
    ckpt = load_checkpoint(path)
    model = build_model_from_checkpoint(ckpt, model_config_from_checkpoint(ckpt, path))
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
    if args.available_gpus is not None and not args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.available_gpus  # before CUDA is initialised
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
    if args.gpu is not None:
        if plan.mode != "single":
            raise ValueError(
                "--gpu picks the device of a single-process run: drop it when distributed"
            )
        if not plan.use_cuda and not args.dry_run:
            raise ValueError(
                f"--gpu {args.gpu} given but no GPU is visible: drop --gpu to use the CPU"
            )
        plan.gpu = args.gpu

    if args.dry_run:
        lines = describe(args, plan, data, name) + [check_pretrained(args, dry_run=True)]
        model = TSN(**model_kwargs(args, data["num_class"], "scratch"), print_spec=False)
        n_params = sum(p.numel() for p in model.parameters())
        lines.append(f"model built: {n_params / 1e6:.2f}M parameters (weights not loaded)")
        print("\n".join(["dry run: nothing was trained or read"] + lines))
        return {"resolved": resolved_config(args, plan, data, name), "lines": lines}

    logger.info(check_pretrained(args, dry_run=False))
    torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    if plan.mode == "spawn":
        if plan.dist_url is None:
            plan.dist_url = f"tcp://127.0.0.1:{du.free_port()}"
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
