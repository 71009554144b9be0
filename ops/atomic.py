"""Atomic file writes: a file appears complete under its name, or not at all.

``write_atomically(path, contents)`` writes ``contents`` (bytes, a text string, or a function
that writes to an open binary file, as ``torch.save``, ``np.savez`` or ``PIL.Image.save`` do) to
a temporary file in the folder of ``path`` (``<name>.<random>.tmp``), flushes it to the disk
(fsync), gives it the permissions of any new file (the umask, not the private ones of a temporary
file), renames it to ``path`` and makes the rename durable where the OS allows (fsync of the
folder). A crash, a full disk or an exception of the writing function leaves the file that was
there before, if any, untouched; the temporary file is removed (a ``kill -9`` leaves it:
``clear_stale`` removes such leftovers of the same path first, for files that one process
writes, such as a run's checkpoints).

Errors are the writing function's own, raised again; a system error (``OSError`` with an errno)
about the temporary file or about no file (a full disk, a read-only folder) is raised naming
``path``, the file asked for, instead.

A module of its own, importing only the standard library: every writer (the checkpoint file
format, the run folder, reports, tools, benchmarks) can use it without importing anything else.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"


def temp_files(path: str | os.PathLike) -> list[str]:
    """Temporary files of ``write_atomically(path, ...)`` calls that did not finish (killed)."""
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    return glob.glob(os.path.join(glob.escape(folder), glob.escape(name) + ".*" + TEMP_SUFFIX))


def write_atomically(
    path: str | os.PathLike,
    contents: bytes | str | Callable[[BinaryIO], object],
    *,
    encoding: str = "utf-8",
    clear_stale: bool = False,
) -> None:
    """Write ``contents`` to ``path`` atomically (see the module's docstring): ``bytes``, a
    ``str`` (encoded with ``encoding``, newlines as given) or ``write(f)`` with ``f`` a binary
    file object open for writing. ``clear_stale`` first removes what killed earlier writes of
    ``path`` left (only right when a single process writes ``path``). Creates the folder."""
    path = os.fspath(path)
    if isinstance(contents, str):
        contents = contents.encode(encoding)
    if isinstance(contents, (bytes, bytearray, memoryview)):
        data = contents

        def write(f: BinaryIO) -> None:
            f.write(data)
    elif callable(contents):
        write = contents
    else:
        raise TypeError(f"contents must be bytes, str or a function, not {type(contents).__name__}")
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        if clear_stale:
            for stale in temp_files(path):
                with contextlib.suppress(OSError):
                    os.remove(stale)
        fd, tmp = tempfile.mkstemp(
            prefix=os.path.basename(path) + ".", suffix=TEMP_SUFFIX, dir=folder
        )
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        tmp = None
        _sync_folder(folder)
    except BaseException as exc:  # also KeyboardInterrupt: no temporary file stays behind
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        # an error of the system (errno) about the temporary file, or about no file: it names
        # the file asked for (errors of the writer's own, such as a decoder's, pass unchanged)
        if (
            isinstance(exc, OSError)
            and exc.errno is not None
            and _about_a_temp_file(exc.filename, path)
        ):
            raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
        raise


def _about_a_temp_file(filename: object, path: str) -> bool:
    """Whether an error's ``filename`` is none or a temporary file of ``path``: then the error
    is about writing ``path`` and names it instead."""
    if filename is None:
        return True
    name = os.path.basename(os.fsdecode(filename)) if isinstance(filename, (str, bytes)) else ""
    return name.startswith(os.path.basename(path) + ".") and name.endswith(TEMP_SUFFIX)


def _umask() -> int:
    """The process's umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable, where the OS lets a folder be opened and synced."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
