"""--save_every MINUTES: a resumable mid-epoch checkpoint every so many minutes, so that a run
killed without warning (SIGKILL, a node that dies, an out-of-memory kill) loses minutes of
training instead of the epoch in progress.

The save is the one a stop request makes (SIGTERM: main.py's `train_epoch` saves the exact
position before an optimizer-step boundary, with every rank's RNG state), triggered by the clock
instead of a signal, and the run goes on. Only rank 0's clock counts: its "a save is due" rides
on the all-reduce every training iteration already makes (ops/engine/trainer.py `_agree`), so all
ranks save at the same step, and reading the clock is a `time.monotonic()` call on the host (no
extra collective, no host-device sync). A due save waits for the next optimizer-step boundary
(with --batch_multiplier) and is skipped on an epoch's first iteration (its position is the
checkpoint already on disk). Any save of the run's checkpoint restarts the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_MINUTES = 30.0


class SaveClock:
    """Rank 0's timer of --save_every: `due()` once `minutes` have passed since the last
    `reset()` (or since it was made); always False on the other ranks and when `minutes` is 0."""

    def __init__(
        self, minutes: float, is_main: bool, now: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = 60.0 * minutes
        self.on = is_main and minutes > 0
        self._now = now
        self._last = now()

    def due(self) -> bool:
        return self.on and self._now() - self._last >= self.seconds

    def reset(self) -> None:
        self._last = self._now()
