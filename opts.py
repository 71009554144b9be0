"""Command-line options of main.py.

Accepts every flag of the two training commands published with RNL verbatim (e.g.
`--dist-url 'tcp://localhost:6666' --dist-backend 'nccl' --multiprocessing-distributed
--available_gpus 0,1,2,3 --world-size 1 --rank 0 --gd 20 --shift --shift_div=8 ... --suffix 1`),
TSM's usual flags, the shared data flags of ops/dataset_config.py, and our own additions
(`--amp`, `--channels_last`, `--compile`, `--sync_bn`, `--dry_run`, ...).

Run `python main.py` with no `--dataset` for the embedded demo: `DEMO_DEFAULTS` below replace the
defaults of every flag the user did not give (so `python main.py --epochs 3 --no-shift` is the
demo with three epochs and no temporal shift, i.e. a TSN baseline).
"""

from __future__ import annotations

import argparse
import json
import math

from ops.dataset_config import add_data_args
from ops.engine.recipe import OFF
from ops.engine.timed_save import DEFAULT_MINUTES as SAVE_EVERY_MINUTES
from ops.non_local import check_block_options

# Settings of the embedded demo (`python main.py` without --dataset): a TSM+RNL ResNet-18 on the
# synthetic moving-object videos, trained from scratch on CPU in a few minutes. From scratch, the
# published fc lr x5 / x10 and lr 0.02 make the classifier overshoot (the loss climbs above
# chance), so the demo uses lr 0.004 without fc_lr5; 32 px crops keep an iteration near 0.3 s
# on 2 cores, and 750 iterations (25 epochs of 30) let TSM learn the direction of motion.
DEMO_DEFAULTS: dict[str, object] = {
    "dataset": "synthetic",
    "arch": "resnet18",
    "shift": True,
    "shift_div": 8,
    "shift_place": "blockres",
    "non_local": True,
    "num_segments": 8,
    "input_size": 32,
    "pretrain": "scratch",
    "dropout": 0.5,
    "no_partialbn": True,
    "fc_lr5": False,
    "epochs": 25,
    "batch_size": 8,
    "lr": 0.004,
    "weight_decay": 1e-4,
    "lr_type": "cos",
    "use_warmup": True,
    "warmup_epochs": 1,
    "clip_gradient": 20.0,
    "workers": 1,
    "seed": 0,
    "print_freq": 10,
    "suffix": "demo",
    # A second `python main.py` continues (or, when finished, re-evaluates) the first demo run
    # instead of being refused for its run folder; --overwrite trains it afresh.
    "resume": "auto",
}


