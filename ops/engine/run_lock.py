"""One run per folder: rank 0 holds an OS lock on its run folders for the run's lifetime.

``hold(folder)`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``<folder>/run.lock`` and writes the
holder's host, pid and start time into it; a second process asking for the same folder gets
``RunLockedError`` at once, naming them. The kernel releases a flock when the last descriptor of
its open file is closed, i.e. when the holder exits however it exits (SIGKILL, OOM, a node
reboot for a local disk): no stale lock is ever left, and no pid has to be checked. A clean end
(``release_all``) unlinks the file, then unlocks it; a lock file left by a killed run is an
ordinary unlocked file that the next run takes over. After locking, the holder checks that the
path still names the file it locked (a run that ended may have unlinked it meanwhile) and
otherwise tries again, so two runs never both hold the folder.

Processes forked from the holder (DataLoader workers, multiprocessing pools) would share its
open file and so keep the lock after the holder is killed; an ``os.register_at_fork`` hook closes
their copies, so the lock lives exactly as long as the process that took it.

Network filesystems:

- NFS (Linux client since 2.6.12): flock is emulated with a POSIX lock on the whole file, sent to
  the server (NLM/lockd for NFSv3, the protocol's own locks for NFSv4), so it works across nodes
  where NFS locking works. Mounted ``nolock`` (or ``local_lock=flock``/``all``) the lock is
  local to the node: two nodes could both run in one folder. When the server or lockd is
  unreachable flock fails (ENOLCK): the run warns and goes on without the lock.
- Lustre: coherent across nodes only with the ``flock`` mount option; ``localflock`` is local to
  the node (as NFS ``nolock``); ``noflock`` makes flock fail (ENOSYS): the run warns and goes on
  without the lock.
- The lock file names the holder's host, so a refusal says which node runs there.

Only rank 0 calls this (main.py): the other ranks write nothing in the run folder.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket

from ops.engine.run_folder import RunFolderError, make_output_dir

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
# flock failures that mean "this filesystem cannot lock", not "someone holds it".
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}

# folder -> (descriptor, path) of the locks this process holds: an OS resource of the process,
# like its open files, released by the kernel when the process ends.
_held: dict[str, tuple[int, str]] = {}


class RunLockedError(RunFolderError):
    """Another live process holds the run folder; the message names its host and pid."""


def _holder(fd: int) -> str:
    """'host H, pid P, since T' from the lock file (written by the holder after locking)."""
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"host {info['host']}, pid {info['pid']}, started {info['started']}"
    return "its host and pid not yet recorded"


def _try_lock(path: str) -> int | None:
    """A descriptor of ``path`` locked by this process; None where the filesystem cannot lock.
    Raises ``RunLockedError`` when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited across exec
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            folder = os.path.dirname(path)
            raise RunLockedError(
                f"{folder} is in use by a live run ({holder}): two runs in one folder overwrite "
                "each other's checkpoints and logs; wait for it to end or stop it, or give this "
                "run its own folder with --suffix NAME"
            ) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _UNSUPPORTED:
                return None
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the file was unlinked by a run that ended: lock the new one


def hold(folder: str, flag: str = "--root_model") -> None:
    """Lock ``folder`` (created if needed; ``flag`` names it in a one-line error) for this
    process until ``release_all`` or its end. ``RunLockedError`` when another process holds
    it; a warning, and no lock, where the filesystem cannot lock."""
    key = os.path.realpath(folder)
    if key in _held:
        return
    make_output_dir(folder, flag)
    path = os.path.join(folder, LOCK_FILE)
    try:
        fd = _try_lock(path)
    except OSError as exc:
        raise RunFolderError(f"cannot lock {path} (from {flag}): {exc.strerror or exc}") from None
    if fd is None:
        logger.warning(
            "cannot lock %s: its filesystem does not support flock (NFS mounted nolock, Lustre "
            "without -o flock); nothing stops a second run from using this folder",
            path,
        )
        return
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": started}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
    _held[key] = (fd, path)


def check_free(folder: str) -> None:
    """Raise ``RunLockedError`` if another process holds ``folder`` now (takes nothing: for a
    launcher that refuses before starting the process that will hold it)."""
    path = os.path.join(folder, LOCK_FILE)
    if not os.path.isfile(path):
        return
    try:
        fd = _try_lock(path)
    except OSError:
        return  # the process that holds the run reports what is wrong
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def release_all() -> None:
    """Give up every folder this process holds: unlink the lock file (while still locked, so
    that no one locks the old file), then unlock and close it."""
    while _held:
        _, (fd, path) = _held.popitem()
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                os.unlink(path)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)


def _forget_in_child() -> None:
    # A forked child closes its copies (without unlocking: the lock is its parent's).
    for fd, _ in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)
