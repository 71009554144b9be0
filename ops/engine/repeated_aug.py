"""--repeated_aug K: each sampled video K times per epoch, differently augmented, spread over the
ranks (repeated augmentation, Hoffer et al. 2020; DeiT's RASampler, as VideoMAE uses it).

The epoch keeps its length (the padded dataset length, as without the option): its global order
is the epoch's permutation with every index written K times in a row, cut to that length, so an
epoch sees about len/K distinct videos, each K times. Rank r takes positions r, r + R, ... of the
order, so the K copies of a video, being consecutive, land on K different ranks when K <= R (on
one process they are K clips of the same batch or of neighbouring batches).

Copy c of index i is yielded as `i + c * len`: `SeededDataset` reads item `i` but seeds its
augmentation with the full number, so every copy draws its own crop, flip and RandAugment, and
copy 0 draws exactly what index i draws without this option. Positions, `set_epoch(start=...)`
and `position()` mean what they mean for `EpochSampler` (global positions in the order), so a
mid-epoch resume, with another number of processes too, continues at the same copy.
"""

from __future__ import annotations

from ops.engine.seeding import EpochSampler, _repeat


class RepeatedAugSampler(EpochSampler):
    """`EpochSampler` whose order repeats each index `repeats` times (encoded copies)."""

    def __init__(self, dataset_len: int, *, repeats: int, **kwargs) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        super().__init__(dataset_len, **kwargs)
        self.repeats = repeats

    def order(self) -> list[int]:
        n = self.dataset_len
        repeated = [i + c * n for i in self.permutation() for c in range(self.repeats)]
        length = len(_repeat(list(range(n)), self.num_replicas))  # the length without repeats
        return _repeat(repeated, self.num_replicas)[:length]
