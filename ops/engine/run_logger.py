"""Training records of one run: tensorboardX scalars plus a plain CSV and text log.

Everything goes to `<root_log>/<run name>/`:
- `events.out.tfevents.*`: tensorboardX scalars (`loss/train`, `acc/train_top1`, `lr`,
  `throughput/clips_per_s`, `loss/val`, `acc/val_top1`, ... per epoch; `loss/step`, `lr/step`,
  `time/data_wait_s`, `time/compute_s`, `time/data_wait_share` every `--print-freq` steps);
- `log.csv`: one row per epoch (epoch, lr, train/val loss and accuracy, clips/s, bad data);
- `log.txt`: the progress lines and messages, as the published `log.csv` text file had;
- `args.txt`: the resolved configuration.
Only rank 0 writes; on other ranks a RunLogger is a no-op (`enabled=False`). Appending keeps the
records of a resumed run in the same files; `keep_epochs` first drops the rows of epochs the
resumed run trains again, so `log.csv` has one row per epoch.

A failed write (a full or read-only disk) raises `RunLogError`, one line naming the file. A
progress line or scalar that cannot be written mid-epoch is not fatal at once: the error is kept
and raised by the next `epoch()`, which main.py calls after the epoch's checkpoint is saved, so a
full log disk never loses trained epochs. The event file is written here, synchronously
(tensorboardX's `EventsWriter`, not its `SummaryWriter`, whose background thread and atexit hook
fail again on a full disk, each with a traceback, and whose flush in `close()` would hide the
one-line error): once a write failed, the file is closed without retrying and `close()` never
raises.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time

from ops.atomic import write_atomically

logger = logging.getLogger(__name__)

CSV_FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "train_top1",
    "train_top5",
    "train_clips_per_s",
    "val_loss",
    "val_top1",
    "val_top5",
    "best_top1",
    "skipped_videos",
    "replaced_frames",
    "seconds",
)


class RunLogError(Exception):
    """A log file of the run could not be written; the message names it."""


def _error(exc: OSError, path: str) -> RunLogError:
    return RunLogError(
        f"cannot write the run log {exc.filename or path} ({exc.strerror or exc}): free space "
        "or choose a writable --root_log; checkpoints saved so far are kept (--resume auto)"
    )


class RunLogger:
    """Scalars to tensorboardX, epoch rows to `log.csv`, lines to `log.txt` (rank 0 only)."""

    def __init__(self, log_dir: str, enabled: bool = True) -> None:
        self.log_dir = log_dir
        self.enabled = enabled
        self._events = None  # the event file (tensorboardX EventsWriter) while it is writable
        self._failed: RunLogError | None = None  # a write that failed, raised by epoch()
        if not enabled:
            return
        os.makedirs(log_dir, exist_ok=True)
        from tensorboardX.event_file_writer import EventsWriter

        self._events = EventsWriter(os.path.join(log_dir, "events"))
        self._csv_path = os.path.join(log_dir, "log.csv")
        self._txt_path = os.path.join(log_dir, "log.txt")
        if not os.path.exists(self._csv_path):
            with open(self._csv_path, "w", newline="") as f:
                csv.writer(f).writerow(CSV_FIELDS)

    def write_config(self, config: dict) -> None:
        """Store the resolved configuration as `args.txt` (JSON, one run's settings)."""
        if self.enabled:
            path = os.path.join(self.log_dir, "args.txt")
            try:
                with open(path, "w") as f:
                    json.dump(config, f, indent=1, sort_keys=True, default=str)
            except OSError as exc:
                raise _error(exc, path) from None

    def keep_epochs(self, epochs: int) -> None:
        """Drop the `log.csv` rows of epochs after `epochs` (a run resumed from an earlier
        checkpoint trains them again and writes their rows anew)."""
        if not self.enabled:
            return
        with open(self._csv_path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= epochs]
        if len(kept) == len(rows):
            return
        text = io.StringIO()
        csv.writer(text).writerows(kept)
        try:
            write_atomically(self._csv_path, text.getvalue())
        except OSError as exc:
            raise _error(exc, self._csv_path) from None
        logger.info("log.csv: dropped %d row(s) after epoch %d", len(rows) - len(kept), epochs)

    def scalar(self, tag: str, value: float, step: int | float) -> None:
        if self._events is None:
            return
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        event = Event(wall_time=time.time(), step=int(step), summary=scalar(tag, value))
        try:
            self._events.write_event(event)
        except OSError as exc:  # a buffer spilled onto a full disk: raised by epoch()
            self._events_failed(exc)

    def _events_failed(self, exc: OSError) -> None:
        """Keep the first error and give the event file up: closed without a retry (its buffer
        cannot be written), so nothing fails again later (no traceback at exit)."""
        path = getattr(self._events, "_file_name", os.path.join(self.log_dir, "events.*"))
        self._failed = self._failed or _error(exc, path)
        events, self._events = self._events, None
        try:
            events.close()
        except OSError:
            pass  # the same full disk: already reported

    def scalars(self, values: dict[str, float], step: int | float) -> None:
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def line(self, text: str) -> None:
        """Append a line to `log.txt` (the caller also logs it through `logging`)."""
        if self.enabled and self._failed is None:
            try:
                with open(self._txt_path, "a") as f:
                    f.write(text + "\n")
            except OSError as exc:  # raised by epoch(), after the epoch's checkpoint is saved
                self._failed = _error(exc, self._txt_path)

    def epoch_row(self, row: dict) -> None:
        """Append one epoch's summary to `log.csv` (missing fields left empty)."""
        if not self.enabled:
            return
        unknown = set(row) - set(CSV_FIELDS)
        if unknown:
            raise ValueError(f"unknown log.csv fields {sorted(unknown)}: add them to CSV_FIELDS")
        try:
            with open(self._csv_path, "a", newline="") as f:
                csv.writer(f).writerow([_fmt(row.get(k)) for k in CSV_FIELDS])
        except OSError as exc:
            raise _error(exc, self._csv_path) from None
        if self._events is not None:
            try:
                self._events.flush()
            except OSError as exc:
                self._events_failed(exc)

    def epoch(self, epoch: int, *, train, val, best_top1: float, bad_data: dict) -> None:
        """Record a finished epoch (1-based): scalars, a CSV row and the validation line.

        `train` / `val` are `ops.engine.trainer.EpochStats` (val None when not validated this epoch);
        `bad_data` has `videos_skipped` and `frames_replaced` (totals so far).
        """
        row = {
            "epoch": epoch,
            "lr": train.lr,
            "train_loss": train.loss,
            "train_top1": train.top1,
            "train_top5": train.top5,
            "train_clips_per_s": train.clips_per_s,
            "seconds": train.seconds,
            "skipped_videos": bad_data["videos_skipped"],
            "replaced_frames": bad_data["frames_replaced"],
        }
        scalars = {
            "loss/train": train.loss,
            "acc/train_top1": train.top1,
            "acc/train_top5": train.top5,
            "lr": train.lr,
            "throughput/clips_per_s": train.clips_per_s,
        }
        if val is not None:
            row.update(val_loss=val.loss, val_top1=val.top1, val_top5=val.top5, best_top1=best_top1)
            scalars.update(
                {
                    "loss/val": val.loss,
                    "acc/val_top1": val.top1,
                    "acc/val_top5": val.top5,
                    "acc/val_top1_best": best_top1,
                }
            )
            text = (
                f"Testing Results: Prec@1 {val.top1:.3f} Prec@5 {val.top5:.3f} "
                f"Loss {val.loss:.5f} (best Prec@1 {best_top1:.3f})"
            )
            if self.enabled:
                logger.info("epoch %d: %s", epoch, text)
            self.line(text)
        if self.enabled and (bad_data["videos_skipped"] or bad_data["frames_replaced"]):
            logger.warning(
                "data problems so far: %d video loads skipped, %d frames replaced (log.csv has "
                "them per epoch; tools/check_data.py lists the files)",
                bad_data["videos_skipped"],
                bad_data["frames_replaced"],
            )
        self.scalars(scalars, epoch)
        self.epoch_row(row)
        if self._failed is not None:
            raise self._failed

    def close(self) -> None:
        """Flush and close the event file. Never raises (main.py calls it in `finally`, where an
        error would hide the one that ended the run): a failure not reported yet is logged."""
        if self._events is None:
            return
        try:
            self._events.close()
            self._events = None
        except OSError as exc:
            reported = self._failed is not None
            self._events_failed(exc)
            if not reported:
                logger.warning("%s", self._failed)


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
