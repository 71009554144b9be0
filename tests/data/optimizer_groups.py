"""The optimizer groups of the published configurations (and a few variants), as a JSON reference.

    python tests/data/optimizer_groups.py     # writes tests/data/optimizer_groups.json

`optimizer_groups.json` was written by this script at commit 3aa522d, before issue 15 moved the
parameter groups from module types to `named_parameters()`; `tests/test_param_groups.py` checks
that today's code gives the same groups (names, multipliers, and the parameters of each group in
order: the order is the optimizer-state layout of a checkpoint). Do not regenerate it to make that
test pass: a difference is a change of the published training recipe.

Each configuration is built as main.py builds it (TSN keywords after the command line is
resolved; `pretrain='scratch'`, which does not change the module tree) and its groups are taken
from `TSN.get_optim_policies()` before anything else touches the model, as main.py did.
"""

from __future__ import annotations

import json
import os

from ops.models import TSN

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "optimizer_groups.json")

_R50 = dict(base_model="resnet50", is_shift=True, shift_div=8, shift_place="blockres")
_R18 = dict(base_model="resnet18", is_shift=True, shift_div=8, shift_place="blockres")
# name -> TSN keywords. The published commands pass --npb (partial BN off) and start from
# ImageNet (fc lr x5 on).
CONFIGS: dict[str, dict] = {
    "published_rnl_tsm_r50_kinetics": dict(
        num_class=400, num_segments=8, modality="RGB", **_R50, non_local=True, dropout=0.5,
        partial_bn=False, fc_lr5=True,
    ),
    "published_rnl_tsm_r50_something": dict(
        num_class=174, num_segments=8, modality="RGB", **_R50, non_local=True, dropout=0.8,
        partial_bn=False, fc_lr5=True,
    ),
    "published_tsm_r50_kinetics": dict(
        num_class=400, num_segments=8, modality="RGB", **_R50, non_local=False, dropout=0.5,
        partial_bn=False, fc_lr5=True,
    ),
    "published_rnl_tsm_r101_something": dict(
        num_class=174, num_segments=8, modality="RGB", **dict(_R50, base_model="resnet101"),
        non_local=True, dropout=0.8, partial_bn=False, fc_lr5=True,
    ),
    "rnl_r18_partial_bn": dict(
        num_class=5, num_segments=4, modality="RGB", **_R18, non_local=True, dropout=0.5,
        partial_bn=True, fc_lr5=True,
    ),
    "rnl_r18_tune_same_dataset": dict(
        num_class=5, num_segments=4, modality="RGB", **_R18, non_local=True, dropout=0.5,
        partial_bn=False, fc_lr5=False,
    ),
    "rnl_r18_temporal_pool_no_dropout": dict(
        num_class=5, num_segments=4, modality="RGB", **_R18, temporal_pool=True, non_local=True,
        dropout=0.0, partial_bn=True, fc_lr5=True,
    ),
    "tsn_r18_flow": dict(
        num_class=5, num_segments=2, modality="Flow", base_model="resnet18", dropout=0.5,
        partial_bn=True, fc_lr5=True,
    ),
    "nl_r18": dict(
        num_class=5, num_segments=4, modality="RGB", **_R18, non_local=True, nl_type="nl",
        nl_where="layer2.1,layer3.0", dropout=0.5, partial_bn=True, fc_lr5=True,
    ),
    "gc_r18": dict(
        num_class=5, num_segments=4, modality="RGB", **_R18, non_local=True, nl_type="gc",
        dropout=0.5, partial_bn=True, fc_lr5=True,
    ),
    "tsm_mobilenetv2": dict(
        num_class=5, num_segments=4, modality="RGB", base_model="mobilenetv2", is_shift=True,
        dropout=0.5, partial_bn=True, fc_lr5=True,
    ),
}  # fmt: skip


def describe_groups(model, groups: list[dict]) -> list[dict]:
    """Each group's name, multipliers and parameter names (in the group's order)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        {
            "name": g["name"],
            "lr_mult": g["lr_mult"],
            "decay_mult": g["decay_mult"],
            "params": [names[id(p)] for p in g["params"]],
        }
        for g in groups
    ]


def build(config: dict):
    return TSN(**config, pretrain="scratch", print_spec=False)


def main() -> None:
    reference = {}
    for name, config in CONFIGS.items():
        model = build(config)
        reference[name] = describe_groups(model, model.get_optim_policies())
    with open(PATH, "w") as f:
        json.dump(reference, f, indent=0)
        f.write("\n")
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
