"""Optimizer parameter groups of a TSN, built from ``named_parameters()``.

The published recipe gives every parameter group its own multipliers of the learning rate and the
weight decay (``lr_mult``, ``decay_mult``; ``ops/engine/lr_scheduler.py`` applies them). Every
trainable parameter (``requires_grad``) lands in exactly one group, by the first rule that
matches it:

1. A module that holds it declares its group in ``optim_groups``, a dict from parameter names
   relative to that module to group names (the outermost declaring module wins). The published
   blocks use it for the published recipe's quirks (``ops/rnl.py``, ``ops/channel_gate.py``).
2. It belongs to a block attached after a residual block (``ops/non_local.py``), whatever the
   block and its attribute name: a parameter named ``bias`` goes to ``nl_bias`` (lr x2, no decay),
   any other (a conv or linear weight, a norm's scale, a bare ``nn.Parameter``) to ``nl_weight``.
3. The backbone's first convolution: ``first_conv_weight`` / ``first_conv_bias``.
4. The classifier (``new_fc``, or the backbone's last layer when ``dropout=0``) with ``fc_lr5``:
   ``lr5_weight`` / ``lr10_bias``.
5. A BatchNorm's scale and shift: ``bn`` (no decay).
6. A convolution's or linear layer's weight / bias: ``normal_weight`` / ``normal_bias``.
7. Anything else in the backbone (e.g. a parameter a new backbone layer registers directly):
   ``custom_ops`` (lr x1, decay x1), the group TSM kept for "custom operators". It is empty for
   the published models, but stays in the list so that a published checkpoint's optimizer state
   (ten groups, in this order) loads.

Frozen parameters are in no group: partial BN's frozen backbone BNs and the region conv's fixed
mask (``requires_grad=False``). ``check_param_groups`` verifies the result at run time.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ops.non_local import attached_parts

# name -> (lr_mult, decay_mult), in the published order (the optimizer-state layout).
GROUPS: dict[str, tuple[float, float]] = {
    "first_conv_weight": (1, 1),
    "first_conv_bias": (2, 0),
    "normal_weight": (1, 1),
    "normal_bias": (2, 0),
    "bn": (1, 0),
    "custom_ops": (1, 1),
    "nl_weight": (1, 1),
    "nl_bias": (2, 0),
    "lr5_weight": (5, 1),
    "lr10_bias": (10, 0),
}
FLOW_FIRST_CONV = {"first_conv_weight": (5, 1), "first_conv_bias": (10, 0)}  # TSN's flow recipe


def param_groups(
    model: nn.Module, classifier: nn.Module | None, fc_lr5: bool, flow: bool = False
) -> list[dict]:
    """The groups of ``model`` as ``torch.optim`` expects them (``params``, ``lr_mult``,
    ``decay_mult``, ``name``); ``classifier`` is the final linear layer (the ``fc_lr5`` rule)."""
    modules = dict(model.named_modules())
    parts = tuple(f"{name}." for name in attached_parts(model))
    first_conv = next((m for m in model.modules() if isinstance(m, _ConvNd)), None)
    groups: dict[str, list[nn.Parameter]] = {name: [] for name in GROUPS}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = modules[owner_name]
        group = _declared(name, modules)
        if group is None:
            kind = "bias" if attr == "bias" else "weight"
            if name.startswith(parts):
                group = f"nl_{kind}"
            elif owner is first_conv:
                group = f"first_conv_{kind}"
            elif owner is classifier and fc_lr5:
                group = "lr5_weight" if kind == "weight" else "lr10_bias"
            elif isinstance(owner, _BatchNorm):
                group = "bn"
            elif isinstance(owner, (_ConvNd, nn.Linear)):
                group = f"normal_{kind}"
            else:
                group = "custom_ops"
        groups[group].append(p)
    mults = dict(GROUPS, **(FLOW_FIRST_CONV if flow else {}))
    return [
        {"params": params, "lr_mult": mults[k][0], "decay_mult": mults[k][1], "name": k}
        for k, params in groups.items()
    ]


def _declared(name: str, modules: dict[str, nn.Module]) -> str | None:
    """The group that a module holding parameter ``name`` declares in ``optim_groups``."""
    pieces = name.split(".")
    for i in range(len(pieces)):  # outermost module first
        declared = getattr(modules[".".join(pieces[:i])], "optim_groups", None)
        relative = ".".join(pieces[i:])
        if declared and relative in declared:
            if declared[relative] not in GROUPS:
                raise ValueError(
                    f"{type(modules['.'.join(pieces[:i])]).__name__}.optim_groups puts {relative} "
                    f"in {declared[relative]!r}, which is not a group: choose one of "
                    f"{', '.join(GROUPS)}"
                )
            return declared[relative]
    return None


def check_param_groups(model: nn.Module, groups: list[dict]) -> None:
    """Raise ValueError naming the first trainable parameter of ``model`` that is in no group or
    in several, or a grouped parameter that does not belong to ``model`` or does not train."""
    names = {id(p): name for name, p in model.named_parameters()}
    seen: dict[int, str] = {}
    for group in groups:
        for p in group["params"]:
            if id(p) not in names:
                raise ValueError(
                    f"optimizer group {group['name']!r} holds a parameter that is not the model's"
                )
            if not p.requires_grad:
                raise ValueError(
                    f"{names[id(p)]} is frozen (requires_grad=False) but in optimizer group "
                    f"{group['name']!r}"
                )
            if id(p) in seen:
                raise ValueError(
                    f"{names[id(p)]} is in two optimizer groups, {seen[id(p)]!r} and "
                    f"{group['name']!r}: give it one (ops/param_groups.py)"
                )
            seen[id(p)] = group["name"]
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            raise ValueError(
                f"{name} trains (requires_grad) but is in no optimizer group, so it would never "
                "change: see the rules in ops/param_groups.py"
            )
