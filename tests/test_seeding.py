"""ops/engine/seeding.py: per-epoch sample order, per-sample random draws; the RNG state round
trip of ops/checkpoint.py."""

import io
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ops.checkpoint import RunState, rng_state, set_rng_state
from ops.engine.seeding import EpochSampler, SeededDataset, seed_all, start_epoch


class Draws(Dataset):
    """Item i = (i, a python, a numpy and a torch random draw)."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return i, random.random(), float(np.random.rand()), float(torch.rand(()))


def test_shards_partition_a_padded_permutation():
    shards = [list(EpochSampler(10, num_replicas=3, rank=r, seed=5)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # ceil(10 / 3) each, 2 indices repeated
    flat = sorted(i for s in shards for i in s)
    assert set(flat) == set(range(10)) and len(flat) == 12
    # Rank r takes positions r, r + 3, ... of one permutation: interleave them back.
    order = [shards[p % 3][p // 3] for p in range(12)]
    assert sorted(order[:10]) == list(range(10)) and order[10:] == order[:2]


def test_order_depends_on_seed_and_epoch_only_and_resumes_part_way():
    a, b = EpochSampler(50, seed=1), EpochSampler(50, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    full = list(a)
    b.set_epoch(4)
    assert list(b) != full
    a.set_epoch(3, start=20)
    assert list(a) == full[20:] and len(a) == 30


def test_validation_shards_are_strided_without_padding():
    shards = [list(EpochSampler(7, num_replicas=2, rank=r, shuffle=False)) for r in range(2)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5]]


def test_seeded_items_do_not_depend_on_order_or_global_state():
    ds = SeededDataset(Draws(), seed=0)
    ds.set_epoch(2)
    forward = [ds[i] for i in range(6)]
    seed_all(123)
    before = rng_state()
    backward = [ds[i] for i in reversed(range(6))][::-1]
    assert forward == backward
    after = rng_state()
    assert torch.equal(before["torch"], after["torch"])  # the caller's stream is untouched
    assert before["python"] == after["python"]
    # Different items and different epochs draw differently.
    assert len({d[1] for d in forward}) == 6
    ds.set_epoch(3)
    assert [ds[i] for i in range(6)] != forward


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_persistent_workers_see_each_new_epoch(context):
    # Workers started in epoch 0 and kept alive must draw epoch 1's and 2's numbers, exactly as
    # the main process (workers=0) does; with a stale epoch they would repeat epoch 0's draws.
    ds = SeededDataset(Draws(), seed=5)
    loader = DataLoader(
        ds,
        batch_size=2,
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context=context,
        collate_fn=list,
    )
    iterators, previous = set(), None
    for epoch in range(3):
        ds.set_epoch(epoch)
        got = [item for batch in loader for item in batch]
        iterators.add(id(loader._iterator))  # one iterator, one set of workers, for all epochs
        expected = [ds[i] for i in range(6)]  # computed in the main process
        assert got == expected, f"epoch {epoch}"
        assert got != previous
        previous = got
    assert len(iterators) == 1


def test_rng_state_survives_a_weights_only_checkpoint():
    seed_all(7)
    state = rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    buf = io.BytesIO()
    torch.save({"rng": state}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["rng"]
    seed_all(99)
    set_rng_state(loaded)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def _interleaved(shards: list[list[int]]) -> list[int]:
    """The global order the ranks' shards were dealt from (position p is rank p % W's)."""
    w = len(shards)
    return [shards[p % w][p // w] for p in range(sum(len(s) for s in shards))]


@pytest.mark.parametrize(
    "before, after",
    [((2, 2), (2, 2)), ((2, 2), (1, 2)), ((1, 2), (2, 2)), ((2, 2), (1, 4)), ((2, 3), (3, 1))],
)
def test_resume_with_other_processes_or_batch_continues_at_the_same_sample(before, after):
    # (processes, clips per process) of the interrupted run and of the resumed one.
    (w, b), (w2, b2) = before, after
    n, epoch, done = 31, 4, 3  # 31 videos, stopped after 3 iterations of epoch 4
    shards = []
    for r in range(w):
        s = EpochSampler(n, num_replicas=w, rank=r, seed=9)
        s.set_epoch(epoch)
        shards.append(list(s))
    order = _interleaved(shards)  # the uninterrupted epoch, as the interrupted run dealt it
    consumed = done * b * w  # every rank drew `done` batches of `b`

    samplers = [EpochSampler(n, num_replicas=w2, rank=r, seed=9) for r in range(w2)]
    for s in samplers:
        s.set_epoch(epoch, start=consumed)
    rest = [list(s) for s in samplers]
    assert len({len(r) for r in rest}) == 1  # every rank has as many batches (none waits)
    # The resumed ranks together continue the very same order, from the first unused sample.
    assert _interleaved(rest)[: n - consumed] == order[consumed:n]
    if (w2, b2) == (w, b):  # the same launch: each rank exactly where it was, padding included
        assert rest == [s[done * b :] for s in shards]
    if w2 * b2 == w * b:  # the same global batch: the same samples in every later step
        steps = [sorted(order[i : i + w * b]) for i in range(consumed, n - w * b + 1, w * b)]
        resumed = _interleaved(rest)
        assert steps == [
            sorted(resumed[i : i + w * b]) for i in range(0, len(steps) * w * b, w * b)
        ]


def test_a_resumed_epoch_continues_the_schedule_at_the_fraction_done():
    # 32 videos: stopped by 2 processes x 2 clips after 2 iterations (8 samples, a quarter of the
    # epoch); resumed by 1 process x 2 clips, whose epoch has 16 iterations: it starts at 4.
    state = RunState(epoch=1, iteration=2, samples_done=8, epoch_samples=32, world_size=2, batch=2)
    sampler = EpochSampler(32, num_replicas=1, rank=0, seed=0)
    start_epoch(state, sampler, SeededDataset(Draws(), seed=0), batch=2, iters_per_epoch=16, rank=0)
    assert state.iteration == 4 and len(sampler) == 24  # the remaining 24 samples, 12 batches
    # Another training list: the position means nothing any more.
    state = RunState(epoch=1, iteration=2, samples_done=8, epoch_samples=30, world_size=2, batch=2)
    with pytest.raises(ValueError, match="restore that list"):
        start_epoch(state, sampler, SeededDataset(Draws(), seed=0), 2, 16, 0)


class _FakeGenerator:
    """Stands for one GPU's default generator (this machine has no GPU)."""

    def __init__(self, index: int) -> None:
        self.state = torch.full((16,), index, dtype=torch.uint8)

    def get_state(self) -> torch.Tensor:
        return self.state

    def set_state(self, state: torch.Tensor) -> None:
        self.state = state


