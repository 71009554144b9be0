"""Reproducible randomness for training: results that do not depend on workers or restarts.

Three rules make a run resumed from a checkpoint give bit-identical weights on CPU:
- Each sample's augmentation (frame offsets, crop, flip) draws from a generator seeded by
  (seed, epoch, sample index) (`SeededDataset`), not from whatever state a loader worker has, so
  the number of workers and where a run was interrupted do not matter.
- The order of samples in an epoch is a permutation seeded by (seed, epoch) (`EpochSampler`),
  sharded over ranks like DistributedSampler, and can start part-way (mid-epoch resume).
- The main process's generators (dropout) are re-seeded at the start of every epoch by
  (seed, epoch, rank) (`seed_epoch`); mid-epoch checkpoints also store them
  (`ops.checkpoint.rng_state`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ops.checkpoint import RunState, set_rng_state


def derive_seed(*keys: int) -> int:
    """A 32-bit seed mixed from integer keys (independent streams for different keys)."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    """Seed python's, numpy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Re-seed the main process's generators at the start of an epoch (dropout, etc.)."""
    seed_all(derive_seed(seed, epoch, rank, 1))


class SeededDataset(Dataset):
    """Wraps a dataset so item `i` in epoch `e` always draws the same random numbers.

    Before `dataset[i]` the global python / numpy / torch generators are seeded from
    (seed, epoch, i), and afterwards restored, so that loading in the main process (workers=0)
    does not disturb the training's own random stream. Call `set_epoch` before each epoch (before
    iterating the loader). The epoch lives in a one-element tensor in shared memory, so a loader's
    persistent worker processes, started in an earlier epoch, read the new value too. The wrapped
    dataset is ``dataset`` (e.g. for its bad-data counters).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        saved_py, saved_np = random.getstate(), np.random.get_state()
        saved_torch = torch.get_rng_state()
        seed_all(derive_seed(self.seed, self.epoch, index, 2))
        try:
            return self.dataset[index]
        finally:
            random.setstate(saved_py)
            np.random.set_state(saved_np)
            torch.set_rng_state(saved_torch)


class EpochSampler(Sampler[int]):
    """Shuffled (or ordered) indices for one rank, reproducible per epoch, resumable mid-epoch.

    Like DistributedSampler: the permutation of epoch `e` comes from a generator seeded by
    (seed, e); it is padded by repetition to a multiple of `num_replicas` (shuffle) and rank `r`
    takes every `num_replicas`-th index from `r`. Without shuffle (validation) nothing is padded
    and shards may differ in size by one. `set_epoch(e, start=k)` skips this rank's first `k`
    indices (those already trained on before an interruption).
    """

    def __init__(
        self,
        dataset_len: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.dataset_len = dataset_len
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.dataset_len, self.num_replicas))
        g = torch.Generator()
        g.manual_seed(derive_seed(self.seed, self.epoch, 3))
        order = torch.randperm(self.dataset_len, generator=g).tolist()
        total = math.ceil(self.dataset_len / self.num_replicas) * self.num_replicas
        order = (order * math.ceil(total / max(len(order), 1)))[:total]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return max(len(self._indices()) - self.start, 0)


def start_epoch(
    state: RunState, sampler: EpochSampler, dataset: SeededDataset, batch: int, rank: int
) -> None:
    """Put the sampler, the augmentation draws and the main process's generators at the start of
    epoch `state.epoch`, or where it stopped (`state.iteration` batches of `batch` clips in):
    there the interrupted epoch's random stream continues from `state.rng_state` when the
    checkpoint had this rank's, else the epoch is seeded afresh."""
    sampler.set_epoch(state.epoch, start=state.iteration * batch)
    dataset.set_epoch(state.epoch)
    if state.iteration and state.rng_state is not None:
        set_rng_state(state.rng_state)
    else:
        seed_epoch(dataset.seed, state.epoch, rank)
