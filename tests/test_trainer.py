"""ops/engine/trainer.py in one process: gradient accumulation around skipped iterations with a
gradient scaler, and validation that honours a stop request. (Multi-process behaviour, the
manual all-reduce and DDP's no_sync, is tested with real processes in tests/test_cluster.py.)"""

import torch
from torch import nn

from ops.distributed import DistContext
from ops.engine.lr_scheduler import WarmupSchedule
from ops.engine.state import RunState
from ops.engine.stop import StopRequest
from ops.engine.trainer import LoopSettings, TrainParts, train_one_epoch, validate

CPU = DistContext(False, 0, 1, 0, 1, torch.device("cpu"), None)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 2, 2, generator=g), torch.randint(0, 3, (4,), generator=g)


def test_a_group_whose_iterations_were_all_skipped_makes_no_step_and_no_scaler_call():
    # Three groups of two iterations; both iterations of the second lost all their clips to
    # unreadable videos (the data layer's collate gives None). fp16's GradScaler (its CPU
    # version here; autocast is off, the scaling is the same) must not be asked to step a group
    # without gradients: torch raises "No inf checks were recorded" for that.
    batches = [_batch(1), _batch(2), None, None, _batch(3), _batch(4)]
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = WarmupSchedule(lr=0.1, epochs=1, lr_type="step", lr_steps=(10,))
    settings = LoopSettings(batch_multiplier=2, print_freq=100)
    scaler = torch.amp.GradScaler("cpu")
    parts = TrainParts(model, nn.CrossEntropyLoss(), optimizer, schedule, settings, CPU, scaler)
    stats = train_one_epoch(parts, batches, RunState(), iters_per_epoch=6)
    assert stats.skipped_batches == 2 and stats.clips == 16

    # By hand: two SGD steps, on the mean loss of the first and of the third group.
    expected = _model()
    reference = torch.optim.SGD(expected.parameters(), lr=0.1, momentum=0.9)
    for group in ([batches[0], batches[1]], [batches[4], batches[5]]):
        reference.zero_grad()
        for x, y in group:
            (nn.functional.cross_entropy(expected(x), y) / 2).backward()
        reference.step()
    for a, b in zip(model.parameters(), expected.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # scaling by 2^16 is exact


def test_validation_stops_between_batches_when_asked():
    stop = StopRequest()  # not installed: the test sets the flag as a signal would
    batches = [_batch(10 + i) for i in range(5)]

    def loader_that_is_interrupted():
        for i, batch in enumerate(batches):
            if i == 2:
                stop.requested = True  # SIGTERM while batch 1 was being evaluated
            yield batch

    class Loader(list):  # len() for the progress bar and the agreed number of polls
        def __iter__(self):
            return loader_that_is_interrupted()

    model = _model().eval()
    stats = validate(model, Loader(batches), nn.CrossEntropyLoss(), LoopSettings(), CPU, stop=stop)
    assert stats.stopped_at == 2 and stats.clips == 8  # batches 0 and 1 only
    with torch.no_grad():
        expected = sum(
            nn.functional.cross_entropy(model(x), y, reduction="sum") for x, y in batches[:2]
        )
    assert abs(stats.loss - float(expected) / 8) < 1e-5
