"""What a main.py command line resolves to: run name, dataset entry, model keywords, the plan.

Shared by the run itself and by `--dry_run`, which prints `describe(...)` and exits without
reading data (only a `--tune_from` checkpoint, to tell its dataset). The run name follows the
TSM / RNL main.py concatenation, so `ops.checkpoint.parse_published_name` reads the settings back
from it.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch

from archs import imagenet_weights_path, load_imagenet_state_dict
from ops import distributed as du
from ops.checkpoint import CheckpointError, missing_file_message, same_dataset
from ops.dataset_config import NO_FLIP_DATASETS, category_file, default_data_root, resolve_dataset
from ops.engine.recipe import active_options, describe_recipe, run_name_part

logger = logging.getLogger(__name__)

# Class counts of the published datasets, used only by --dry_run when the category file is absent.
PUBLISHED_CLASS_COUNTS = {"something": 174, "somethingv2": 174, "jester": 27, "ucf101": 101}


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
        name += "_dense" + ("_mmaction" if args.clip_sampling == "mmaction" else "")
    if args.non_local:
        name += "_nl" if args.nl_type == "rnl" else f"_nl_{args.nl_type}"
    name += f"_lr{args.lr}_wd{args.weight_decay:.1e}_do{args.dropout}"
    name += run_name_part(args)  # '' unless a recipe option (ops/engine/recipe.py) is on
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
        root = args.data_root or default_data_root()
        args_copy = argparse.Namespace(**vars(args))
        args_copy.num_class = PUBLISHED_CLASS_COUNTS[args.dataset]
        num_class, train_list, val_list, root_path, tmpl = resolve_dataset(args_copy, args.modality)
        note = f" (category file {category_file(args.dataset, args.modality, root)} not found: published count)"
        logger.debug("dry run without category file: %s", exc)
    return {
        "num_class": num_class,
        "train_list": train_list,
        "val_list": val_list,
        "root_path": root_path,
        "image_tmpl": tmpl,
        "note": note,
    }


# TSN keywords that main.py's flags give under the same name (TSM's main.py mapping).
SAME_NAME = (
    "num_segments", "modality", "consensus_type", "dropout", "img_feature_dim", "shift_div",
    "shift_place", "temporal_pool", "non_local", "nl_type", "nl_where", "nl_options", "input_size",
    "recompute", "checkpoint_blocks",
)  # fmt: skip
# Keywords of distributed.plan_launch that are main.py's flags of the same name.
LAUNCH_FLAGS = (
    "multiprocessing_distributed", "world_size", "rank", "dist_url", "dist_backend",
    "available_gpus", "cpu_procs",
)  # fmt: skip


def model_kwargs(args: argparse.Namespace, num_class: int, pretrain: str) -> dict:
    """TSN constructor keywords from the command line."""
    kwargs = {key: getattr(args, key) for key in SAME_NAME}
    kwargs.update(num_class=num_class, pretrain=pretrain, base_model=args.arch, is_shift=args.shift)
    kwargs.update(partial_bn=not args.no_partialbn, fc_lr5=resolve_fc_lr5(args))
    return kwargs


def plan_launch(args: argparse.Namespace) -> du.LaunchPlan:
    """How this command runs (spawn / torchrun / SLURM / single process, on which devices),
    decided before any process starts (``ops.distributed.plan_launch``), with ``--gpu``."""
    launch = {key: getattr(args, key) for key in LAUNCH_FLAGS}
    plan = du.plan_launch(**launch, num_visible_gpus=visible_gpus(args))
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
    return plan


def resolve_fc_lr5(args: argparse.Namespace) -> bool:
    """fc lr x5 / x10: --fc_lr5 if given, else on unless fine-tuning from a checkpoint of the same
    dataset (SPEC 7), by the rule that also decides whether its classifier is loaded."""
    if args.fc_lr5 is not None:
        return bool(args.fc_lr5)
    if not args.tune_from:
        return True
    if not os.path.isfile(args.tune_from):
        raise FileNotFoundError(f"--tune_from: {missing_file_message(args.tune_from)}")
    try:
        return not same_dataset(args.tune_from, args.dataset)
    except CheckpointError as exc:
        raise CheckpointError(f"--tune_from: {exc}") from None


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
        "fc_lr5": resolve_fc_lr5(args),
        "launch": plan.mode,
        "processes_per_node": plan.local_world_size,
        "nodes": plan.nodes,
        "world_size": plan.world_size,
        "backend": plan.backend,
        "sync_bn": resolve_sync_bn(args, plan),
        "batch_per_process": per_proc,
        "batch_multiplier": args.batch_multiplier,
        "total_batch": per_proc * plan.local_world_size * plan.nodes * args.batch_multiplier,
        "recipe": active_options(args),  # {} : the published recipe
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
        launch = {"torchrun": "one process of a torchrun launch", "slurm": "one SLURM task"}.get(
            plan.launcher, "one process of a manual launch (--world-size / --rank)"
        )
    else:
        launch = "single process"
    return [
        f"run name: {name}",
        f"dataset: {args.dataset} ({args.modality}), {data['num_class']} classes{data['note']}",
        f"  train list: {data['train_list']}",
        f"  val list: {data['val_list']}",
        f"  frames: {data['root_path']} / {data['image_tmpl']}",
        f"  sampling: {'dense' if args.dense_sample else 'TSN segments'}"
        f"{' (clip starts as mmaction2)' if args.clip_sampling == 'mmaction' else ''}, "
        f"{args.num_segments} segments, flip {'on' if cfg['flip'] else 'off'}",
        f"model: {args.arch}, input {args.input_size}, dropout {args.dropout}, "
        f"partial BN {'off' if args.no_partialbn else 'on'}, pretrain {args.pretrain}",
        f"  shift: {args.shift}, shift_div: {args.shift_div}, shift_place: {args.shift_place}, "
        f"temporal_pool: {args.temporal_pool}",
        f"  non_local: {args.non_local} ({args.nl_type} at "
        f"{args.nl_where or 'the published places'}, options {args.nl_options or 'default'})",
        f"optimizer: SGD lr {args.lr}, momentum {args.momentum}, weight decay {args.weight_decay}, "
        f"clip grad norm {args.clip_gradient}, fc lr x5 {cfg['fc_lr5']}",
        f"  lr_type: {args.lr_type}"
        + (f" (steps {args.lr_steps})" if args.lr_type == "step" else "")
        + f", warmup: {args.use_warmup} ({cfg['warmup_epochs']} epochs from lr/10), "
        f"epochs: {args.epochs}",
        f"distributed: {launch}, world size {plan.world_size}, nodes {plan.nodes}, "
        f"backend {plan.backend or '-'}, dist-url {plan.dist_url or '-'}, sync_bn {cfg['sync_bn']}",
        f"batch: {cfg['batch_per_process']} clips per process x {plan.local_world_size} "
        f"processes per node x {plan.nodes} nodes x batch_multiplier {args.batch_multiplier} "
        f"= total batch {cfg['total_batch']}",
        f"speed: amp {args.amp}, channels_last {args.channels_last}, compile {args.compile}, "
        f"recompute {args.recompute}, checkpoint_blocks {args.checkpoint_blocks}",
        describe_recipe(args),
        f"outputs: {os.path.join(args.root_model, name)} and {os.path.join(args.root_log, name)}",
    ]


def check_pretrained(args: argparse.Namespace, dry_run: bool) -> str:
    """Say where the backbone weights come from; a real run fetches/validates them once here."""
    if args.pretrain == "scratch":
        return "pretrain: scratch (random initialisation)"
    if args.pretrain != "imagenet":
        if not os.path.isfile(args.pretrain):
            msg = missing_file_message(args.pretrain, "--pretrain file")
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
