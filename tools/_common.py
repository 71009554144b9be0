"""Helpers shared by the scripts in tools/ (and only by them).

- ``TOOL_ERRORS`` / ``fail``: the exceptions that mean "bad input" and the one-line message a tool
  prints for them before exiting with status 2 (no traceback). Tools that read checkpoints add
  ``ops.checkpoint.CheckpointError`` (and load them with ``ops.model_loading.load_model``).
- ``frame_pattern`` / ``count_frames``: how many frames of a frame-name template a folder holds,
  as the frame-folder dataset will read them (1..n, no gap); ``frame_template``: the template of
  a frame folder, detected among the registry's when not given.
- ``model_class_names``: the names of a model's classes (``--category_file``, else stored in the
  checkpoint, else the category file of its dataset).
- ``remove_stale_partials``: the temporary outputs (``.<name>.partial-<host>-<pid>-*``) that a
  killed run of tools/extract_frames.py or tools/pack_frames.py left beside its final output.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import string
import sys
import time
from collections.abc import Iterable

from ops.dataset_config import REGISTRY, dataset_class_names, read_categories
from ops.packed_frames import PARTIAL  # temporary outputs: ops.packed_frames.partial_name

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".flv", ".mpg", ".mpeg")

# Exceptions a tool reports as a one-line error (exit status 2) instead of a traceback.
TOOL_ERRORS = (ValueError, OSError)


def fail(exc: BaseException) -> int:
    """Print ``error: <message>`` (one line) on stderr and return the exit status 2."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    print(f"error: {message}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------------------------
# frame folders
# ---------------------------------------------------------------------------------------------
def frame_pattern(image_tmpl: str) -> re.Pattern:
    """Regex matching the file names of ``image_tmpl`` (one integer field, e.g. ``img_{:05d}.jpg``);
    group 1 is the frame number. ``count_frames`` also checks that the name is exactly
    ``image_tmpl.format(number)``."""
    try:
        fields = list(string.Formatter().parse(image_tmpl))
        image_tmpl.format(1)
    except (ValueError, IndexError, KeyError) as exc:
        raise ValueError(
            f"frame template {image_tmpl!r} is not a format string with one integer field ({exc})"
        ) from None
    if sum(1 for _, field, _, _ in fields if field is not None) != 1:
        raise ValueError(
            f"frame template {image_tmpl!r} must have exactly one field for the frame number, "
            "e.g. 'img_{:05d}.jpg'"
        )
    parts = [
        re.escape(literal) + (r"(\d+)" if field is not None else "")
        for literal, field, _, _ in fields
    ]
    return re.compile("".join(parts) + r"\Z")


def count_frame_names(names: Iterable[str], image_tmpl: str) -> tuple[int, int]:
    """``(usable, found)`` frames of ``image_tmpl`` among the file ``names`` of one folder.

    ``found`` counts the names that are exactly ``image_tmpl.format(k)``; ``usable`` is the length
    of the run 1, 2, ... n without a gap, i.e. what a list file may claim so that the dataset finds
    every frame. The two differ when frames are missing in the middle (or numbering starts at 0).
    """
    pattern = frame_pattern(image_tmpl)
    numbers = set()
    for name in names:
        m = pattern.match(name)
        if m and image_tmpl.format(int(m.group(1))) == name:
            numbers.add(int(m.group(1)))
    usable = 0
    while usable + 1 in numbers:
        usable += 1
    return usable, len(numbers)


def count_frames(folder: str, image_tmpl: str) -> tuple[int, int]:
    """``count_frame_names`` of the files in ``folder``."""
    with os.scandir(folder) as entries:
        return count_frame_names((e.name for e in entries), image_tmpl)


# The RGB frame names of the registered datasets (img_{:05d}.jpg, {:05d}.jpg, {:06d}.jpg): a
# name matches at most one of them, as the number of digits differs.
RGB_TEMPLATES = tuple(
    sorted({e["image_tmpl"] for d in REGISTRY.values() for e in d.values() if e is d.get("RGB")})
)


def frame_template(folder: str, image_tmpl: str | None = None) -> str:
    """The frame-name template of a frame folder: ``image_tmpl`` when given, else the registry's
    RGB template that numbers the longest run of frames 1..n in it (FileNotFoundError, saying to
    pass --image_tmpl, when none names a frame 1)."""
    if image_tmpl:
        frame_pattern(image_tmpl)  # a one-line ValueError for a template that is not one
        return image_tmpl
    with os.scandir(folder) as entries:
        names = [e.name for e in entries]
    return frame_template_of(names, folder)


