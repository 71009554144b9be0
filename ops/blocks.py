"""The registry of blocks that can be attached after residual blocks (``--nl_type NAME``).

A block registers its builder in its own file, the way timm registers a model:

    from ops.blocks import register_block

    @register_block("tdiff")
    def attach(channels: int, stage: int, first: bool, **_) -> dict[str, nn.Module]:
        return {"tdiff": TemporalDifference(channels)}

A builder gets the width ``channels`` of the residual block it follows, that block's ResNet
``stage`` (1..4) and whether it is the ``first`` placement, plus as keywords the run's block
settings (``--nl_options``) and the fast-path switches (``ops.non_local.FAST_PATHS``). It takes
what it uses as keyword-only arguments, whose defaults are the block's defaults, ignores the rest
(``**_``) and returns the modules to attach, by attribute name (``{"nl": ..., "cg": ...}``).

Finding the files: ``ops/non_local.py`` imports the published blocks (``ops/rnl.py``,
``ops/nl.py``, ``ops/channel_gate.py``). A name that is not registered yet makes ``builder``
import every other file of ``ops/`` that registers a block (a line of it starts with
``@register_block(``), so a new block file needs no edit anywhere else, and a checkpoint that
names its block type finds it in ``test_models.py`` and the tools as well as in ``main.py``.
A block file elsewhere registers itself when something imports it.

This module imports nothing from the project, so that block files can import it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path

BuilderFn = Callable[..., dict]
# Block type -> builder, in registration order. ops.non_local re-exports it as BLOCKS.
BLOCKS: dict[str, BuilderFn] = {}

# A decorator line that registers a block: @register_block(...) or @blocks.register_block(...)
_MARKER = re.compile(r"^\s*@(\w+\.)*register_block\(", re.MULTILINE)
_OPS = Path(__file__).resolve().parent


def register_block(name: str) -> Callable[[BuilderFn], BuilderFn]:
    """Decorator: register the decorated builder as block type ``name`` and return it unchanged.

    Two different builders under one name are refused (ValueError naming both); registering the
    same function again (a module imported twice) replaces the entry."""
    if not isinstance(name, str) or not name or not name.isidentifier():
        raise ValueError(
            f"register_block({name!r}): a block type is a name such as 'tdiff' (letters, digits, _)"
        )

    def register(builder: BuilderFn) -> BuilderFn:
        known = BLOCKS.get(name)
        if known is not None and _where(known) != _where(builder):
            raise ValueError(
                f"block type {name!r} is registered twice, by {_where(known)} and "
                f"{_where(builder)}: give one of them another name"
            )
        BLOCKS[name] = builder
        return builder

    return register


def _where(fn: BuilderFn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def block_files() -> list[str]:
    """Module names (``ops.<file>``) of the files of ``ops/`` that register a block, sorted."""
    return [
        f"ops.{path.stem}"
        for path in sorted(_OPS.glob("*.py"))
        if path.name not in ("blocks.py", "__init__.py")
        and _MARKER.search(path.read_text(encoding="utf-8"))
    ]


def import_block_files() -> None:
    """Import every block file of ``ops/`` (each registers its blocks on import)."""
    for module in block_files():
        importlib.import_module(module)


def available() -> dict[str, BuilderFn]:
    """Every registered block type, the block files of ``ops/`` included."""
    import_block_files()
    return dict(BLOCKS)


def builder(nl_type: str) -> BuilderFn:
    """The builder registered as ``nl_type``; a one-line ValueError listing the types if none."""
    if nl_type not in BLOCKS:
        import_block_files()
    if nl_type not in BLOCKS:
        raise ValueError(
            f"unknown non-local block type {nl_type!r}: choose one of {sorted(BLOCKS)} (a new "
            "block registers itself with @register_block in a file of ops/, see README's "
            "'Add your own module')"
        )
    return BLOCKS[nl_type]
