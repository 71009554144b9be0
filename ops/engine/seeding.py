"""Reproducible randomness for training: results that do not depend on workers or restarts.

Three rules make a run resumed from a checkpoint give bit-identical weights on CPU:
- Each sample's augmentation (frame offsets, crop, flip) draws from a generator seeded by
  (seed, epoch, sample index) (`SeededDataset`), not from whatever state a loader worker has, so
  the number of workers and where a run was interrupted do not matter.
- The order of samples in an epoch is a permutation seeded by (seed, epoch) (`EpochSampler`),
  sharded over ranks like DistributedSampler, and can start part-way (mid-epoch resume): at a
  global position in that permutation, so that a run stopped with one number of processes or
  batch size continues with another exactly where it was (`start_epoch`).
- The main process's generators (dropout) are re-seeded at the start of every epoch by
  (seed, epoch, rank) (`seed_epoch`); mid-epoch checkpoints also store them
  (`ops.checkpoint.rng_state`).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ops.checkpoint import RunState, set_rng_state

logger = logging.getLogger(__name__)


def derive_seed(*keys: int) -> int:
    """A 32-bit seed mixed from integer keys (independent streams for different keys)."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    """Seed python's, numpy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_cpu(seed: int) -> None:
    """Seed python's, numpy's and torch's CPU generators, leaving the CUDA ones alone (what a
    data item draws from: augmentation runs on the CPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Re-seed the main process's generators at the start of an epoch (dropout, etc.)."""
    seed_all(derive_seed(seed, epoch, rank, 1))


class SeededDataset(Dataset):
    """Wraps a dataset so item `i` in epoch `e` always draws the same random numbers.

    Before `dataset[i]` the global python / numpy / torch CPU generators are seeded from
    (seed, epoch, i), and afterwards restored, so that loading in the main process (workers=0)
    does not disturb the training's own random stream; the CUDA generators (dropout on a GPU)
    are never touched (`seed_cpu`), so a resumed run continues their stream. Call `set_epoch` before each epoch (before
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
        seed_cpu(derive_seed(self.seed, self.epoch, index, 2))
        try:
            # An index >= len is copy `index // len` of item `index % len` (repeated
            # augmentation): the same video, other augmentation draws.
            return self.dataset[index % len(self.dataset)]
        finally:
            random.setstate(saved_py)
            np.random.set_state(saved_np)
            torch.set_rng_state(saved_torch)


class EpochSampler(Sampler[int]):
    """Shuffled (or ordered) indices for one rank, reproducible per epoch, resumable mid-epoch.

    Like DistributedSampler: the permutation of epoch `e` comes from a generator seeded by
    (seed, e); it is padded by repetition to a multiple of `num_replicas` (shuffle) and rank `r`
    takes every `num_replicas`-th index from `r`, so after `k` batches of `b` on every rank the
    ranks together have used the first `k * b * num_replicas` positions of the padded
    permutation. Without shuffle (validation) nothing is padded and shards may differ in size by
    one. `set_epoch(e, start=g)` skips the first `g` positions of the (padded) permutation, those
    already trained on before an interruption, and shards the rest (padded again to a multiple
    of `num_replicas`) the same way; with the world size of the interrupted run that is exactly
    where each rank was.
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
        """Use epoch `epoch`'s order, from global position `start` (0: the whole epoch)."""
        self.epoch = epoch
        self.start = start

    def position(self, drawn: int) -> int:
        """The global position reached when each rank has drawn `drawn` indices of this epoch."""
        return self.start + drawn * self.num_replicas

    def permutation(self) -> list[int]:
        """This epoch's shuffled order of the dataset's indices (before padding)."""
        g = torch.Generator()
        g.manual_seed(derive_seed(self.seed, self.epoch, 3))
        return torch.randperm(self.dataset_len, generator=g).tolist()

    def order(self) -> list[int]:
        """This epoch's global order, padded to a multiple of `num_replicas`; the positions of
        `position()` / `set_epoch(start=...)` count in it. (Subclasses change the order here.)"""
        return _repeat(self.permutation(), self.num_replicas)

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.dataset_len, self.num_replicas))
        order = self.order()
        if self.start:
            order = _repeat(order[self.start :], self.num_replicas)
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def _repeat(order: list[int], multiple: int) -> list[int]:
    """`order` padded by repeating it from the start to a multiple of `multiple` entries."""
    total = math.ceil(len(order) / multiple) * multiple
    return (order * math.ceil(total / max(len(order), 1)))[:total]


def start_epoch(
    state: RunState,
    sampler: EpochSampler,
    dataset: SeededDataset,
    batch: int,
    iters_per_epoch: int,
    rank: int,
) -> None:
    """Put the sampler, the augmentation draws and the main process's generators at the start of
    epoch `state.epoch`, or where it stopped: `state.samples_done` positions of its order in.

    Then `state.iteration` becomes the first iteration to run with this run's `batch` and number
    of processes: the remaining ones are the last of the epoch's `iters_per_epoch`, so the
    learning-rate schedule continues at the fraction of the epoch already done. With the world
    size and per-process batch of the interrupted run this is the very same iteration, and the
    interrupted epoch's random stream continues from `state.rng_state`; otherwise the rest of the
    epoch is the same samples in other batches, with fresh dropout draws (warned).
    """
    if state.iteration and not state.samples_done:
        # A checkpoint from before global positions: written with these processes and batch.
        state.samples_done = state.iteration * batch * sampler.num_replicas
        state.world_size, state.batch = sampler.num_replicas, batch
    sampler.set_epoch(state.epoch, start=state.samples_done)
    dataset.set_epoch(state.epoch)
    if not state.samples_done:
        state.iteration = 0
        seed_epoch(dataset.seed, state.epoch, rank)
        return
    if state.epoch_samples not in (None, sampler.dataset_len):
        raise ValueError(
            f"the training list has {sampler.dataset_len} videos but the checkpoint stopped in "
            f"the middle of an epoch of {state.epoch_samples}: restore that list to resume "
            "(or resume from the end-of-epoch checkpoint of a run that used this list)"
        )
    state.iteration = iters_per_epoch - len(sampler) // batch
    if (state.world_size, state.batch) == (sampler.num_replicas, batch):
        if state.rng_state is not None:
            set_rng_state(state.rng_state)
        else:  # a checkpoint without this rank's generators
            seed_epoch(dataset.seed, state.epoch, rank)
        return
    seed_epoch(dataset.seed, state.epoch, rank)
    if rank == 0:
        logger.warning(
            "resuming epoch %d at sample %d of %d with %d process(es) x %d clips (it stopped with "
            "%s x %s): the same remaining samples, in other batches%s and with fresh dropout "
            "draws, so not bit-identical to an uninterrupted run",
            state.epoch + 1,
            state.samples_done,
            sampler.dataset_len,
            sampler.num_replicas,
            batch,
            state.world_size,
            state.batch,
            ""
            if (state.world_size or 0) * (state.batch or 0) == sampler.num_replicas * batch
            else " of another size",
        )