def _fake_gpus(monkeypatch, count: int, current: int) -> tuple:
    gens = tuple(_FakeGenerator(i) for i in range(count))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "default_generators", gens)
    for module in (torch.cuda, torch.cuda.random):
        monkeypatch.setattr(module, "current_device", lambda: current)
        monkeypatch.setattr(module, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda.random, "_lazy_init", lambda: None)
    monkeypatch.setattr(torch.cuda.random, "_lazy_call", lambda cb, **kw: cb())
    return gens


def test_cuda_rng_state_is_the_ranks_own_and_restores_with_fewer_gpus(monkeypatch):
    # The rank on cuda:2 of a 4-GPU node saves its own device's generator only ...
    gens = _fake_gpus(monkeypatch, count=4, current=2)
    saved = rng_state()
    assert torch.equal(saved["cuda"], gens[2].state)
    # ... and the run resumes on a machine with one GPU: the state goes to that one.
    gens = _fake_gpus(monkeypatch, count=1, current=0)
    set_rng_state(saved)
    assert torch.equal(gens[0].state, torch.full((16,), 2, dtype=torch.uint8))
    # Checkpoints written before held one state per visible GPU: the current device's is used.
    set_rng_state(dict(saved, cuda=[torch.full((16,), d, dtype=torch.uint8) for d in range(4)]))
    assert torch.equal(gens[0].state, torch.zeros(16, dtype=torch.uint8))


def test_per_sample_seeding_leaves_the_cuda_generators_alone(monkeypatch):
    # With -j 0 the items load in the training process: torch.manual_seed there re-seeded every
    # CUDA generator per sample, so dropout's CUDA stream was not the one a checkpoint resumes.
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: seeded.append(("all", s)))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda s: seeded.append(("one", s)))
    ds = SeededDataset(Draws(), seed=4)
    ds.set_epoch(2)
    items = [ds[i] for i in range(6)]
    assert seeded == []
    # each item's draws are those of the CPU generators seeded from (seed, epoch, index), written
    # out independently of seed_all
    from ops.engine.seeding import derive_seed

    for i, item in enumerate(items):
        s = derive_seed(4, 2, i, 2)
        g = torch.Generator().manual_seed(s)
        expected = (i, random.Random(s).random(), float(np.random.RandomState(s).rand()))
        assert item[:3] == expected and item[3] == float(torch.rand((), generator=g))