def _json_object(text: str) -> dict:
    """argparse type of --nl_options: a JSON object (a one-line error otherwise)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}, got {text!r}")
    return value


def _randaugment(text: str) -> tuple[int, int]:
    """argparse type of --randaugment: 'N,M' (ops per clip, magnitude 0..30)."""
    try:
        n, m = (int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected N,M (ops per clip, magnitude), e.g. 2,9; got {text!r}"
        ) from None
    if n < 1 or not 0 <= m <= 30:
        raise argparse.ArgumentTypeError(f"N must be >= 1 and M in [0, 30], got {text!r}")
    return n, m


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """The recipe flags, every one off by default (OFF)."""
    g = parser.add_argument_group("recipe options (all off by default: the published recipe)")
    g.add_argument("--label_smoothing", type=float, default=OFF["label_smoothing"], metavar="EPS",
                   help="label smoothing of the training loss, e.g. 0.1")  # fmt: skip
    g.add_argument("--mixup", type=float, default=OFF["mixup"], metavar="ALPHA",
                   help="mixup with lambda ~ Beta(ALPHA, ALPHA), e.g. 0.8")  # fmt: skip
    g.add_argument("--cutmix", type=float, default=OFF["cutmix"], metavar="ALPHA",
                   help="CutMix (one box per clip pair, the same on every frame), e.g. 1.0")  # fmt: skip
    g.add_argument("--mix_prob", type=float, default=OFF["mix_prob"], metavar="P",
                   help="probability that a clip pair is mixed (with --mixup / --cutmix)")  # fmt: skip
    g.add_argument("--mix_switch_prob", type=float, default=OFF["mix_switch_prob"], metavar="P",
                   help="with both --mixup and --cutmix: probability of CutMix for a pair")  # fmt: skip
    g.add_argument("--randaugment", type=_randaugment, default=OFF["randaugment"], metavar="N,M",
                   help="RandAugment: N ops of magnitude M (0..30) per clip, the same on every "
                   "frame, e.g. 2,9")  # fmt: skip
    g.add_argument("--repeated_aug", type=int, default=OFF["repeated_aug"], metavar="K",
                   help="repeated augmentation: each sampled video K times per epoch (differently "
                   "augmented, spread over the ranks), epoch length unchanged, e.g. 2")  # fmt: skip
    g.add_argument("--ema", type=float, default=OFF["ema"], metavar="DECAY",
                   help="keep an exponential moving average of the weights, validated and saved "
                   "as ckpt.ema.pth.tar, e.g. 0.999")  # fmt: skip
    g.add_argument("--precise_bn", type=int, default=OFF["precise_bn"], metavar="N",
                   help="before each validation, recompute the BatchNorm statistics over N "
                   "training batches (PySlowFast's precise BN), e.g. 200")  # fmt: skip


def check_recipe_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One-line argparse errors for values out of range."""
    if not 0.0 <= args.label_smoothing < 1.0:
        parser.error(f"--label_smoothing must be in [0, 1), got {args.label_smoothing}")
    for flag in ("mixup", "cutmix", "ema"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag} must be >= 0 (0: off), got {getattr(args, flag)}")
    if args.ema >= 1.0:
        parser.error(f"--ema is a decay in (0, 1), e.g. 0.999; got {args.ema}")
    for flag in ("mix_prob", "mix_switch_prob"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            parser.error(f"--{flag} must be in [0, 1], got {getattr(args, flag)}")
    if args.repeated_aug < 1:
        parser.error(f"--repeated_aug must be >= 1 (1: off), got {args.repeated_aug}")
    if args.precise_bn < 0:
        parser.error(f"--precise_bn must be >= 0 batches (0: off), got {args.precise_bn}")
    if args.randaugment is not None and args.modality != "RGB":
        parser.error("--randaugment applies to RGB frames only: drop it with --modality Flow")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The parser of main.py (TSM / RNL flag names, spellings and aliases kept)."""
    parser = argparse.ArgumentParser(
        description="Train TSM / RNL video classifiers (python main.py alone runs the demo)",
        add_help=add_help,
    )

    g = parser.add_argument_group("dataset")
    g.add_argument(
        "--dataset",
        type=str,
        default=None,
        help="something | somethingv2 | jester | kinetics | ucf101 | hmdb51 | synthetic "
        "(omit it to run the embedded demo)",
    )
    g.add_argument("--modality", type=str, default="RGB", choices=["RGB", "Flow"])
    g.add_argument(
        "--dense_sample",
        action="store_true",
        help="I3D-style dense sampling (64-frame window) as for Kinetics",
    )
    g.add_argument(
        "--clip_sampling",
        default="tsm",
        choices=["tsm", "mmaction"],
        help="with --dense_sample: where clips start, as the published TSM code (tsm) or as "
        "mmaction2's SampleFrames (mmaction: its NL I3D recipe; ops/sampling.py)",
    )
    add_data_args(parser)

    g = parser.add_argument_group("model")
    g.add_argument("--arch", type=str, default="resnet50")
    g.add_argument("--num_segments", type=int, default=8)
    g.add_argument("--consensus_type", type=str, default="avg", choices=["avg"])
    g.add_argument("--img_feature_dim", type=int, default=256, help="kept for TSM compatibility")
    g.add_argument("--dropout", "--do", type=float, default=0.5, metavar="DO")
    g.add_argument(
        "--shift",
        default=False,
        action=argparse.BooleanOptionalAction,
        help="temporal shift (TSM); --no-shift gives a TSN",
    )
    g.add_argument("--shift_div", type=int, default=8, help="shift 1/shift_div of the channels")
    g.add_argument("--shift_place", type=str, default="blockres", choices=["blockres", "block"])
    g.add_argument("--temporal_pool", action="store_true")
    g.add_argument(
        "--non_local",
        default=False,
        action=argparse.BooleanOptionalAction,
        help="add the region-based non-local blocks",
    )
    g.add_argument(
        "--nl_type",
        type=str,
        default="rnl",
        metavar="TYPE",
        help="block attached by --non_local: a name in ops/non_local.py BLOCKS (rnl, nl, ...)",
    )
    g.add_argument(
        "--nl_where",
        type=str,
        default=None,
        help="comma-separated residual blocks to attach it after, e.g. layer2.0,layer3.0 "
        "(default: the published placement)",
    )
    g.add_argument(
        "--nl_options",
        type=_json_object,
        default=None,
        metavar="JSON",
        help="settings of the attached block, as a JSON object of its builder's keywords, e.g. "
        "'{\"kernels\": [[3,5,5],[3,5,5],[3,3,3],[3,3,3]]}' for RNL region kernels per stage "
        "(defaults: in the block's file; recorded in the checkpoint)",
    )
    g.add_argument(
        "--pretrain",
        type=str,
        default="imagenet",
        help="imagenet | scratch | path to a backbone state_dict file",
    )
    g.add_argument(
        "--tune_from",
        type=str,
        default=None,
        help="fine-tune from this checkpoint, .pth.tar or .safetensors (fc not loaded when the dataset differs)",
    )
    g.add_argument(
        "--fc_lr5",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="classifier lr x5 (weight) / x10 (bias); default: on unless --tune_from a "
        "checkpoint of the same dataset, as published",
    )
    g.add_argument(
        "--input_size", type=int, default=224, help="crop size (224 as published; small for demos)"
    )
    g.add_argument(
        "--no_partialbn",
        "--npb",
        action="store_true",
        help="train every BatchNorm (the published recipes pass --npb)",
    )

    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=50)
    g.add_argument(
        "--batch_size",
        "--batch-size",
        "-b",
        type=int,
        default=32,
        help="clips per node per iteration; split over the node's processes",
    )
    g.add_argument(
        "--batch_multiplier",
        type=int,
        default=1,
        help="accumulate gradients over this many iterations per optimizer step",
    )
    g.add_argument("--lr", "--learning-rate", type=float, default=0.02, dest="lr")
    g.add_argument("--lr_type", type=str, default="step", choices=["step", "cos"])
    g.add_argument(
        "--lr_steps",
        type=float,
        nargs="+",
        default=[20.0, 40.0],
        help="epochs after which the step schedule multiplies the LR by 0.1",
    )
    g.add_argument("--use_warmup", action="store_true")
    g.add_argument("--warmup_epochs", type=int, default=1)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--wd", "--weight-decay", type=float, default=5e-4, dest="weight_decay")
    g.add_argument(
        "--gd",  # first: the name one-line errors use (the published commands write --gd)
        "--clip-gradient",
        type=float,
        default=None,
        dest="clip_gradient",
        help="clip the gradient norm at this value (default: off)",
    )

    g = parser.add_argument_group("distributed")
    g.add_argument(
        "--multiprocessing-distributed",
        action="store_true",
        help="spawn one process per GPU in --available_gpus (one per --cpu_procs on CPU)",
    )
    g.add_argument(
        "--available_gpus",
        type=str,
        default=None,
        help="comma-separated GPU ids to use (sets CUDA_VISIBLE_DEVICES, unless a scheduler "
        "already set it: then its GPUs are used)",
    )
    g.add_argument(
        "--world-size", type=int, default=-1, help="number of nodes (torchrun / SLURM tell)"
    )
    g.add_argument("--rank", type=int, default=-1, help="rank of this node (torchrun / SLURM tell)")
    g.add_argument(
        "--dist-url",
        type=str,
        default=None,
        metavar="URL",
        help="rendezvous URL (default: env:// under torchrun/SLURM, a free local port otherwise)",
    )
    g.add_argument("--dist-backend", type=str, default=None, help="nccl | gloo (default: auto)")
    g.add_argument(
        "--dist_timeout",
        type=float,
        default=30.0,
        help="minutes a collective may wait for a dead or stuck rank before all ranks exit",
    )
    g.add_argument(
        "--cpu_procs",
        type=int,
        default=None,
        help="with --multiprocessing-distributed on a machine without GPUs: processes to spawn",
    )
    g.add_argument("--gpu", type=int, default=None, help="single GPU id (no data parallelism)")
    g.add_argument(
        "--sync_bn",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="convert BatchNorm to SyncBatchNorm (default: on when distributed on GPUs, "
        "as the published recipe always did; off on CPU)",
    )

    g = parser.add_argument_group("speed")
    g.add_argument("--amp", type=str, default="off", choices=["off", "fp16", "bf16"])
    g.add_argument("--channels_last", action="store_true")
    g.add_argument(
        "--recompute",
        default=True,
        action=argparse.BooleanOptionalAction,
        help="recompute BatchNorm/ReLU outputs, the temporal shift and the RNL blocks' theta and "
        "region features in the backward instead of keeping them (default: on; same results, "
        "about half the activation memory, a few %% more time)",
    )
    g.add_argument(
        "--checkpoint_blocks",
        default=False,
        action="store_true",
        help="recompute whole residual blocks in the backward (least memory, for long clips; "
        "about one more forward of the backbone per step)",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training model (falls back to eager mode with a warning where "
        "compilation fails; validation runs eager)",
    )
    g.add_argument(
        "--compile_backend",
        type=str,
        default="inductor",
        help="torch.compile backend for --compile (e.g. aot_eager to debug a compilation problem)",
    )

    add_recipe_args(parser)

    g = parser.add_argument_group("run")
    g.add_argument("--root_log", type=str, default="log")
    g.add_argument("--root_model", "--root-model", type=str, default="checkpoint")
    g.add_argument("--suffix", type=str, default=None, help="appended to the run name")
    g.add_argument(
        "--resume",
        type=str,
        default="",
        metavar="PATH",
        help="checkpoint to continue from, or 'auto' for this run's ckpt.pth.tar if it exists",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a run folder that holds a run of the same name (its checkpoints "
        "and logs are removed); without it such a folder is refused unless --resume",
    )
    g.add_argument(
        "--evaluate", "-e", action="store_true", help="only validate the --resume checkpoint"
    )
    g.add_argument("--eval-freq", "-ef", type=int, default=1, dest="eval_freq")
    g.add_argument("--print-freq", "-p", type=int, default=20, dest="print_freq")
    g.add_argument("--workers", "-j", type=int, default=8, help="data loading workers per process")
    g.add_argument(
        "--persistent_workers",
        default=True,
        action=argparse.BooleanOptionalAction,
        help="keep the loaders' worker processes between epochs (default: on; the batches are "
        "the same either way)",
    )
    g.add_argument(
        "--device_aug",
        action="store_true",
        help="training data on the device: workers only read the JPEG bytes (video files: decode) "
        "and draw the crops; decoding, crop, resize, flip and normalisation run batched on the "
        "device (ops/device_augment.py; RGB only; same crop boxes as the PIL path, resampling "
        "within 1 grey level on CPU). Validation and test_models.py stay on PIL",
    )
    g.add_argument(
        "--train_pixels",
        choices=("fast", "pil"),
        default="fast",
        help="training clips' pixels: 'fast' (default) decodes JPEGs with libjpeg-turbo through "
        "torchvision (PIL's pixels) and resizes the crops with torch's antialiased bilinear "
        "filter (within 2 grey levels of PIL's), about twice the clips/s per worker; 'pil' gives "
        "the published training pixels (PIL crop and resize). Same crop boxes and flips for the "
        "same seed; RGB (flow keeps PIL); validation and test_models.py always use PIL "
        "(ops/fast_augment.py, docs/loader_and_step.md)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of model init, sampling and dropout")
    g.add_argument(
        "--stop_after_epochs",
        type=int,
        default=None,
        help="save and exit after this many completed epochs (resume later with --resume auto)",
    )
    g.add_argument(
        "--save_every",
        type=float,
        default=SAVE_EVERY_MINUTES,
        metavar="MINUTES",
        help="also save a resumable checkpoint (ckpt.pth.tar) in the middle of an epoch every "
        "MINUTES minutes of training (fractions allowed; 0: only at the end of each epoch), so a "
        "run killed without warning (SIGKILL, a dead node) loses at most that much and continues "
        "exactly with --resume auto. Default 30: a published epoch takes hours, a save seconds. "
        "Works with every training option (multi-process runs save at the same step on all "
        "ranks, decided by rank 0's clock); --evaluate ignores it. See docs/checkpoints.md",
    )
    g.add_argument(
        "--dry_run",
        action="store_true",
        help="resolve the configuration, build the model, print the plan and exit (no data read)",
    )
    g.add_argument(
        "--no_demo_eval",
        action="store_true",
        help="demo only: skip the final multi-clip evaluation",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse `argv`; without --dataset, fill the flags the user did not give from DEMO_DEFAULTS.

    Sets `args.demo` (bool). Errors in values exit through argparse with a one-line message.
    """
    parser = get_args_parser()
    args = parser.parse_args(argv)
    args.demo = args.dataset is None
    # A second parse with every default suppressed tells which flags were given explicitly.
    explicit = argparse.Namespace()
    quiet = get_args_parser(add_help=False)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    quiet.parse_args(argv, namespace=explicit)
    given = set(vars(explicit))
    if args.demo:
        for key, value in DEMO_DEFAULTS.items():
            if key not in given and not (key == "shift" and args.arch.startswith("i3d_")):
                setattr(args, key, value)  # (the demo's temporal shift is for 2-D backbones)
        if "resume" not in given and args.overwrite:
            args.resume = ""  # the demo resumes its finished run unless told to start afresh
    check_args(parser, args, given)
    return args


# The interval of every numeric flag's values, checked by one rule at parse time (`check_ranges`):
# '[' / ']' include the bound, '(' / ')' exclude it. Float flags must also be finite, whether
# listed here or not: NaN passes no comparison (`--gd nan` used to train to a NaN loss,
# `--lr_steps nan` never decayed the LR), inf none of the useful ones. The recipe flags' own
# ranges are in ops/engine/recipe.py; relations between flags are checked below.
RANGES = {
    "num_segments": "[1, inf)",
    "epochs": "[1, inf)",
    "batch_size": "[1, inf)",
    "batch_multiplier": "[1, inf)",
    "eval_freq": "[1, inf)",
    "print_freq": "[1, inf)",
    "stop_after_epochs": "[1, inf)",
    "save_every": "[0, 1e9)",  # minutes; 0: off
    "cpu_procs": "[1, inf)",
    "num_class": "[1, inf)",
    "input_size": "[1, inf)",
    "warmup_epochs": "[0, inf)",
    "workers": "[0, inf)",
    "gpu": "[0, inf)",
    "seed": "[0, 4294967296)",  # numpy's seed range
    "world_size": "[-1, inf)",  # -1: not given
    "rank": "[-1, inf)",
    "lr": "[0, 1e30)",  # larger values overflow float32 steps
    "weight_decay": "[0, 1e30)",
    "momentum": "[0, 1)",
    "dropout": "[0, 1)",
    "clip_gradient": "(0, 1e30)",  # omit --gd to disable clipping
    "lr_steps": "[0, inf)",
    "dist_timeout": "(0, 1e9)",  # minutes; datetime.timedelta overflows beyond ~1.4e12
}


def _in_interval(value: float, interval: str) -> bool:
    low, high = (float(x) for x in interval[1:-1].split(","))
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below


def _interval_text(interval: str, is_float: bool) -> str:
    low, high = (x.strip() for x in interval[1:-1].split(","))
    if high == "inf":
        bound = f"{'>=' if interval[0] == '[' else '>'} {low}"
        return f"a finite number {bound}" if is_float else bound
    return f"a number in {interval}" if is_float else f"in {interval}"


def check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One rule for every numeric flag: a float value must be finite, and every value of a flag
    in `RANGES` must lie in its interval; else argparse's one-line error naming the flag."""
    for action in parser._actions:
        if action.type not in (int, float) or not action.option_strings:
            continue
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, list) else [value]
        interval = RANGES.get(action.dest)
        for v in values:
            if v is None:
                continue
            finite = math.isfinite(v)
            if finite and (interval is None or _in_interval(v, interval)):
                continue
            flag = action.option_strings[0]
            if interval is None:
                parser.error(f"{flag} must be a finite number, got {v}")
            parser.error(
                f"{flag} must be {_interval_text(interval, action.type is float)}, got {v}"
            )


