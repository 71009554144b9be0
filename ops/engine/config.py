"""One run, one config: what a main.py command line resolves to, decided once by the launcher.

main.py parses the flags and resolves them once (`main.resolve`) into a frozen `RunConfig`, built
before any process starts and handed to every rank; below main.py nothing reads the argparse
Namespace. The tree, one small dataclass per concern (most fields are the flags of the same
names):

    RunConfig   name (the TSM / RNL run name), demo
      data      DataConfig      the dataset entry (lists, frames, classes), sampling, device path
      model     ModelConfig     the TSN's settings, --pretrain / --tune_from
      optim     OptimConfig     SGD, fc lr x5, SyncBN and the batch per process (decided here)
      schedule  ScheduleConfig  the LR schedule (ops/engine/lr_scheduler.py)
      loop      LoopConfig      how the epochs run: seed, validation, logging, speed switches
      recipe    RecipeConfig    the optional recipe options (ops/engine/recipe.py)
      launch    LaunchConfig    how the processes start (ops/distributed.py's plan), timeout
      paths     PathsConfig     the run's folders, and --resume / --overwrite

`to_dict(cfg)` is its one serialised form: `run_config.json`, `args.txt`, the checkpoint's
`run_config` and what `--dry_run` prints are all this dict. A field whose metadata says
`execution` (the `execution()` marker) only says where or how fast the run executes: a run resumed
with other values of those is the same run (ops/engine/run_folder.py compares `defining(...)`).
Pairs of options that cannot work together are refused here (`check_combinations`), before
anything is written, with one line naming both flags.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import typing
from dataclasses import dataclass, field

import torch

from archs import imagenet_weights_path, load_imagenet_state_dict
from ops import distributed as du
from ops.checkpoint import CheckpointError, load_checkpoint, missing_file_message, same_dataset
from ops.dataset_config import (
    NO_FLIP_DATASETS,
    category_file,
    dataset_class_names,
    default_data_root,
    resolve_dataset,
)
from ops.engine.recipe import RecipeConfig, active_options, describe_recipe, run_name_part
from ops.engine.timed_save import DEFAULT_MINUTES

logger = logging.getLogger(__name__)

# Class counts of the published datasets, used only by --dry_run when the category file is absent.
PUBLISHED_CLASS_COUNTS = {"something": 174, "somethingv2": 174, "jester": 27, "ucf101": 101}


def execution(default=dataclasses.MISSING):
    """A field that says where or how fast the run executes, not what it computes: a resumed run
    may change it (a whole sub-config marked so counts as such with all its fields)."""
    return field(default=default, metadata={"execution": True})


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The dataset entry (registry + overrides, ops/dataset_config.py) and how clips are drawn."""

    dataset: str
    modality: str
    num_class: int
    image_tmpl: str
    videos: bool  # video files (--videos / --video_root), else frame folders
    dense_sample: bool
    clip_sampling: str = "tsm"  # with dense sampling: where clips start (tsm or mmaction)
    flip: bool  # horizontal flip in training (off for left/right datasets)
    device_aug: bool
    train_pixels: str = execution("fast")  # training pixels: fast (torch resize) or pil
    train_list: str = execution()
    val_list: str = execution()
    root_path: str = execution()  # frame folders, or the video folders (os.pathsep-joined)
    data_root: str = execution()
    category_file: str | None = execution(None)  # --category_file, when given
    # from the category file, stored in the checkpoints (labels are indices: names only name them)
    class_names: tuple[str, ...] | None = execution(None)
    skip_bad_lines: bool = execution(False)
    strict_data: bool = execution(False)
    note: str = execution("")  # how a dry run found the class count


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The TSN's settings (`tsn_kwargs`), and where its first weights come from."""

    arch: str
    num_segments: int
    consensus_type: str
    img_feature_dim: int
    dropout: float
    shift: bool
    shift_div: int
    shift_place: str
    temporal_pool: bool
    non_local: bool
    nl_type: str
    nl_where: str | None
    nl_options: dict | None
    input_size: int
    no_partialbn: bool
    pretrain: str
    tune_from: str | None
    # --tune_from's checkpoint was trained on this dataset: keep its classifier (and no fc
    # lr x5 by default). Read once, here; None without --tune_from.
    tune_same_dataset: bool | None
    recompute: bool = execution(True)
    checkpoint_blocks: bool = execution(False)


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """SGD and what each step sees: the batch per process and the classifier's lr x5."""

    lr: float
    momentum: float
    weight_decay: float
    clip_gradient: float | None
    fc_lr5: bool
    batch_multiplier: int
    batch_size: int = execution()  # per node, as given
    batch_per_process: int = execution()
    total_batch: int = execution()  # per optimizer step, over all processes
    sync_bn: bool = execution()


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """The LR schedule (ops/engine/lr_scheduler.WarmupSchedule takes these and lr / wd)."""

    epochs: int
    lr_type: str
    lr_steps: tuple[float, ...]
    use_warmup: bool
    warmup_epochs: int


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """How the epochs run."""

    seed: int
    eval_freq: int = execution()
    print_freq: int = execution()
    workers: int = execution()
    persistent_workers: bool = execution()
    amp: str = execution()
    channels_last: bool = execution()
    compile: bool = execution()
    compile_backend: str = execution()
    stop_after_epochs: int | None = execution()
    save_every: float = execution(DEFAULT_MINUTES)  # minutes between mid-epoch checkpoints; 0: off
    evaluate: bool = execution()
    demo_eval: bool = execution()  # the demo's final evaluation (off with --no_demo_eval)


