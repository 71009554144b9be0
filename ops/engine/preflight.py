"""Checks of the data before the first training step: what fails only later otherwise.

`check_data_before_training` (main.py calls it once the datasets are built, on every rank):
- each list must have a video that reads: the first `PROBE_LIMIT` entries are loaded, in list
  order, until one gives a clip (a wrong `--data_root`, or a `--val_list` whose frames are all
  missing, used to show only after the first epoch, whose weights were then not saved). The
  probe is one clip per list when the data is fine; its loads neither count nor log problems
  (training reads those videos again) and leave the random generators as they were;
- a validation list that is the training list, or that shares videos with it, is warned about
  (the validation accuracy then measures training accuracy).
Duplicate entries within a list are warned about by the dataset itself (`ops/dataset.py`), for
test_models.py too.
"""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from ops.data_problems import DataError
from ops.dataset import TSNDataSet
from ops.lists import short

logger = logging.getLogger(__name__)

PROBE_LIMIT = 32  # list entries tried before a list is declared unreadable


def probe_readable(dataset: TSNDataSet, flag: str) -> None:
    """Load `dataset`'s entries in list order until one gives a clip; a one-line `DataError`
    naming `flag` and the list when none of the first `PROBE_LIMIT` does."""
    tried = dataset.video_list[:PROBE_LIMIT]
    state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        with dataset.problems.probing() as problems:
            for record in tried:
                if dataset.load(record) is not None:
                    return
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
    first = f" (the first: {problems[0]})" if problems else ""
    raise DataError(
        f"{flag} {dataset.list_file}: none of its first {len(tried)} videos can be read{first}; "
        "check --data_root and the frame folders or videos (tools/check_data.py lists every "
        "problem)"
    )


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_data_before_training(
    train: TSNDataSet | None, val: TSNDataSet, is_main: bool = True
) -> None:
    """The checks above (`train` None: evaluation only, the validation list alone is probed).
    Warnings are logged by rank 0 (`is_main`); every rank raises the same errors."""
    if train is not None and is_main:
        if _same_file(train.list_file, val.list_file):
            logger.warning(
                "--val_list %s is the same file as --train_list: the validation accuracy is "
                "training accuracy",
                val.list_file,
            )
        else:
            trained = {r.path for r in train.video_list}
            shared = [r.path for r in val.video_list if r.path in trained]
            if shared:
                logger.warning(
                    "%d of the %d videos of --val_list %s are also training videos (e.g. %r): "
                    "the validation accuracy overstates",
                    len(shared),
                    len(val.video_list),
                    val.list_file,
                    short(shared[0]),
                )
    if train is not None:
        probe_readable(train, "--train_list")
    probe_readable(val, "--val_list")
