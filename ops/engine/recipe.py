"""The optional training-recipe flags of main.py (issue 18), all off by default.

The published recipe (SGD, warmup + cosine, multi-scale crop + flip, dropout) is the default and
stays exactly so: every flag here defaults to "off", and a run with all of them off computes what
it computed before they existed. Each flag that is on is recorded in the checkpoint (with the
other args), named in the run name, and listed by `--dry_run`:

    --label_smoothing EPS        cross-entropy against (1 - EPS) one-hot + EPS / K (validation
                                 loss stays plain cross-entropy, comparable across recipes)
    --mixup A / --cutmix A       mix each clip with its partner in the batch (ops/engine/mixing.py)
    --mix_prob P                 probability that a clip pair is mixed at all
    --mix_switch_prob P          with both on: probability of CutMix rather than mixup
    --randaugment N,M            RandAugment drawn once per clip, same on every frame
                                 (ops/randaugment.py)
    --repeated_aug K             each video K times per epoch over the ranks
                                 (ops/engine/repeated_aug.py)
    --ema DECAY                  exponential moving average of the weights (ops/engine/ema.py)
    --precise_bn N               recompute BN statistics over N batches before validation
                                 (ops/engine/precise_bn.py)
"""

from __future__ import annotations

import argparse

from torch import nn

# The value of each flag that means "off" (the published recipe).
OFF: dict[str, object] = {
    "label_smoothing": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "mix_prob": 1.0,
    "mix_switch_prob": 0.5,
    "randaugment": None,
    "repeated_aug": 1,
    "ema": 0.0,
    "precise_bn": 0,
}


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


def training_criterion(args: argparse.Namespace) -> nn.Module:
    """The training loss: cross-entropy with --label_smoothing (0: plain, the published loss).
    It takes class labels or, under mixup / CutMix, class probabilities, and smooths either:
    target = (1 - EPS) * target + EPS / K."""
    return nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)


def mixing_on(args: argparse.Namespace) -> bool:
    return args.mixup > 0 or args.cutmix > 0


def active_options(args: argparse.Namespace) -> dict[str, object]:
    """The recipe flags that are on, {name: value}; mix_prob / mix_switch_prob only when they
    change something (mixing on, and both kinds on for the switch)."""
    on = {k: getattr(args, k) for k in OFF if getattr(args, k, OFF[k]) != OFF[k]}
    if not mixing_on(args):
        on.pop("mix_prob", None)
    if not (args.mixup > 0 and args.cutmix > 0):
        on.pop("mix_switch_prob", None)
    return on


# Run-name tokens of the options (`_<token><value>`), after the published part of the name.
_TOKENS = {
    "label_smoothing": "ls",
    "mixup": "mixup",
    "cutmix": "cutmix",
    "mix_prob": "mixp",
    "mix_switch_prob": "mixsw",
    "randaugment": "ra",
    "repeated_aug": "rep",
    "ema": "ema",
    "precise_bn": "pbn",
}


def run_name_part(args: argparse.Namespace) -> str:
    """'' with every option off; else e.g. '_ls0.1_ra2-9_ema0.999' (the options that are on)."""
    part = ""
    for key, value in active_options(args).items():
        text = "-".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
        part += f"_{_TOKENS[key]}{text}"
    return part


def describe_recipe(args: argparse.Namespace) -> str:
    """The --dry_run / start-of-run line: which recipe options are on."""
    on = active_options(args)
    if not on:
        return "recipe: published (no recipe option on)"
    return "recipe: published + " + ", ".join(f"--{k} {_text(v)}" for k, v in on.items())


def _text(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
