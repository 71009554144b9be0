"""Attaching spatio-temporal blocks (RNL, channel gate, ...) after residual blocks of a 2-D ResNet.

A 2-D backbone sees ``[N*T, C, H, W]``. ``NonLocalWrapper`` runs the residual block, unfolds its
output to ``[N, C, T, H, W]``, applies the attached modules in order and folds back. The wrapped
block moves under ``.block`` and the attached modules keep their published names (``.cg`` for the
channel gate, ``.nl`` for the non-local operation), so ``layer2.0.block.conv1.net.weight`` and
``layer2.0.nl.theta.weight`` are exactly the published checkpoint keys.

``BLOCKS`` (``ops/blocks.py``) is the registry of what can be attached: a block type mapped to
a builder ``builder(channels, stage, first, **options) -> {attribute name: module}``, registered
in the block's own file with ``ops.blocks.register_block``. Every builder receives the same
options: the block settings of the run (``--nl_options``) and the fast-path switches
(``FAST_PATHS``); it takes what it uses as keyword-only arguments (their defaults are the block's
defaults) and ignores the rest (``**_``). ``block_settings`` resolves a run's settings against
those defaults; ``TSN`` records the result in its model settings, so a checkpoint rebuilds the
block it was trained with. The published blocks are imported here; a new block file in ``ops/``
is found by the registry the first time its name is asked for, so adding a block edits no other
file.

A 3-D backbone (I3D, ``archs/i3d.py``) already computes on ``[N, C, T, H, W]``: there the
wrapper has no ``n_segment`` (None) and applies the attached modules to the block's output as it
is; names, registry and settings are the same.

Placement (``where``): residual block names such as ``layer2.0``. The published placement for
ResNet-50 is ``DEFAULT_WHERE`` (every other block of res3 and res4, five in all) with the channel
gate before the first RNL block; we use the same pattern for ResNet-101 (the published code has
no placement for it) and for the BasicBlock ResNets, keeping the names that exist (resnet18 has
two blocks per stage, so only ``layer2.0`` and ``layer3.0`` remain).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence

import torch
from torch import nn

from ops import channel_gate, nl, rnl  # noqa: F401 (the published blocks register on import)
from ops.blocks import BLOCKS  # noqa: F401 (the registry, re-exported for its callers)
from ops.blocks import builder as _builder
from ops.recompute import checkpointed, keep_attention
from ops.temporal_shift import TemporalPool, TemporalShift

logger = logging.getLogger(__name__)

DEFAULT_WHERE = ("layer2.0", "layer2.2", "layer3.0", "layer3.2", "layer3.4")
# Options that change speed or memory but never the result: every builder receives them, and
# they are not part of a block's recorded settings.
FAST_PATHS = ("fused", "region_impl")


def block_settings(nl_type: str, options: dict | None = None) -> dict:
    """The settings of block type ``nl_type``: its builder's keyword-only defaults (fast paths
    excepted), updated with ``options``, as plain JSON values (tuples become lists).

    An option the builder does not take is an error, so a typo does not train the default block.
    Options the builder lists in ``recorded_if_set`` are left out while at their default.
    """
    builder = _builder(nl_type)
    params = inspect.signature(builder).parameters.values()
    defaults = {
        p.name: p.default
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in FAST_PATHS
    }
    unknown = sorted(set(options or {}) - set(defaults))
    if unknown:
        takes = ", ".join(defaults) if defaults else "no options"
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for block type {nl_type!r} "
            f"(--nl_options): it takes {takes}"
        )
    # Settings a block gained after checkpoints recorded its settings are recorded only when
    # they differ from their default, so the settings of the existing models stay as they were.
    later = getattr(builder, "recorded_if_set", ())
    settings = {**defaults, **(options or {})}
    settings = {k: v for k, v in settings.items() if k not in later or v != defaults[k]}
    return json.loads(json.dumps(settings))


def check_block_options(nl_type: str, options: dict | None = None) -> dict:
    """``block_settings``, then the block built once for each ResNet stage at a small width, so
    that settings its builder cannot use (a kernel list of the wrong length or shape, even region
    kernels) are a one-line ``ValueError`` when the command line is read, not an error in the
    middle of the first training step. Returns the settings."""
    settings = block_settings(nl_type, options)
    builder = _builder(nl_type)
    for stage in range(1, 5):
        try:
            builder(16, stage, stage == 1, **settings)
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"block type {nl_type!r} does not build with these settings: {text}"
            ) from None
    return settings


class NonLocalWrapper(nn.Module):
    """Residual block followed by spatio-temporal modules applied on ``[N, C, T, H, W]``.

    ``n_segment``: frames per clip of a 2-D backbone's ``[N*T, C, H, W]`` output, or None for a
    3-D backbone, whose block output is already ``[N, C, T, H, W]``. With ``recompute`` (set by
    ``ops.models.make_recompute``) the attached modules keep only
    their attention outputs for the backward and recompute the rest there.
    """

    def __init__(
        self, block: nn.Module, n_segment: int | None, parts: dict[str, nn.Module], where: str = ""
    ):
        super().__init__()
        self.block = block
        self.n_segment = n_segment
        self.where = where  # the residual block's name, e.g. "layer2.0"
        self.part_names = list(parts)
        for name, module in parts.items():
            self.add_module(name, module)
        self.recompute = False

    def attached(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.part_names:
            x = getattr(self, name)(x)
        return x

    def run_attached(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, T, H, W)
        if self.recompute:
            parts = [getattr(self, name) for name in self.part_names]
            return checkpointed(self.attached, parts, keep_attention, x)
        return self.attached(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)  # (N*T, C, H, W); a 3-D backbone's (N, C, T, H, W)
        if self.n_segment is None:
            return self.run_attached(x)
        nt, c, h, w = x.shape
        # the next block gets the layout this block gave: channels-last stays channels-last (the
        # result is then a view, N and T merging without a copy), anything else is contiguous
        layout = (
            torch.channels_last
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            else torch.contiguous_format
        )
        x = x.view(nt // self.n_segment, self.n_segment, c, h, w).transpose(1, 2)  # (N, C, T, H, W)
        x = self.run_attached(x)
        return x.transpose(1, 2).reshape(nt, c, h, w).contiguous(memory_format=layout)


def attached_parts(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> module of every part attached by a ``NonLocalWrapper`` in ``model``
    (e.g. ``base_model.layer2.0.nl``), in module order. Everything else is the backbone."""
    return {
        f"{name}.{part}": getattr(m, part)
        for name, m in model.named_modules()
        if isinstance(m, NonLocalWrapper)
        for part in m.part_names
    }


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Residual block name (``layer2.0``) -> the attached module that can keep its attention map
    (``store_attention``), for ``tools/visualize_attention.py``."""
    return {
        m.where: getattr(m, part)
        for m in model.modules()
        if isinstance(m, NonLocalWrapper)
        for part in m.part_names
        if hasattr(getattr(m, part), "store_attention")
    }


def _unwrap(module: nn.Module) -> nn.Module:
    while isinstance(module, (TemporalShift, TemporalPool)):
        module = module.net
    return module


def _out_channels(block: nn.Module) -> int:
    block = _unwrap(block)
    for bn in ("bn3", "bn2"):  # Bottleneck, BasicBlock
        if hasattr(block, bn):
            return getattr(block, bn).num_features
    raise ValueError(
        f"cannot tell the output width of {type(block).__name__}: expected a ResNet block"
    )


def residual_block_names(net: nn.Module) -> list[str]:
    """All ``layerX.Y`` names of a ResNet, e.g. for error messages."""
    names = []
    for stage in range(1, 5):
        layer = _unwrap(getattr(net, f"layer{stage}"))
        names += [f"layer{stage}.{i}" for i in range(len(layer))]
    return names


def make_non_local(
    net: nn.Module,
    n_segment: int | None,
    nl_type: str = "rnl",
    where: Sequence[str] | None = None,
    temporal_pool: bool = False,
    **options,
) -> None:
    """Attach block type ``nl_type`` (``BLOCKS``) after the residual blocks named in ``where`` of
    ResNet ``net``.

    ``where=None`` is the published placement (``DEFAULT_WHERE``, restricted to the blocks the
    network has). ``n_segment`` None: ``net`` is a 3-D backbone (no folding of time into the
    batch). ``temporal_pool`` must match the one given to ``make_temporal_shift``: stages
    after layer1 then see ``n_segment // 2`` frames. ``options`` (block settings and fast-path
    switches) go to the builder, which takes what it uses.
    """
    builder = _builder(nl_type)
    if not all(hasattr(net, f"layer{i}") for i in range(1, 5)):
        raise ValueError(
            f"non-local blocks need a ResNet with layer1..layer4, got {type(net).__name__}"
        )
    valid = residual_block_names(net)
    if where is None:
        where = [name for name in DEFAULT_WHERE if name in valid]
        if len(where) < len(DEFAULT_WHERE):
            logger.info(
                "non-local placement: %s (the network has no %s)",
                ",".join(where),
                ",".join(n for n in DEFAULT_WHERE if n not in valid),
            )
    else:
        bad = [name for name in where if name not in valid]
        if bad:
            raise ValueError(
                f"unknown residual block(s) {','.join(bad)} in --nl_where: valid are {','.join(valid)}"
            )
    for i, name in enumerate(sorted(set(where), key=valid.index)):
        stage, index = int(name[5]), int(name.split(".")[1])
        segments = n_segment // 2 if (temporal_pool and stage > 1 and n_segment) else n_segment
        layer = _unwrap(getattr(net, f"layer{stage}"))
        block = layer[index]
        parts = builder(_out_channels(block), stage, i == 0, **options)
        layer[index] = NonLocalWrapper(block, segments, parts, where=name)
