"""Every DataLoader of a run comes from `make_loader`: the training, validation and precise-BN
loaders and the demo's evaluation.

One function, so that each pass gets its batches the same way: the collate that fits what the
dataset hands over (`collate_for`: --device_aug's encoded clips become an `EncodedBatch`, which
`ops.engine.trainer.model_batch` decodes and augments on the device; anything else is stacked,
with unreadable videos dropped), loader workers that ignore the stop signals
(`ops.engine.stop.loader_worker_init`; the passes start them inside `stop_signals_blocked`), and
a generator of its own seeded from the run's seed, so that starting the workers leaves the global
RNG (dropout) alone (augmentation draws come from `ops.engine.seeding.SeededDataset`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ops.dataset import collate
from ops.device_augment import DeviceTestViews, DeviceTrainAugment, collate_encoded
from ops.engine.stop import loader_worker_init


def hands_encoded(dataset: Dataset) -> bool:
    """Whether `dataset` (or the dataset it wraps, e.g. a SeededDataset) hands over encoded
    clips for the device (--device_aug, test_models.py --device_views)."""
    for _ in range(4):
        transform = getattr(dataset, "transform", None)
        if isinstance(transform, (DeviceTrainAugment, DeviceTestViews)):
            return True
        dataset = getattr(dataset, "dataset", None)
        if dataset is None:
            break
    return False


def collate_for(dataset: Dataset) -> Callable:
    """The collate of `dataset`'s items: encoded clips, or tensors (both drop the unreadable
    videos, None, and give None when none is left)."""
    return collate_encoded if hands_encoded(dataset) else collate


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    sampler: Sampler | None = None,
    drop_last: bool = False,
    persistent_workers: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader of `dataset` in `sampler`'s order (list order without one)."""
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=pin_memory,
        # Persistent workers live for the whole run (SeededDataset shares the epoch with them).
        persistent_workers=persistent_workers and workers > 0,
        collate_fn=collate_for(dataset),
        generator=torch.Generator().manual_seed(seed),
        # Workers ignore SIGTERM / SIGINT / SIGUSR1: the training process decides to stop.
        worker_init_fn=loader_worker_init(),
    )