@dataclass(frozen=True, kw_only=True)
class LaunchConfig:
    """How the processes start: ops/distributed.py's plan, made once (free port included)."""

    plan: du.LaunchPlan
    available_gpus: str | None  # the GPUs in use (a scheduler's choice wins), None: all
    dist_timeout: float  # minutes


@dataclass(frozen=True, kw_only=True)
class PathsConfig:
    """The run's folders and what this invocation does with them."""

    root_model: str
    root_log: str
    model_dir: str
    log_dir: str
    resume: str
    overwrite: bool


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything one run is, resolved once (see the module docstring)."""

    name: str
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    loop: LoopConfig
    recipe: RecipeConfig
    launch: LaunchConfig = execution()
    paths: PathsConfig = execution()
    demo: bool = execution(False)


# --------------------------------------------------------------------------------------------
# Serialised form, and the part that defines a run
# --------------------------------------------------------------------------------------------


def to_dict(cfg: RunConfig) -> dict:
    """The one serialised form (nested dicts; tuples stay tuples until written as JSON)."""
    return dataclasses.asdict(cfg)


def to_json(cfg: RunConfig) -> str:
    return json.dumps(to_dict(cfg), indent=1, sort_keys=True)


def execution_paths(cls: type = RunConfig, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The key paths (e.g. ('loop', 'workers')) of the execution-only fields of `cls`."""
    hints = typing.get_type_hints(cls)
    found = set()
    for f in dataclasses.fields(cls):
        path = prefix + (f.name,)
        if f.metadata.get("execution"):
            found.add(path)
        elif dataclasses.is_dataclass(hints[f.name]):
            found |= execution_paths(hints[f.name], path)
    return found


def defining(serialised: dict) -> dict:
    """A serialised RunConfig (`to_dict`, or read back from JSON) without its execution-only
    fields, as JSON values (tuples as lists): what must match for a run to be continued."""
    plain = json.loads(json.dumps(serialised, default=str))
    for path in execution_paths():
        node = plain
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return plain


