"""The optional training-recipe flags of main.py (issue 18), all off by default.

The published recipe (SGD, warmup + cosine, multi-scale crop + flip, dropout) is the default and
stays exactly so: every flag here defaults to "off", and a run with all of them off computes what
it computed before they existed. Each flag that is on is recorded in the checkpoint (its
`run_config`, ops/engine/config.RecipeConfig), named in the run name, and listed by `--dry_run`
(the flags themselves are opts.py's):

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

from dataclasses import dataclass

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


@dataclass(frozen=True, kw_only=True)
class RecipeConfig:
    """The recipe options, each at its `OFF` value by default (a part of the run's `RunConfig`,
    ops/engine/config.py)."""

    label_smoothing: float = OFF["label_smoothing"]
    mixup: float = OFF["mixup"]
    cutmix: float = OFF["cutmix"]
    mix_prob: float = OFF["mix_prob"]
    mix_switch_prob: float = OFF["mix_switch_prob"]
    randaugment: tuple[int, int] | None = OFF["randaugment"]
    repeated_aug: int = OFF["repeated_aug"]
    ema: float = OFF["ema"]
    precise_bn: int = OFF["precise_bn"]


def training_criterion(recipe: RecipeConfig) -> nn.Module:
    """The training loss: cross-entropy with --label_smoothing (0: plain, the published loss).
    It takes class labels or, under mixup / CutMix, class probabilities, and smooths either:
    target = (1 - EPS) * target + EPS / K."""
    return nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)


def mixing_on(recipe: RecipeConfig) -> bool:
    return recipe.mixup > 0 or recipe.cutmix > 0


def active_options(recipe: RecipeConfig) -> dict[str, object]:
    """The recipe options that are on, {name: value}; mix_prob / mix_switch_prob only when they
    change something (mixing on, and both kinds on for the switch)."""
    on = {k: getattr(recipe, k) for k in OFF if getattr(recipe, k, OFF[k]) != OFF[k]}
    if not mixing_on(recipe):
        on.pop("mix_prob", None)
    if not (recipe.mixup > 0 and recipe.cutmix > 0):
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


def run_name_part(recipe: RecipeConfig) -> str:
    """'' with every option off; else e.g. '_ls0.1_ra2-9_ema0.999' (the options that are on)."""
    part = ""
    for key, value in active_options(recipe).items():
        text = "-".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
        part += f"_{_TOKENS[key]}{text}"
    return part


def describe_recipe(recipe: RecipeConfig) -> str:
    """The --dry_run / start-of-run line: which recipe options are on."""
    on = active_options(recipe)
    if not on:
        return "recipe: published (no recipe option on)"
    return "recipe: published + " + ", ".join(f"--{k} {_text(v)}" for k, v in on.items())


def _text(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
