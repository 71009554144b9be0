"""Stopping a run on request: SIGTERM (cluster preemption) and Ctrl-C become a flag that the
training loop polls at optimizer-step boundaries, so the run saves a resumable checkpoint first."""

from __future__ import annotations

import logging
import signal

logger = logging.getLogger(__name__)


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the training loop polls (cluster preemption, Ctrl-C).

    The loop finishes the current optimizer step, saves a resumable checkpoint and exits cleanly.
    A second Ctrl-C while stopping raises KeyboardInterrupt at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def install(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        logger.warning(
            "%s received: stopping after the current optimizer step and saving a checkpoint",
            self.signal_name,
        )
