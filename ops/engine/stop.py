"""Stopping a run on request: preemption (SIGTERM), SLURM's early warning (SIGUSR1) and Ctrl-C
(SIGINT) become a flag that the training loop polls at optimizer-step boundaries (and validation
between batches), so the run saves a resumable checkpoint first.

Who receives the signal depends on the launcher, and every case ends in the same place:
- torchrun sends it to each rank's whole process group (the rank and its DataLoader workers) and
  kills whatever is left 30 s later;
- SLURM sends it to every process of the job step (`scancel`, preemption, `--signal=USR1@90`);
- a terminal's Ctrl-C reaches every process of the foreground group, and in spawn mode the
  parent forwards it once more.
DataLoader workers therefore ignore the stop signals (`loader_worker_init`; they are blocked while
workers start, `stop_signals_blocked`, so none arrives before that, whether the workers are
forked, spawned or started by a fork server: tests/test_cluster.py), and the training process
alone decides to stop and save. A repeat of the same signal within `REPEAT_WINDOW_S` seconds is the
same request (the terminal's Ctrl-C and the spawn parent's forwarded copy); a Ctrl-C pressed again
later aborts at once (KeyboardInterrupt), without a checkpoint.

After SIGUSR1 (SLURM's warning that the time limit is near) rank 0 asks SLURM to requeue the job
once the checkpoint is written (`requeue_slurm_job`), so that it continues with --resume auto.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from multiprocessing import forkserver, resource_tracker

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
REPEAT_WINDOW_S = 3.0


class StopRequest:
    """Turns SIGTERM / SIGINT / SIGUSR1 into a flag the loops poll (preemption, Ctrl-C).

    The loop finishes the current optimizer step, saves a resumable checkpoint and exits cleanly.
    `requeue` is set by SIGUSR1 (SLURM's early warning). A second Ctrl-C more than
    `REPEAT_WINDOW_S` seconds after the first raises KeyboardInterrupt at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self.requeue = False
        self.signal_name = ""
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    def install(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            repeat = time.monotonic() - self._first_at < REPEAT_WINDOW_S
            if signum == signal.SIGINT and not repeat:
                raise KeyboardInterrupt
            self.requeue = self.requeue or signum == signal.SIGUSR1
            return  # the same request again (or SIGTERM after the early warning)
        self.requested, self.signal_name = True, name
        self.requeue = signum == signal.SIGUSR1
        self._first_at = time.monotonic()
        logger.warning(
            "%s received: stopping after the current optimizer step and saving a checkpoint", name
        )


def _start_method(loader: object | None) -> str:
    """The start method of `loader`'s worker processes (a DataLoader's multiprocessing_context,
    else this process's default)."""
    context = getattr(loader, "multiprocessing_context", None)
    if isinstance(context, str):
        return context
    return (context or multiprocessing.get_context()).get_start_method()


@contextlib.contextmanager
def stop_signals_blocked(loader: object | None = None) -> Iterator[None]:
    """Hold back the stop signals in this thread while `loader`'s DataLoader workers start, so
    that a signal sent to the whole group cannot kill one before `loader_worker_init` has made
    it ignore them; here they are delivered on leaving.

    A worker starts with the mask of the process it comes from: fork copies this thread's,
    spawn keeps it through exec. Two things of Python's multiprocessing are set up first, outside
    and inside the block: the resource tracker (spawn and forkserver start it with the first
    worker, and starting it unblocks SIGINT and SIGTERM in the calling thread, which would open
    the block for the workers after it), and the fork server, which forks the workers and so
    passes its own mask on (started here, it keeps the stop signals blocked for its life, and a
    signal to the group leaves it alive too)."""
    method = _start_method(loader)
    if method != "fork":
        resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        if method == "forkserver":
            forkserver.ensure_running()
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _worker_init(then: Callable[[int], None] | None, worker_id: int) -> None:
    # First thing, whatever the start method: the worker's own handling of the stop signals
    # (ignored; a worker forked or spawned inside `stop_signals_blocked` has them blocked until
    # here, and one already pending is discarded).
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if then is not None:
        then(worker_id)


def loader_worker_init(then: Callable[[int], None] | None = None) -> Callable[[int], None]:
    """A DataLoader `worker_init_fn` that makes the worker ignore the stop signals, then runs
    `then` (an existing init function), so that only the training process reacts to them."""
    return functools.partial(_worker_init, then)


def requeue_slurm_job(env: dict[str, str] | None = None) -> bool:
    """Ask SLURM to requeue this job (`scontrol requeue $SLURM_JOB_ID`); True if it accepted.

    Called by rank 0 after the checkpoint of a SIGUSR1 stop is written. Outside SLURM, or when
    the job cannot be requeued (submitted with --no-requeue, or the cluster forbids it), a warning
    says so and the run simply ends; `--resume auto` continues it when started again.
    """
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID")
    if not job:
        logger.warning("SIGUSR1: not a SLURM job (no SLURM_JOB_ID), so nothing to requeue")
        return False
    scontrol = shutil.which("scontrol", path=env.get("PATH"))
    if scontrol is None:
        logger.warning("SIGUSR1: scontrol not found on PATH, job %s not requeued", job)
        return False
    try:
        done = subprocess.run(
            [scontrol, "requeue", job], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("scontrol requeue %s failed (%s): the job was not requeued", job, exc)
        return False
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        logger.warning(
            "scontrol requeue %s failed (%s): submit with --requeue to continue automatically",
            job,
            why[-1] if why else f"exit code {done.returncode}",
        )
        return False
    logger.warning("requeued SLURM job %s: it continues from the checkpoint (--resume auto)", job)
    return True