def frame_template_of(names: Iterable[str], where: str) -> str:
    """The registry's RGB template that numbers the longest run of frames 1..n among the file
    ``names`` of ``where`` (a folder or a packed file), as ``frame_template``."""
    names = list(names)
    usable = {t: count_frame_names(names, t)[0] for t in RGB_TEMPLATES}
    best = max(RGB_TEMPLATES, key=lambda t: usable[t])
    if usable[best] == 0:
        raise FileNotFoundError(
            f"no frames named like {', '.join(RGB_TEMPLATES)} (numbered from 1) in {where}: "
            "pass --image_tmpl, e.g. 'frame_{:04d}.png'"
        )
    return best


def model_class_names(
    meta: dict,
    num_class: int,
    category_file: str | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
) -> list[str] | None:
    """Names of a model's ``num_class`` classes: the ``category_file`` given (ValueError when it
    does not name ``num_class`` classes), else the names the checkpoint stores (``meta`` from
    ``load_model``), else the registered category file of ``dataset`` (default: the
    checkpoint's) under ``data_root``; None when there is none."""
    if category_file is not None:
        names = read_categories(category_file)
        if len(names) != num_class:
            raise ValueError(
                f"--category_file {category_file} names {len(names)} classes but the model has "
                f"{num_class}: give the category file of the dataset it was trained on"
            )
        return names
    if meta.get("class_names"):
        return list(meta["class_names"])
    return dataset_class_names(dataset or meta.get("dataset"), "RGB", data_root, None, num_class)


# ---------------------------------------------------------------------------------------------
# temporary outputs
# ---------------------------------------------------------------------------------------------
def partial_prefix(name: str) -> str:
    """Prefix of the temporary outputs of the final output ``name``: ``.<name>.partial-``,
    followed by ``<host>-<pid>-<random>``."""
    return f".{name}{PARTIAL}"


STALE_SECONDS = 3600  # a temporary output of another host, untouched this long, is abandoned


def owner_alive(partial_name: str, name: str, path: str | None = None) -> bool:
    """Whether the process that writes this temporary output still runs: on this host, whether
    its pid lives; on another host (a shared file system), whether ``path`` was modified within
    ``STALE_SECONDS``."""
    tag = partial_name[len(partial_prefix(name)) :]  # <host>-<pid>-<random>
    host, _, pid_text = tag.rpartition("-")[0].rpartition("-")
    if host != socket.gethostname() or not pid_text.isdigit():
        if path is None or not host:
            return False
        try:
            return time.time() - os.lstat(path).st_mtime < STALE_SECONDS
        except OSError:
            return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _really_runs(pid, path)


def _really_runs(pid: int, path: str | None) -> bool:
    """Whether a pid that ``kill(pid, 0)`` finds is a running owner, not a zombie and not a later
    process that reused the pid (Linux ``/proc``; elsewhere the pid is trusted). A killed
    writer's worker stays a zombie where nothing reaps orphans (a container whose pid 1 is not
    an init), and ``kill(pid, 0)`` succeeds on a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()  # after "pid (comm)"; comm may hold spaces
    except OSError:
        return True  # no /proc (macOS) or not readable: trust the pid
    if fields[0] in ("Z", "X"):  # zombie or dead: exited, not yet reaped
        return False
    if path is None:
        return True
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        started = boot + int(fields[19]) / ticks  # field 22 of stat: start time since boot
        modified = os.lstat(path).st_mtime
    except (OSError, ValueError, StopIteration, IndexError):
        return True
    # The owner started before it wrote its file; a process started after the file's last
    # change (2 s for btime's whole seconds) has only reused the pid.
    return started <= modified + 2.0


def _remove_partial(path: str) -> bool:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
        return True
    try:
        os.remove(path)
        return True
    except OSError:
        return False


def remove_stale_partials(parent: str, name: str) -> int:
    """Delete the temporary outputs (folders or files) of ``name`` in ``parent`` left by runs
    that died; returns how many."""
    removed = 0
    if not os.path.isdir(parent):
        return 0
    prefix = partial_prefix(name)
    for entry in os.scandir(parent):
        if entry.name.startswith(prefix) and not owner_alive(entry.name, name, entry.path):
            removed += _remove_partial(entry.path)
    if removed:
        logger.info("removed %d unfinished output(s) of %s left by a killed run", removed, name)
    return removed


_PARTIAL_NAME = re.compile(r"\.(?P<name>.+?)" + re.escape(PARTIAL))


def remove_stale_partials_under(root: str) -> int:
    """``remove_stale_partials`` for every output under ``root``, in one walk (cheaper than a
    listing of the parent folder per output); returns how many were deleted."""
    removed = 0
    for folder, dirs, files in os.walk(root):
        for name in [*files, *dirs]:
            m = _PARTIAL_NAME.match(name)
            path = os.path.join(folder, name)
            if m and not owner_alive(name, m["name"], path):
                removed += _remove_partial(path)
        dirs[:] = [d for d in dirs if not _PARTIAL_NAME.match(d)]
    if removed:
        logger.info("removed %d unfinished output(s) left by killed runs under %s", removed, root)
    return removed