def is_serialised(stored: object) -> bool:
    """Whether `stored` (a run_config.json's contents) is a serialised RunConfig, not the flat
    flag dict written before RunConfig existed."""
    return isinstance(stored, dict) and all(
        isinstance(stored.get(k), dict) for k in ("data", "model", "optim")
    )


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """`{'loop.seed': 0, ...}`: the leaves of a serialised RunConfig by their dotted paths (a
    setting whose value is a dict, --nl_options, is one leaf)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "nl_options":
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --------------------------------------------------------------------------------------------
# Resolution steps (plain values in, parts of the config out)
# --------------------------------------------------------------------------------------------


def resolve_data(
    dataset: str,
    modality: str,
    overrides: dict,
    *,
    dense_sample: bool,
    clip_sampling: str = "tsm",
    device_aug: bool,
    train_pixels: str = "fast",
    skip_bad_lines: bool,
    strict_data: bool,
    dry_run: bool,
) -> DataConfig:
    """The dataset entry (`resolve_dataset` with `overrides`: its keyword flags) and the class
    names; a dry run without the category file falls back on the published class count."""
    root = overrides.get("data_root") or default_data_root()
    overrides = dict(overrides, data_root=root)
    note = ""
    try:
        entry = resolve_dataset(dataset, modality, **overrides)
    except FileNotFoundError as exc:
        # Only the category file is read here; a dry run may lack it.
        if not dry_run or dataset not in PUBLISHED_CLASS_COUNTS:
            raise
        entry = resolve_dataset(
            dataset, modality, **dict(overrides, num_class=PUBLISHED_CLASS_COUNTS[dataset])
        )
        missing = category_file(dataset, modality, root)
        note = f" (category file {missing} not found: published count)"
        logger.debug("dry run without category file: %s", exc)
    num_class, train_list, val_list, root_path, tmpl = entry
    names = None if note else class_names(dataset, modality, overrides, num_class)
    return DataConfig(
        dataset=dataset,
        modality=modality,
        num_class=num_class,
        image_tmpl=tmpl,
        videos=bool(overrides.get("videos") or overrides.get("video_root")),
        dense_sample=dense_sample,
        clip_sampling=clip_sampling,
        flip=dataset not in NO_FLIP_DATASETS,
        device_aug=device_aug,
        train_pixels=train_pixels,
        class_names=tuple(names) if names else None,
        train_list=train_list,
        val_list=val_list,
        root_path=root_path,
        data_root=root,
        category_file=overrides.get("category_file"),
        skip_bad_lines=skip_bad_lines,
        strict_data=strict_data,
        note=note,
    )


def class_names(dataset: str, modality: str, overrides: dict, num_class: int) -> list | None:
    """The class names the checkpoints store (tools/predict.py names its classes with them)."""
    return dataset_class_names(
        dataset, modality, overrides["data_root"], overrides.get("category_file"), num_class
    )


def tune_same_dataset(tune_from: str | None, dataset: str) -> bool | None:
    """Whether the --tune_from checkpoint was trained on `dataset` (the one read of that file
    in the launcher; SPEC 7's rule for its classifier and for fc lr x5); None without it."""
    if not tune_from:
        return None
    if not os.path.isfile(tune_from):
        raise FileNotFoundError(f"--tune_from: {missing_file_message(tune_from)}")
    try:
        return same_dataset(tune_from, dataset, load_checkpoint(tune_from))
    except CheckpointError as exc:
        raise CheckpointError(f"--tune_from: {exc}") from None


def resolve_fc_lr5(fc_lr5: bool | None, same: bool | None) -> bool:
    """fc lr x5 / x10: the flag if given, else on unless fine-tuning from a checkpoint of the
    same dataset (SPEC 7)."""
    if fc_lr5 is not None:
        return bool(fc_lr5)
    return not same


def resolve_sync_bn(sync_bn: bool | None, plan: du.LaunchPlan) -> bool:
    """--sync_bn default: on when distributed over GPUs (as the published recipe), else off;
    on CPU --sync_bn is ignored with a warning (SyncBatchNorm needs GPUs)."""
    if sync_bn and not plan.use_cuda:
        logger.warning("--sync_bn ignored: SyncBatchNorm needs GPUs, keeping BatchNorm on CPU")
        return False
    if sync_bn is not None:
        return bool(sync_bn)
    return plan.mode != "single" and plan.use_cuda


# The keywords of ops.distributed.plan_launch, main.py flags of the same names.
LAUNCH_FLAGS = (
    "multiprocessing_distributed", "world_size", "rank", "dist_url", "dist_backend",
    "available_gpus", "cpu_procs",
)  # fmt: skip


def plan_launch(launch_flags: dict, *, gpu: int | None, dry_run: bool) -> du.LaunchPlan:
    """How this command runs (spawn / torchrun / SLURM / single process, on which devices),
    decided before any process starts (``ops.distributed.plan_launch``), with ``--gpu``; a
    single-node spawn gets a free local rendezvous port (the published localhost port may be
    another run's)."""
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = launch_flags.get("available_gpus")
    if dry_run and visible == 0 and gpus:  # as many as --available_gpus names
        visible = len([s for s in gpus.split(",") if s.strip()])
    plan = du.plan_launch(**launch_flags, num_visible_gpus=visible)
    if gpu is not None:
        if plan.mode != "single":
            raise ValueError(
                "--gpu picks the device of a single-process run: drop it when distributed"
            )
        if not plan.use_cuda and not dry_run:
            raise ValueError(f"--gpu {gpu} given but no GPU is visible: drop --gpu to use the CPU")
        plan = dataclasses.replace(plan, gpu=gpu)
    if plan.mode == "spawn" and plan.nodes == 1 and not dry_run:
        plan = dataclasses.replace(plan, dist_url=du.local_rendezvous(plan.dist_url))
    return plan


def run_name(
    *,
    dataset: str,
    modality: str,
    arch: str,
    shift: bool,
    shift_div: int,
    shift_place: str,
    temporal_pool: bool,
    consensus_type: str,
    num_segments: int,
    epochs: int,
    pretrain: str,
    lr_type: str,
    dense_sample: bool,
    clip_sampling: str = "tsm",
    non_local: bool,
    nl_type: str,
    lr: float,
    weight_decay: float,
    dropout: float,
    recipe: RecipeConfig,
    suffix: str | None,
) -> str:
    """TSM / RNL run naming, e.g. TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e100_cos
    _dense_nl_lr0.02_wd2.0e-04_do0.5_1 (ops.checkpoint.parse_published_name reads it back)."""
    if shift:
        arch += f"_shift{shift_div}_{shift_place}"
    if temporal_pool:
        arch += "_tpool"
    parts = ["TSM", dataset, modality, arch, consensus_type]
    name = "_".join(parts + [f"segment{num_segments}", f"e{epochs}"])
    if pretrain != "imagenet":
        stem = os.path.splitext(os.path.basename(pretrain.rstrip("/")))[0]
        name += f"_{stem.replace('_', '-')}"
    if lr_type != "step":
        name += f"_{lr_type}"
    if dense_sample:
        name += "_dense" + ("_mmaction" if clip_sampling == "mmaction" else "")
    if non_local:
        name += "_nl" if nl_type == "rnl" else f"_nl_{nl_type}"
    name += f"_lr{lr}_wd{weight_decay:.1e}_do{dropout}"
    name += run_name_part(recipe)  # '' unless a recipe option (ops/engine/recipe.py) is on
    if suffix is not None:
        name += f"_{suffix}"
    return name


# The flags run_name takes under their own names (all but `recipe`).
NAME_FLAGS = (
    "dataset", "modality", "arch", "shift", "shift_div", "shift_place", "temporal_pool",
    "consensus_type", "num_segments", "epochs", "pretrain", "lr_type", "dense_sample",
    "clip_sampling", "non_local", "nl_type", "lr", "weight_decay", "dropout", "suffix",
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# What the config means for the model
# --------------------------------------------------------------------------------------------

# TSN keywords that are ModelConfig fields of the same name (TSM's main.py mapping).
SAME_NAME = (
    "num_segments", "consensus_type", "dropout", "img_feature_dim", "shift_div",
    "shift_place", "temporal_pool", "non_local", "nl_type", "nl_where", "nl_options", "input_size",
    "recompute", "checkpoint_blocks",
)  # fmt: skip


def tsn_kwargs(cfg: RunConfig, pretrain: str | None = None) -> dict:
    """The TSN constructor keywords of the run (`pretrain`: instead of the run's)."""
    pretrain = cfg.model.pretrain if pretrain is None else pretrain
    return model_kwargs(cfg.model, cfg.data.num_class, cfg.data.modality, pretrain, cfg.optim.fc_lr5)


def model_kwargs(
    m: ModelConfig, num_class: int, modality: str, pretrain: str, fc_lr5: bool
) -> dict:
    """The TSN constructor keywords of model settings `m` (TSM's main.py mapping)."""
    kwargs = {key: getattr(m, key) for key in SAME_NAME}
    kwargs.update(num_class=num_class, modality=modality, pretrain=pretrain, base_model=m.arch)
    kwargs.update(is_shift=m.shift, partial_bn=not m.no_partialbn, fc_lr5=fc_lr5)
    return kwargs


# --------------------------------------------------------------------------------------------
# Options that cannot work together
# --------------------------------------------------------------------------------------------


def check_combinations(cfg: RunConfig) -> None:
    """Refuse, in one line naming both flags and what to use instead, the pairs of options
    that cannot work together (before anything is read or written)."""
    if cfg.data.device_aug and cfg.recipe.randaugment is not None:
        raise ValueError(
            "--device_aug cannot run --randaugment (RandAugment works on the PIL frames in the "
            "loader workers, --device_aug crops on the device): drop --device_aug to use "
            "--randaugment, or drop --randaugment"
        )
    if cfg.loop.amp == "fp16" and not cfg.launch.plan.use_cuda:
        raise ValueError("--amp fp16 needs a GPU: use --amp bf16 on CPU, or --amp off")
    if cfg.data.device_aug and cfg.data.modality != "RGB":
        raise ValueError(
            f"--device_aug decodes RGB frames only, not --modality {cfg.data.modality} (its "
            "flips would have to invert the x images): drop --device_aug"
        )


# --------------------------------------------------------------------------------------------
# Text: the dry run and the start of a run
# --------------------------------------------------------------------------------------------


def describe(cfg: RunConfig) -> list[str]:
    """The resolved configuration as text, printed by --dry_run and logged when a run starts."""
    plan, d, m, o, s = cfg.launch.plan, cfg.data, cfg.model, cfg.optim, cfg.schedule
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
    warmup = s.warmup_epochs if s.use_warmup else 0
    return [
        f"run name: {cfg.name}",
        f"dataset: {d.dataset} ({d.modality}), {d.num_class} classes{d.note}",
        f"  train list: {d.train_list}",
        f"  val list: {d.val_list}",
        f"  frames: {d.root_path} / {d.image_tmpl}",
        f"  sampling: {'dense' if d.dense_sample else 'TSN segments'}"
        f"{' (clip starts as mmaction2)' if d.clip_sampling == 'mmaction' else ''}, "
        f"{m.num_segments} segments, flip {'on' if d.flip else 'off'}",
        f"model: {m.arch}, input {m.input_size}, dropout {m.dropout}, "
        f"partial BN {'off' if m.no_partialbn else 'on'}, pretrain {m.pretrain}",
        f"  shift: {m.shift}, shift_div: {m.shift_div}, shift_place: {m.shift_place}, "
        f"temporal_pool: {m.temporal_pool}",
        f"  non_local: {m.non_local} ({m.nl_type} at "
        f"{m.nl_where or 'the published places'}, options {m.nl_options or 'default'})",
        f"optimizer: SGD lr {o.lr}, momentum {o.momentum}, weight decay {o.weight_decay}, "
        f"clip grad norm {o.clip_gradient}, fc lr x5 {o.fc_lr5}",
        f"  lr_type: {s.lr_type}"
        + (f" (steps {list(s.lr_steps)})" if s.lr_type == "step" else "")
        + f", warmup: {s.use_warmup} ({warmup} epochs from lr/10), epochs: {s.epochs}",
        f"distributed: {launch}, world size {plan.world_size}, nodes {plan.nodes}, "
        f"backend {plan.backend or '-'}, dist-url {plan.dist_url or '-'}, sync_bn {o.sync_bn}",
        f"batch: {o.batch_per_process} clips per process x {plan.local_world_size} "
        f"processes per node x {plan.nodes} nodes x batch_multiplier {o.batch_multiplier} "
        f"= total batch {o.total_batch}",
        f"speed: amp {cfg.loop.amp}, channels_last {cfg.loop.channels_last}, compile "
        f"{cfg.loop.compile}, recompute {m.recompute}, checkpoint_blocks {m.checkpoint_blocks}",
        describe_recipe(cfg.recipe),
        f"outputs: {cfg.paths.model_dir} and {cfg.paths.log_dir}",
    ]


def check_pretrained(pretrain: str, arch: str, dry_run: bool) -> str:
    """Say where the backbone weights come from; a real run fetches/validates them once here."""
    if pretrain == "scratch":
        return "pretrain: scratch (random initialisation)"
    if pretrain != "imagenet":
        if not os.path.isfile(pretrain):
            msg = missing_file_message(pretrain, "--pretrain file")
            if dry_run:
                return f"pretrain: {msg}"
            raise FileNotFoundError(f"{msg}: pass an existing state_dict, imagenet or scratch")
        return f"pretrain: {pretrain}"
    path = imagenet_weights_path(arch)
    if os.path.isfile(path):
        return f"pretrain: ImageNet weights found at {path}"
    if dry_run:
        return (
            f"pretrain: ImageNet weights NOT found at {path}: a real run downloads them if it can, "
            "else provide that file or pass --pretrain PATH|scratch"
        )
    load_imagenet_state_dict(arch)  # downloads once, or raises naming the file to provide
    return f"pretrain: ImageNet weights at {path}"


__all__ = [
    "DataConfig", "LaunchConfig", "LoopConfig", "ModelConfig", "OptimConfig", "PathsConfig",
    "RecipeConfig", "RunConfig", "ScheduleConfig", "active_options", "check_combinations",
    "defining", "describe", "execution", "to_dict", "tsn_kwargs",
]  # fmt: skip
