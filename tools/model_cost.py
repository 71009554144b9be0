"""Parameters and FLOPs per clip of TSN, TSM and TSM with non-local blocks.

    python tools/model_cost.py                                  # R50/R101, 8 and 16 frames, 224 px
    python tools/model_cost.py --arch resnet50 --segments 8 --size 256
    python tools/model_cost.py --weights checkpoint.pth.tar     # the network of a checkpoint

Convention (the TSM paper's): FLOPs are multiply-adds of one clip (one view: ``T`` frames at
``size x size``), so TSM-ResNet50 at 8 frames and 224 px is about 8 x 4.1 = 33 GFLOPs. Counted:

- convolutions and linear layers: ``output elements x (in_channels / groups) x kernel volume``
  (``in_features`` for a linear layer); biases are not counted;
- every other module that computes something counts itself through a ``macs(input)`` method
  (a new block without one is reported as counted only in part). The published blocks count:
- the RNL region convolution as the depthwise convolution it is: ``C' x kt*kh*kw x P`` per clip,
  not as the masked grouped convolution the published code ran (32x the arithmetic);
- the attention of the RNL and classic non-local blocks: the affinity (RNL: ``r^T r``) and the
  aggregation (RNL: ``theta A``), each ``P x P_source x C'`` (``P = T*H*W``;
  ``P_source = T*(H//2)*(W//2)`` with ``sub_sample``);
- the channel gate's attention-weighted sum over positions, ``C x P``.

Not counted (as in the papers): batch norm, activations, the softmax, pooling, additions, and the
temporal shift (a memory move). The counts come from shapes only: the network is built on the
``meta`` device (no memory, no arithmetic), so a ResNet-101 costs a fraction of a second.

Parameters: learnable ones; the region conv counts its live depthwise kernels ``C' x k^3``
(its ``live_params()``). The
published layout also stores the dead entries of the masked kernel and the fixed 0/1 mask, which
the ``stored`` column includes (the state_dict size).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ops import blocks
from ops.atomic import write_atomically
from ops.checkpoint import CheckpointError, checkpoint_info, load_checkpoint
from ops.models import TSN
from ops.non_local import attached_parts
from ops.utils import setup_logging
from tools._common import TOOL_ERRORS, fail

logger = logging.getLogger(__name__)

PUBLISHED = "TSM paper: TSM-ResNet50, 8 frames, 224 px: 33 GFLOPs and 24.3 M parameters (Kinetics)"


# ---------------------------------------------------------------------------------------------
# per-module counts (multiply-adds for one forward of the given input)
# ---------------------------------------------------------------------------------------------
def conv_macs(module: nn.modules.conv._ConvNd, out: torch.Tensor) -> int:
    """Each output element sums ``in_channels / groups x kernel volume`` products."""
    return out.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def linear_macs(module: nn.Linear, out: torch.Tensor) -> int:
    return out.numel() * module.in_features


@dataclass
class Cost:
    """MACs per kind (conv, linear, region_conv, attention, gate), of which inside non-local
    parts, and parameters (learnable live ones, and the state_dict size)."""

    macs: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    nonlocal_macs: int = 0
    params: int = 0
    stored_params: int = 0
    uncounted: list[str] = field(default_factory=list)

    @property
    def gflops(self) -> float:
        return self.macs / 1e9


def count_macs(model: nn.Module, inputs: torch.Tensor) -> Cost:
    """Run ``model(inputs)`` (no grad) with forward hooks that add up the multiply-adds.

    Convolutions and linear layers are counted from their shapes; any other module counts its own
    computation through a ``macs(input) -> {kind: multiply-adds}`` method (the region conv, the
    attention of the non-local blocks, the channel gate's weighted sum). An attached block with no
    such method anywhere inside is listed in ``uncounted``: only its convolutions count.
    """
    cost = Cost()
    in_part: set[int] = set()
    for name, part in attached_parts(model).items():
        in_part.update(id(m) for m in part.modules())
        if not any(hasattr(m, "macs") for m in part.modules()):
            cost.uncounted.append(f"{name} ({type(part).__name__})")

    def add(module: nn.Module, kind: str, macs: int) -> None:
        cost.macs += macs
        cost.by_kind[kind] = cost.by_kind.get(kind, 0) + macs
        if id(module) in in_part:
            cost.nonlocal_macs += macs

    def hook(module, args, out):
        if isinstance(module, nn.modules.conv._ConvNd):
            add(module, "conv", conv_macs(module, out))
        elif isinstance(module, nn.Linear):
            add(module, "linear", linear_macs(module, out))
        else:
            for kind, macs in module.macs(args[0]).items():
                add(module, kind, macs)

    counted = [
        m
        for m in model.modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or hasattr(m, "macs")
    ]
    handles = [m.register_forward_hook(hook) for m in counted]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    for item in cost.uncounted:
        logger.warning(
            "no FLOP counter (a macs method) in %s: only its convolutions/linear layers are counted",
            item,
        )
    return cost


def count_params(model: nn.Module) -> tuple[int, int]:
    """(learnable live parameters, all stored parameter entries incl. masks and dead entries).

    A module that stores more than it uses says how much it uses through ``live_params()`` (the
    region conv's published layout); every other parameter counts in full.
    """
    stored = sum(p.numel() for p in model.parameters())
    live = 0
    for module in model.modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        live += module.live_params() if hasattr(module, "live_params") and own else own
    return live, stored


def model_cost(cfg: dict, size: int) -> Cost:
    """Cost of one clip of ``TSN(**cfg)`` at ``size x size``, computed on the meta device."""
    # partial_bn off: every parameter counts as learnable (partial BN freezes some for training)
    cfg = dict(cfg, pretrain="scratch", print_spec=False, input_size=size, partial_bn=False)
    with torch.device("meta"):
        model = TSN(**cfg)
    model.eval()
    channels = (3 if cfg.get("modality", "RGB") == "RGB" else 2) * model.new_length
    x = torch.empty(1, cfg["num_segments"] * channels, size, size, device="meta")
    cost = count_macs(model, x)
    cost.params, cost.stored_params = count_params(model)
    return cost


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
def variants(models: list[str] | None = None) -> dict[str, dict]:
    """Name -> TSN keywords: TSN, TSM and TSM+<block> for every registered block type
    (ops/blocks.py): the published ones in the paper's order, then any other by name."""
    table = {"TSN": {"is_shift": False}, "TSM": {"is_shift": True}}
    published = ["rnl", "nl", "gc"]
    types = sorted(blocks.available())
    for nl_type in [t for t in published if t in types] + [t for t in types if t not in published]:
        table[f"TSM+{nl_type.upper()}"] = {"is_shift": True, "non_local": True, "nl_type": nl_type}
    if models:
        unknown = [m for m in models if m not in table]
        if unknown:
            raise ValueError(
                f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(table)}"
            )
        table = {m: table[m] for m in models}
    return table


def cost_rows(
    archs: list[str],
    segments: list[int],
    size: int,
    num_class: int,
    models: list[str] | None = None,
) -> list[dict]:
    rows = []
    for arch in archs:
        for t in segments:
            for name, extra in variants(models).items():
                cfg = dict(
                    num_class=num_class,
                    num_segments=t,
                    modality="RGB",
                    base_model=arch,
                    dropout=0.5,
                )
                cfg.update(extra)
                rows.append(describe(name, cfg, size))
    return rows


def describe(name: str, cfg: dict, size: int) -> dict:
    cost = model_cost(cfg, size)
    return {
        "model": name,
        "backbone": cfg["base_model"],
        "frames": cfg["num_segments"],
        "size": size,
        "params_M": cost.params / 1e6,
        "stored_params_M": cost.stored_params / 1e6,
        "GFLOPs": cost.gflops,
        "nonlocal_GFLOPs": cost.nonlocal_macs / 1e9,
        "by_kind_GFLOPs": {k: v / 1e9 for k, v in cost.by_kind.items()},
        "uncounted": cost.uncounted,
        "cost": asdict(cost),
    }


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``cost_rows``."""
    lines = [
        "| model | backbone | frames | size | params (M) | stored (M) | GFLOPs / clip | in non-local parts |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        mark = " *" if r["uncounted"] else ""
        lines.append(
            f"| {r['model']} | {r['backbone']} | {r['frames']} | {r['size']} | {r['params_M']:.2f} | "
            f"{r['stored_params_M']:.2f} | {r['GFLOPs']:.1f}{mark} | {r['nonlocal_GFLOPs']:.2f} |"
        )
    if any(r["uncounted"] for r in rows):
        lines.append("\n\\* lower bound: a block without a FLOP counter (see the log)")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Parameters and FLOPs (multiply-adds) per clip of TSN / TSM / TSM + non-local "
        "blocks, counted from shapes on the meta device.",
    )
    parser.add_argument("--arch", nargs="+", default=["resnet50", "resnet101"], help="backbones")
    parser.add_argument("--segments", nargs="+", type=int, default=[8, 16], help="frames per clip")
    parser.add_argument("--size", type=int, default=224, help="crop size in pixels")
    parser.add_argument("--num_class", type=int, default=400, help="classes (400: Kinetics)")
    parser.add_argument(
        "--models", nargs="+", default=None, help=f"subset of {', '.join(variants())}"
    )
    parser.add_argument(
        "--weights", default=None, help="cost of the network of this checkpoint instead"
    )
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging(level=logging.WARNING)
    try:
        if args.size < 32 or any(t < 1 for t in args.segments) or args.num_class < 1:
            raise ValueError("--size must be >= 32, --segments and --num_class >= 1")
        if args.weights:
            cfg = checkpoint_info(load_checkpoint(args.weights), args.weights)["model_config"]
            rows = [describe(Path(args.weights).name, cfg, args.size)]
        else:
            rows = cost_rows(args.arch, args.segments, args.size, args.num_class, args.models)
    except (*TOOL_ERRORS, CheckpointError) as exc:
        return fail(exc)
    if args.json:
        write_atomically(args.json, json.dumps(rows, indent=1))
    print(format_table(rows))
    print(f"\nFLOPs = multiply-adds per clip (one view); published: {PUBLISHED}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
