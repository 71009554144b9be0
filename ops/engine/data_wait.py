"""How long the training loop waits for data, and how long it computes, step by step.

`StepTimer` splits the wall time of an epoch into *data wait* (from the end of one step until the
loader hands over the next batch) and *compute* (from then until the loop has issued the step).
Both are host times: the loop reads nothing from the device between its reading steps
(ops/engine/trainer.py), so on a GPU the host may queue a step while the device still computes the
last one, and the device sits idle at most for the data wait measured here (on the CPU the two are
the same). The first batch of an epoch also waits for the loader workers to start, so it is kept
apart (`startup_s`) and left out of the share.

When more than `WAIT_WARNING_SHARE` (10 %) of an epoch's steps is spent waiting, `warning()`
returns the one line main.py logs: the GPU (or CPU) sits idle while workers decode and augment;
the fixes are more loader workers (`-j`) and the device data path (`--device_aug`), which leaves
the workers only the file reading.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

WAIT_WARNING_SHARE = 0.10


@dataclass
class StepTimer:
    """Per-step data-wait and compute seconds of one epoch (`got_batch` / `step_done` pairs)."""

    clock: Callable[[], float] = time.perf_counter
    wait_s: float = 0.0  # summed over the steps after the first
    compute_s: float = 0.0  # summed over the steps after the first
    steps: int = 0  # steps after the first
    startup_s: float | None = None  # the first batch's wait (worker start-up included)
    last_wait_s: float = 0.0
    last_compute_s: float = 0.0
    _mark: float = field(default=0.0, repr=False)
    _first: bool = field(default=True, repr=False)

    def start(self) -> None:
        """Call just before asking the loader for its first batch."""
        self._mark = self.clock()

    def got_batch(self) -> None:
        """The loader has just handed over a batch."""
        now = self.clock()
        self.last_wait_s = now - self._mark
        self._mark = now

    def step_done(self) -> None:
        """The step's work is finished (its loss is on the host), or the batch was skipped."""
        now = self.clock()
        self.last_compute_s = now - self._mark
        self._mark = now
        if self._first:
            self.startup_s, self._first = self.last_wait_s, False
            return
        self.steps += 1
        self.wait_s += self.last_wait_s
        self.compute_s += self.last_compute_s

    @property
    def wait_share(self) -> float:
        """Fraction of the steps' time (after the first) spent waiting for data."""
        total = self.wait_s + self.compute_s
        return self.wait_s / total if self.steps and total > 0 else 0.0

    def summary(self) -> str:
        """`data 0.012 s/it (4%) compute 0.290 s/it`, averages over the steps so far."""
        n = max(self.steps, 1)
        return (
            f"data {self.wait_s / n:.3f} s/it ({100 * self.wait_share:.0f}%) "
            f"compute {self.compute_s / n:.3f} s/it"
        )

    def warning(self, epoch: int, workers: int) -> str | None:
        """The epoch's data-wait warning, or None when the loop waited at most 10 % of the time."""
        if self.wait_share <= WAIT_WARNING_SHARE:
            return None
        return (
            f"epoch {epoch}: the loop waited for data {100 * self.wait_share:.0f}% of the time "
            f"({self.summary()}); the loader cannot keep up: use more workers (-j, now {workers}) "
            "or the device data path (--device_aug: workers only read the files, decoding and "
            "augmentation run batched on the device)"
        )
