"""Test-time evaluation of video classifiers: multi-view inference, ensembles, sharding, gathering.

A *view* is one network input: `num_segments` frames of one temporal clip under one spatial crop.
At test time every video is seen through `clips x crops` views (SPEC.md sections 4-5):

- clips: 10 with dense sampling (I3D style), 2 with twice sampling, else 1;
- crops: 1 (resize + centre crop), 3 (three crops along the longer side), 5 (four corners +
  centre) or 10 (those five and their horizontal flips); with `full_res` the crop is the scale size
  (256) instead of the model input size (224).

The data layer (ops/dataset.py) stacks the views of one video crop-major into one tensor
`[views*T*C, H, W]`, so `data.view(B * views, T*C, H, W)` gives one network input per row and a
batch of several videos x views is a single forward pass. The score of a video is the mean of its
view logits (with `softmax=True` each view's logits go through a softmax first, SPEC.md section 4;
the published script took the softmax after averaging, which only rescales the scores).
An ensemble of models averages their video scores, weighted by `coeffs` and divided by the number
of models, as the published script did (the ranking is the same as a weighted mean).

Skipped videos: the data layer (ops/dataset.py) counts the videos it cannot read and returns
None for them. Every sample carries its position in the list, so skipped videos are excluded
from the scores and the metrics (never replaced by another video), the remaining scores stay in
list order, and the number excluded is returned for the caller to report. In an ensemble a video
is scored only if every model could read it.

Used by test_models.py and by main.py's end-of-training evaluation (`evaluate_model`); the metrics
of the scores are in ops/metrics.py, the files test_models.py writes in ops/reports.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ops import utils
from ops.device_augment import DeviceTestViews, EncodedBatch, EncodedClip
from ops.device_input import InputNorm, ToUint8Tensor, norm_from
from ops.sampling import num_clips
from ops.transforms import (
    GroupCenterCrop,
    GroupFullResSample,
    GroupOverSample,
    GroupScale,
    Stack,
)
from ops.utils import autocast, to_device, topk_correct

logger = logging.getLogger(__name__)

TEST_CROP_CHOICES = (1, 3, 5, 10)


# --------------------------------------------------------------------------------------------
# Views and test transforms
# --------------------------------------------------------------------------------------------


def num_test_clips(dense_sample: bool = False, twice_sample: bool = False) -> int:
    """Temporal clips per video at test time: 10 dense (I3D) clips, 2 twice-sampled, else 1."""
    if dense_sample and twice_sample:
        raise ValueError(
            "--dense_sample and --twice_sample cannot be combined: choose one clip sampling scheme"
        )
    return num_clips("test", dense_sample=dense_sample, twice_sample=twice_sample)


def views_per_video(test_crops: int, dense_sample: bool = False, twice_sample: bool = False) -> int:
    """Network inputs per video: clips x crops (SPEC.md sections 4-5)."""
    if test_crops not in TEST_CROP_CHOICES:
        raise ValueError(f"--test_crops must be one of {TEST_CROP_CHOICES}, got {test_crops}")
    return test_crops * num_test_clips(dense_sample=dense_sample, twice_sample=twice_sample)


def build_test_transform(
    test_crops: int,
    scale_size: int,
    crop_size: int,
    input_mean: Sequence[float],
    input_std: Sequence[float],
    device_views: bool = False,
) -> Callable:
    """The test-time frame transform: PIL crops (the published ones), then stacking into a uint8
    clip; the scaling to [0, 1] and the normalisation happen on the device (`ops.utils.to_device`
    with the model's `InputNorm`, bit-identical to doing them here), so `input_mean` / `input_std`
    are only checked here.

    test_crops 1: resize the shorter side to `scale_size`, centre crop `crop_size`;
    3: `GroupFullResSample` (left/right/centre along the longer side, no flips);
    5: `GroupOverSample` without flips (four corners + centre);
    10: `GroupOverSample` with flips. `crop_size` is the scale size for --full_res, else the
    model's input size. The output is `[crops * frames * 3, crop, crop]`, crop-major.

    `device_views=True` (an option; not the published evaluation): the same views cut on the
    device (`ops.device_augment.DeviceTestViews`: decoded, resized with antialiased bilinear
    instead of PIL's bilinear), scores within a small margin of the PIL ones
    (tests/test_device_augment.py measures it on the published-format test data).
    """
    if device_views:
        norm_from(input_mean, input_std)
        return DeviceTestViews(test_crops, scale_size, crop_size)
    if test_crops == 1:
        cropping = [GroupScale(scale_size), GroupCenterCrop(crop_size)]
    elif test_crops == 3:
        cropping = [GroupFullResSample(crop_size, scale_size, flip=False)]
    elif test_crops == 5:
        cropping = [GroupOverSample(crop_size, scale_size, flip=False)]
    elif test_crops == 10:
        cropping = [GroupOverSample(crop_size, scale_size, flip=True)]
    else:
        raise ValueError(f"--test_crops must be one of {TEST_CROP_CHOICES}, got {test_crops}")
    norm_from(input_mean, input_std)  # a one-line error now rather than on the device later
    return torchvision.transforms.Compose([*cropping, Stack(roll=False), ToUint8Tensor()])


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def average_views(logits: torch.Tensor, num_views: int, softmax: bool = False) -> torch.Tensor:
    """Video scores from view logits: `[B * num_views, K]` -> `[B, K]` (float32).

    Rows of one video are consecutive (crop-major order inside a video does not matter for a mean).
    With `softmax`, each view's logits become probabilities before averaging.
    """
    if logits.dim() != 2 or logits.size(0) % num_views != 0:
        raise ValueError(
            f"expected view logits [videos*{num_views}, classes], got shape {tuple(logits.shape)}"
        )
    logits = logits.float()
    if softmax:
        logits = F.softmax(logits, dim=1)
    return logits.view(-1, num_views, logits.size(1)).mean(dim=1)  # [B, K]


def ensemble_scores(
    scores: Sequence[torch.Tensor], coeffs: Sequence[float] | None = None
) -> torch.Tensor:
    """Average the video scores `[N, K]` of several models: `sum_i coeff_i * s_i / len(scores)`."""
    if not scores:
        raise ValueError("ensemble_scores needs at least one score tensor")
    coeffs = [1.0] * len(scores) if coeffs is None else list(coeffs)
    if len(coeffs) != len(scores):
        raise ValueError(f"got {len(coeffs)} coefficients for {len(scores)} models")
    total = torch.zeros_like(scores[0], dtype=torch.float32)
    for c, s in zip(coeffs, scores):
        if s.shape != scores[0].shape:
            raise ValueError(
                f"ensemble members disagree on the score shape: {tuple(s.shape)} vs "
                f"{tuple(scores[0].shape)}; check that all weights have the same classes"
            )
        total += float(c) * s.float()
    return total / len(scores)


# --------------------------------------------------------------------------------------------
# Loading: list positions travel with the samples
# --------------------------------------------------------------------------------------------


class IndexedDataset(Dataset):
    """Wrap a dataset so that item i is `(i, item)`, restricted to positions `[start, stop)`.

    The position lets the evaluation put every score back in list order and identify the videos
    that the data layer's collate dropped; the range is this process's shard under torchrun.
    """

    def __init__(self, dataset: Dataset, start: int = 0, stop: int | None = None) -> None:
        self.dataset = dataset
        self.start = start
        self.stop = len(dataset) if stop is None else stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, i: int):
        index = self.start + i
        return index, self.dataset[index]


def collate_indexed(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collate `(index, item)` pairs into `(indices, data, labels, requested)`.

    An item is `(data, label)`, or None for a video the data layer had to skip (the contract of
    ops/dataset.py). `indices` [B'] are the list positions kept, `data` [B', ...] and `labels`
    [B'] their samples, and `requested` [B] every position asked for, so that the caller can
    count the skipped ones.
    """
    requested = torch.tensor([index for index, _ in batch], dtype=torch.int64)
    kept = [(index, item) for index, item in batch if item is not None]
    if not kept:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, torch.zeros(0), empty, requested
    items = [item[0] for _, item in kept]
    return (
        torch.tensor([index for index, _ in kept], dtype=torch.int64),
        EncodedBatch(items)
        if isinstance(items[0], EncodedClip)
        else torch.stack([torch.as_tensor(x) for x in items]),
        torch.tensor([int(item[1]) for _, item in kept], dtype=torch.int64),
        requested,
    )


def shard_range(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous `[start, stop)` of `num_items` for `rank`; shard sizes differ by at most one."""
    return num_items * rank // world_size, num_items * (rank + 1) // world_size


def make_test_loader(
    dataset: Dataset,
    batch_size: int = 1,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    max_num: int | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """DataLoader over this rank's contiguous shard of the first `max_num` videos, in list order.

    Items are `(indices [B'], data [B', views*T*C, H, W], labels [B'], requested [B])` (see
    `collate_indexed`); `batch_size` counts videos.
    """
    total = len(dataset) if max_num is None or max_num <= 0 else min(max_num, len(dataset))
    start, stop = shard_range(total, rank, world_size)
    return DataLoader(
        IndexedDataset(dataset, start, stop),
        batch_size=batch_size,  # in list order (no shuffle); workers restart for each loader
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=collate_indexed,
    )


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """Video scores of one evaluation, in list order (skipped videos left out)."""

    scores: torch.Tensor  # [N, K] float32
    labels: torch.Tensor  # [N] int64
    indices: torch.Tensor  # [N] positions in the test list
    num_skipped: int = 0  # videos some model's loader could not read
    seconds: float = 0.0
    num_views: int = 0  # network inputs run (videos x views, summed over models)
    extra: dict = field(default_factory=dict)

    @property
    def videos_per_s(self) -> float:
        return self.scores.size(0) / self.seconds if self.seconds > 0 else 0.0

    @property
    def clips_per_s(self) -> float:
        return self.num_views / self.seconds if self.seconds > 0 else 0.0


class AutocastForward(nn.Module):
    """Runs the wrapped model under ``--amp`` autocast, entered inside ``forward``.

    Autocast state belongs to a thread, and DataParallel runs each replica in a thread of its own,
    handing on only whether CUDA autocast is on, not its dtype: autocast entered around a
    DataParallel call runs the replicas in float16 under ``--amp bf16`` (and a CPU-side autocast
    not at all). Entered here, inside the module that DataParallel replicates, every replica
    autocasts in the dtype asked for, on its own device.
    """

    def __init__(self, model: nn.Module, amp: str) -> None:
        super().__init__()
        autocast(torch.device("cpu"), amp)  # rejects an unknown --amp value here, not mid-run
        self.model = model
        self.amp = amp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, self.amp):
            return self.model(x)

    def extra_repr(self) -> str:
        return f"amp={self.amp!r}"


def inference_model(
    model: nn.Module, device: torch.device, amp: str = "off", gpu_ids: Sequence[int] = ()
) -> nn.Module:
    """``model`` on ``device``, ready for ``evaluate_ensemble``: wrapped in ``AutocastForward``
    when ``amp`` is on, then in DataParallel over ``gpu_ids`` when there are several (so that
    the autocast runs inside every replica; ``device`` must be ``gpu_ids[0]``)."""
    model = model.to(device)
    if amp != "off":
        model = AutocastForward(model, amp)
    if len(gpu_ids) > 1:
        model = nn.DataParallel(model, device_ids=list(gpu_ids))
    return model


def _autocast_inside(model: nn.Module, amp: str) -> nn.Module:
    """``model`` with autocast entered in its forward (see ``AutocastForward``)."""
    if amp == "off" or isinstance(model, AutocastForward):
        return model
    if isinstance(model, nn.DataParallel):
        if isinstance(model.module, AutocastForward):
            return model
        raise ValueError(
            f"--amp {amp} with a DataParallel model whose replicas would not autocast: build it "
            "with ops.evaluation.inference_model(model, device, amp, gpu_ids)"
        )
    return AutocastForward(model, amp)


def _forward_views(
    model: torch.nn.Module,
    data: torch.Tensor,
    num_views: int,
    device: torch.device,
    softmax: bool,
    norm: InputNorm | None = None,
) -> torch.Tensor:
    """One forward pass for a batch `[B, views*T*C, H, W]` -> video scores `[B, K]` on CPU.

    ``model`` enters its own autocast (``_autocast_inside``); a uint8 batch is normalised on the
    device with ``norm``."""
    x = to_device(data, device, norm=norm)  # float [B, views*T*C, H, W]
    b, c, h, w = x.shape
    if c % num_views != 0:
        raise ValueError(
            f"a video tensor has {c} channels, not a multiple of {num_views} views; "
            "the test crops/clips settings do not match the data"
        )
    x = x.view(b * num_views, c // num_views, h, w)
    logits = model(x)  # [B*V, K]
    return average_views(logits, num_views=num_views, softmax=softmax).cpu()


@torch.no_grad()
def evaluate_ensemble(
    models: Sequence[torch.nn.Module],
    loaders: Sequence[DataLoader],
    num_views: Sequence[int],
    device: torch.device,
    coeffs: Sequence[float] | None = None,
    softmax: bool = False,
    amp: str = "off",
    progress: bool = True,
) -> EvalResult:
    """Run every model over its loader in lockstep and ensemble the video scores batch by batch.

    The loaders must come from `make_test_loader` with the same list, batch size and shard, so
    batch i of every loader covers the same list positions; a video dropped by any loader is left
    out. The bar shows the running top-1/top-5 of the ensembled scores. With ``amp`` on, each
    model runs under autocast entered inside its forward (``AutocastForward``); a DataParallel
    model must come from ``inference_model`` for its replicas to autocast.
    """
    if not (len(models) == len(loaders) == len(num_views)):
        raise ValueError("evaluate_ensemble needs one loader and one view count per model")
    norms = [InputNorm.find(m) for m in models]  # uint8 clips are normalised with these
    models = [_autocast_inside(m, amp) for m in models]
    for m in models:
        m.eval()
    out_scores, out_labels, out_indices = [], [], []
    num_skipped = 0
    views_run = 0
    correct1 = correct5 = 0.0
    seen = 0
    total_batches = len(loaders[0])
    bar = utils.progress(total=total_batches, desc="test", unit="batch", enabled=progress)
    log_every = max(1, total_batches // 10)
    start = time.perf_counter()
    for step, batches in enumerate(zip(*loaders)):
        per_model = []
        requested: set[int] = set()
        for model, (indices, data, labels, asked), v, norm in zip(
            models, batches, num_views, norms
        ):
            run = len(indices) > 0
            scores = _forward_views(model, data, v, device, softmax, norm) if run else None
            views_run += len(indices) * v
            per_model.append((indices, scores, labels))
            requested.update(asked.tolist())
        positions = [set(ix.tolist()) for ix, _, _ in per_model]
        common = sorted(set.intersection(*positions))
        num_skipped += len(requested) - len(common)
        if common:
            aligned = []
            labels = None
            for indices, scores, lab in per_model:
                row = {p: r for r, p in enumerate(indices.tolist())}
                sel = torch.tensor([row[p] for p in common], dtype=torch.int64)
                aligned.append(scores[sel])
                labels = lab[sel] if labels is None else labels
            video_scores = ensemble_scores(aligned, coeffs)
            out_scores.append(video_scores)
            out_labels.append(labels)
            out_indices.append(torch.tensor(common, dtype=torch.int64))
            n = len(common)
            c1, c5 = topk_correct(video_scores, labels, (1, 5))
            correct1 += c1
            correct5 += c5
            seen += n
        bar.update(1)
        run1 = 100.0 * correct1 / max(seen, 1)
        run5 = 100.0 * correct5 / max(seen, 1)
        bar.set_postfix(top1=f"{run1:.2f}", top5=f"{run5:.2f}", refresh=False)
        if progress and bar.disable and ((step + 1) % log_every == 0 or step + 1 == total_batches):
            logger.info(
                "test batch %d/%d: %d videos, running top-1 %.2f%% top-5 %.2f%%",
                step + 1,
                total_batches,
                seen,
                run1,
                run5,
            )
    bar.close()
    seconds = time.perf_counter() - start
    if out_scores:
        scores = torch.cat(out_scores)
        labels = torch.cat(out_labels)
        indices = torch.cat(out_indices)
    else:
        scores, labels, indices = (
            torch.zeros(0, 0),
            torch.zeros(0, dtype=torch.int64),
            torch.zeros(0, dtype=torch.int64),
        )
    return EvalResult(scores, labels, indices, num_skipped, seconds, views_run)


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset: Dataset | DataLoader,
    num_views: int,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    workers: int = 0,
    softmax: bool = False,
    amp: str = "off",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Video scores `[N, K]` and labels `[N]` of one model on a test-mode dataset, in list order.

    `dataset` is a test-mode TSNDataSet (item `[views*T*C, H, W]`, label) or a loader made by
    `make_test_loader`; `num_views` = clips x crops of that dataset's transform/sampling. Videos the
    data layer skipped are left out (see the module docstring). This is the single-process entry
    point used by main.py's demo; test_models.py uses `evaluate_ensemble` directly.
    """
    device = torch.device(device)
    if isinstance(dataset, DataLoader):
        loader = dataset
    else:
        loader = make_test_loader(dataset, batch_size=batch_size, workers=workers)
    result = evaluate_ensemble(
        [model], [loader], [num_views], device, softmax=softmax, amp=amp, progress=progress
    )
    if result.num_skipped:
        logger.warning("%d unreadable videos were left out of the evaluation", result.num_skipped)
    return result.scores, result.labels


# --------------------------------------------------------------------------------------------
# Distributed gathering
# --------------------------------------------------------------------------------------------


def gather_results(result: EvalResult, extra_counts: dict | None = None) -> EvalResult | None:
    """Collect every rank's shard on rank 0, sorted by list position; other ranks get None.

    Without an initialised process group this returns `result` unchanged. `extra_counts` (e.g.
    the data layer's bad-data counters) are summed over ranks into the result's `extra`.
    """
    extra_counts = dict(extra_counts or {})
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        result.extra = extra_counts
        return result
    payload = {
        "scores": result.scores.cpu(),
        "labels": result.labels.cpu(),
        "indices": result.indices.cpu(),
        "num_skipped": result.num_skipped,
        "seconds": result.seconds,
        "num_views": result.num_views,
        "extra": extra_counts,
    }
    rank = dist.get_rank()
    gathered = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(payload, gathered, dst=0)
    if rank != 0:
        return None
    parts = [p for p in gathered if p["scores"].numel() > 0]
    if parts:
        scores = torch.cat([p["scores"] for p in parts])
        labels = torch.cat([p["labels"] for p in parts])
        indices = torch.cat([p["indices"] for p in parts])
        order = torch.argsort(indices)
        scores, labels, indices = scores[order], labels[order], indices[order]
    else:
        scores, labels, indices = result.scores, result.labels, result.indices
    merged_extra: dict = {}
    for p in gathered:
        for key, value in p["extra"].items():
            merged_extra[key] = merged_extra.get(key, 0) + value
    return EvalResult(
        scores=scores,
        labels=labels,
        indices=indices,
        num_skipped=sum(p["num_skipped"] for p in gathered),
        seconds=max(p["seconds"] for p in gathered),  # ranks run in parallel: wall time
        num_views=sum(p["num_views"] for p in gathered),
        extra=merged_extra,
    )