# Flags that only mean something with another one: written without it they are refused.
NEEDS = {
    "dense_sample": ("clip_sampling",),
    "shift": ("shift_div", "shift_place"),
    "non_local": ("nl_where", "nl_options", "nl_type"),
}


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace, given: set[str]) -> None:
    """Reject inconsistent values with argparse's one-line error (exit code 2). `given`: the
    destinations of the flags written on the command line (a flag that only means something
    with another one is refused without it, rather than ignored)."""
    check_ranges(parser, args)
    if args.use_warmup and not args.warmup_epochs < args.epochs:
        parser.error(
            f"--warmup_epochs {args.warmup_epochs} must be in [0, --epochs {args.epochs}): "
            "lower it or raise --epochs"
        )
    if args.shift and args.shift_div < 3:
        parser.error(
            f"--shift_div {args.shift_div} must be >= 3: 1/shift_div of the channels shift each "
            "way, so smaller values shift no channel or all of them (8 as published)"
        )
    if args.arch.startswith("i3d_"):  # a 3-D network: no shift, RGB clips of >= 5 frames
        for flag, used in (("--shift", args.shift), ("--temporal_pool", args.temporal_pool)):
            if used:
                parser.error(f"{flag} does not apply to --arch {args.arch} (a 3-D network "
                             f"models time itself): drop {flag}")  # fmt: skip
        if args.modality != "RGB":
            parser.error(f"--arch {args.arch} takes RGB clips: drop --modality {args.modality}")
        if args.num_segments < 5:
            parser.error(f"--arch {args.arch} needs --num_segments >= 5, got {args.num_segments}")
    for needed, flags in NEEDS.items():
        unused = [f"--{k}" for k in flags if k in given]
        if unused and not getattr(args, needed):
            parser.error(f"{' '.join(unused)} given without --{needed}: add --{needed} or drop it")
    if args.device_aug and "train_pixels" in given and args.train_pixels == "pil":
        parser.error(
            "--train_pixels pil keeps PIL's training pixels, --device_aug decodes and resizes on "
            "the device: drop one"
        )
    if args.overwrite and (args.resume or args.evaluate):
        flag = "--resume" if args.resume else "--evaluate"
        parser.error(f"--overwrite starts a run afresh, {flag} uses its checkpoint: give one")
    check_recipe_args(parser, args)
    if args.non_local:
        try:
            check_block_options(args.nl_type, args.nl_options)
        except ValueError as exc:
            where = (
                f"--nl_options {json.dumps(args.nl_options)}" if args.nl_options else "--nl_type"
            )
            parser.error(f"{where}: {exc}")
    if args.available_gpus is not None:
        ids = [s.strip() for s in args.available_gpus.split(",") if s.strip()]
        if not ids or not all(s.isdigit() for s in ids):
            parser.error(
                f"--available_gpus must be comma-separated GPU ids like 0,1,2,3, "
                f"got {args.available_gpus!r}"
            )
