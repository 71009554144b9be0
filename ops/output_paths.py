"""No command writes over one of its inputs: the one rule every tool and main.py applies.

A command names its inputs (files and folders it reads: weights, lists, videos, category
files) and its outputs (files it writes: checkpoints, exports, scores, CSVs, reports, labelled
videos, frame folders) as ``(label, path)`` pairs, e.g. ``("--weights", "run/ckpt.pth.tar")``.
``check_outputs`` compares them before any work and raises ``PathClashError`` (one line naming
both) when

- an output is an input: the same path once resolved (``os.path.realpath``: symlinks, ``..``,
  a symlinked folder) or, where both exist, the same file (``os.stat``'s ``(st_dev, st_ino)``:
  hard links, bind mounts, another spelling on a case-insensitive disk);
- two outputs are the same file (e.g. ``{name}`` giving ``o/clip.gif`` for both ``x/clip`` and
  ``y/clip``): the second would replace the first;
- a folder the command replaces as a whole (``replaced``: a frame folder re-extracted with
  --overwrite) is an input or holds one.

A file written atomically (``ops.utils.write_atomically``) replaces a symlink rather than its
target, but other writers (``np.save``, PIL, ``open(path, "w")``) follow it; either way the path
the user named as an input no longer holds it, so both count as a clash. The comparison costs
one ``realpath`` and one ``stat`` per path (dictionaries, not pairs), so a tool may pass the
650,000 videos of Kinetics.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

# (label, path): the flag or role that names the path, e.g. "--weights" or "--out (for x/clip)"
Named = tuple[str, str | os.PathLike | None]


class PathClashError(ValueError):
    """An output of a command is one of its inputs, or another of its outputs."""


def _identity(path: str) -> tuple[str, tuple[int, int] | None]:
    """(resolved path, (device, inode) when the path exists)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # absent, a dangling link, a name the OS refuses
        return real, None
    return real, (st.st_dev, st.st_ino)


def _how(a: str, b: str) -> str:
    return "" if os.path.abspath(a) == os.path.abspath(b) else " (the same file under another name)"


def _fix(label: str) -> str:
    """What to do about a clashing output: give its flag (the label's first --word) another
    path."""
    words = label.replace("(", " ").replace(")", " ").split()
    flag = next((w for w in words if w.startswith("--")), None)
    return f"give {flag} a path of its own" if flag else "write it to a path of its own"


def check_outputs(
    inputs: Iterable[Named], outputs: Iterable[Named], replaced: Iterable[Named] = ()
) -> None:
    """Refuse (``PathClashError``) an output that is an input or another output, and a
    ``replaced`` folder that is or holds an input; paths given as None are skipped. A label
    may be empty (a positional argument): the message then shows the path alone."""
    by_path: dict[str, tuple[str, str]] = {}  # resolved path -> (shown as, path)
    by_inode: dict[tuple[int, int], tuple[str, str]] = {}
    folders_of_inputs: dict[str, tuple[str, str]] = {}  # every folder above an input
    for label, path in inputs:
        if path is None or path == "":
            continue
        path = os.fspath(path)
        real, inode = _identity(path)
        named = (f"{label} {path}" if label else path, path)
        by_path.setdefault(real, named)
        if inode is not None:
            by_inode.setdefault(inode, named)
        parent = os.path.dirname(real)
        while parent not in folders_of_inputs:
            folders_of_inputs[parent] = named
            if os.path.dirname(parent) == parent:
                break
            parent = os.path.dirname(parent)

    written_path: dict[str, tuple[str, str]] = {}
    written_inode: dict[tuple[int, int], tuple[str, str]] = {}
    for label, path, is_folder in [(*o, False) for o in outputs] + [(*r, True) for r in replaced]:
        if path is None or path == "":
            continue
        path = os.fspath(path)
        real, inode = _identity(path)
        shown = f"{label} {path}" if label else path
        source = by_path.get(real) or (by_inode.get(inode) if inode is not None else None)
        if source is not None:
            raise PathClashError(
                f"{shown} is the input {source[0]}{_how(path, source[1])}: it would be written "
                f"over; {_fix(label)}"
            )
        if is_folder and real in folders_of_inputs:
            raise PathClashError(
                f"{shown} holds the input {folders_of_inputs[real][0]}: the folder would be "
                f"replaced, deleting it; {_fix(label)}"
            )
        other = written_path.get(real) or (written_inode.get(inode) if inode is not None else None)
        if other is not None:
            raise PathClashError(
                f"{shown} and {other[0]} are the same file{_how(path, other[1])}: the second "
                "would replace the first; give each output a path of its own"
            )
        written_path[real] = (shown, path)
        if inode is not None:
            written_inode[inode] = (shown, path)


def weights_inputs(label: str, path: str | os.PathLike | None) -> list[Named]:
    """A weights file as inputs: the file and, for ``x.safetensors``, its sidecar ``x.json``
    (``ops.checkpoint.sidecar_path``), which holds the model settings."""
    if not path:
        return []
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return [(label, path), (f"{label} (its sidecar)", path[: -len(".safetensors")] + ".json")]
    return [(label, path)]
