"""ops/evaluation.py (view averaging, ensembles, lockstep inference), ops/metrics.py and
ops/reports.py (metrics and writers).

Expected values are computed by hand or by independent loops in the tests.
"""

from __future__ import annotations

import csv
import math
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from ops import evaluation, metrics, reports
from ops.utils import autocast


# ---------------------------------------------------------------- views
@pytest.mark.parametrize(
    "crops, dense, twice, expected",
    [(1, False, False, 1), (3, False, False, 3), (5, True, False, 50), (10, False, True, 20)],
)
def test_views_per_video(crops, dense, twice, expected):
    assert evaluation.views_per_video(crops, dense_sample=dense, twice_sample=twice) == expected


def test_views_per_video_rejects_bad_settings():
    with pytest.raises(ValueError, match="test_crops"):
        evaluation.views_per_video(4)
    with pytest.raises(ValueError, match="cannot be combined"):
        evaluation.num_test_clips(dense_sample=True, twice_sample=True)


def test_average_views_hand_values():
    # two videos x two views, two classes
    logits = torch.tensor([[1.0, 3.0], [3.0, 5.0], [0.0, 0.0], [2.0, -2.0]])
    out = evaluation.average_views(logits, num_views=2)
    assert torch.allclose(out, torch.tensor([[2.0, 4.0], [1.0, -1.0]]))


def test_average_views_softmax_before_mean():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])  # probs .25/.75, .75/.25
    out = evaluation.average_views(logits, num_views=2, softmax=True)
    assert torch.allclose(out, torch.tensor([[0.5, 0.5]]), atol=1e-6)


def test_average_views_rejects_partial_video():
    with pytest.raises(ValueError, match="view logits"):
        evaluation.average_views(torch.zeros(3, 2), num_views=2)


def test_ensemble_scores_weighted_sum_over_count():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 4.0]])
    out = evaluation.ensemble_scores([a, b], coeffs=[2.0, 0.5])
    assert torch.allclose(out, torch.tensor([[1.0, 1.0]]))  # (2*a + 0.5*b) / 2
    with pytest.raises(ValueError, match="coefficients"):
        evaluation.ensemble_scores([a, b], coeffs=[1.0])
    with pytest.raises(ValueError, match="same classes"):
        evaluation.ensemble_scores([a, torch.zeros(1, 3)])


# ---------------------------------------------------------------- metrics
def _toy_scores():
    # 6 videos, 6 classes; class 5 never occurs.
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    scores = torch.zeros(6, 6)
    ranking = [
        [0, 1, 2, 3, 4, 5],  # correct
        [1, 2, 3, 4, 0, 5],  # label 0 at rank 5 -> top-5 hit
        [1, 0, 2, 3, 4, 5],  # correct
        [5, 4, 3, 2, 0, 1],  # label 1 at rank 6 -> miss
        [3, 2, 0, 1, 4, 5],  # label 2 at rank 2
        [3, 0, 1, 2, 4, 5],  # correct
    ]
    for i, order in enumerate(ranking):
        for r, c in enumerate(order):
            scores[i, c] = 10.0 - r
    return scores, labels


def test_summarize_hand_values():
    scores, labels = _toy_scores()
    m = metrics.summarize(scores, labels)
    assert m["num_videos"] == 6
    assert m["top1"] == pytest.approx(300 / 6)
    assert m["top5"] == pytest.approx(500 / 6)
    # per class: 0 -> 1/2, 1 -> 1/2, 2 -> 0, 3 -> 1, 4 and 5 absent
    assert m["mean_class_acc"] == pytest.approx((50 + 50 + 0 + 100) / 4)


def test_summarize_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match="classes"):
        metrics.summarize(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_confusion_matrix_and_per_class_accuracy():
    cm = metrics.confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = expected[0, 1] = expected[1, 1] = expected[2, 1] = 1
    assert (cm == expected).all()
    acc = metrics.per_class_accuracy(cm)
    assert acc[:3].tolist() == [50.0, 100.0, 0.0] and math.isnan(acc[3])


# ---------------------------------------------------------------- writers
def test_save_scores_roundtrip(tmp_path):
    path = tmp_path / "sub" / "out.npz"
    scores, labels = _toy_scores()
    names = [f"video {i}" for i in range(6)]
    reports.save_scores(str(path), scores, labels, torch.arange(6) * 2, videos=names)
    data = np.load(path)  # allow_pickle defaults to False: every array is plain
    assert data["videos"].tolist() == names
    assert data["scores"].dtype == np.float32 and np.allclose(data["scores"], scores.numpy())
    assert data["labels"].tolist() == labels.tolist()
    assert data["indices"].tolist() == [0, 2, 4, 6, 8, 10]


def test_prediction_csv_top1_and_top5(tmp_path):
    scores, _ = _toy_scores()
    names = [f"v{i}" for i in range(6)]
    classes = list("abcdef")
    p1 = tmp_path / "top1.csv"
    reports.write_prediction_csv(str(p1), names, scores, classes)
    assert p1.read_text().splitlines() == ["v0;a", "v1;b", "v2;b", "v3;f", "v4;d", "v5;d"]
    p5 = tmp_path / "top5.csv"
    reports.write_prediction_csv(str(p5), names, scores, classes, top5=True)
    assert p5.read_text().splitlines()[3] == "v3;f;e;d;c;a"


def test_write_report(tmp_path):
    scores, labels = _toy_scores()
    paths = reports.write_report(str(tmp_path), scores, labels, list("abcdef"))
    with open(paths["csv"]) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["class_index", "class_name", "videos", "correct", "accuracy"]
    assert rows[1] == ["0", "a", "2", "1", "50.0000"]
    assert rows[3] == ["2", "c", "1", "0", "0.0000"]
    assert rows[6] == ["5", "f", "0", "0", ""]
    cm = np.load(paths["npy"])
    assert cm.sum() == 6 and cm[3, 3] == 1 and cm[1, 5] == 1
    # The heat map: row = true class; cell (3,3) is a whole row (dark), cell (4,4) is empty (white).
    image = np.asarray(Image.open(paths["png"]).convert("RGB"))
    k, margin = 6, 4
    cell = (image.shape[0] - 2 * margin) // k
    assert image.shape[0] == image.shape[1] == k * cell + 2 * margin

    def pixel(r, c):
        return image[margin + r * cell + cell // 2, margin + c * cell + cell // 2].tolist()

    assert pixel(3, 3) == [8, 48, 107]
    assert pixel(4, 4) == [255, 255, 255]
    assert pixel(0, 0) == [132, 152, 181]  # half of the row: 255 - 0.5 * (255 - dark), rounded


# ---------------------------------------------------------------- loading
def test_shard_range_covers_list_contiguously():
    for n in (0, 1, 7, 10):
        for world in (1, 2, 3):
            ranges = [evaluation.shard_range(n, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(ranges[i][1] == ranges[i + 1][0] for i in range(world - 1))
            sizes = [b - a for a, b in ranges]
            assert max(sizes) - min(sizes) <= 1


class _ToyVideos(torch.utils.data.Dataset):
    """Video i is a constant tensor [views*T*C, H, W] whose views differ; None = unreadable."""

    def __init__(self, n, views, t=2, c=3, size=4, bad=(), classes=3):
        self.n, self.views, self.t, self.c, self.size = n, views, t, c, size
        self.bad, self.classes = set(bad), classes

    def __len__(self):
        return self.n

    def video(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.randn(self.views * self.t * self.c, self.size, self.size, generator=g)

    def __getitem__(self, i):
        if i in self.bad:
            return None
        return self.video(i), i % self.classes


class _ToyNet(torch.nn.Module):
    """[N, T*C, H, W] -> [N, K]: a linear map of the per-channel spatial means."""

    def __init__(self, channels, classes, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(classes, channels, generator=g))

    def forward(self, x):
        return x.mean(dim=(2, 3)) @ self.weight.t()


def _expected_scores(net, ds, i, softmax=False):
    """Independent loop: each view separately through the net, then the mean."""
    video = ds.video(i)
    per_view = video.shape[0] // ds.views
    outs = []
    for v in range(ds.views):
        x = video[v * per_view : (v + 1) * per_view].unsqueeze(0)
        y = net(x)[0]
        outs.append(torch.softmax(y, 0) if softmax else y)
    return torch.stack(outs).mean(0)


def test_evaluate_model_matches_per_view_loop_and_skips_bad():
    ds = _ToyVideos(n=7, views=3, bad={2, 5})
    net = _ToyNet(channels=6, classes=3, seed=0)
    loader = evaluation.make_test_loader(ds, batch_size=3)
    result = evaluation.evaluate_ensemble([net], [loader], [3], torch.device("cpu"), progress=False)
    assert result.indices.tolist() == [0, 1, 3, 4, 6]
    assert result.num_skipped == 2
    assert result.labels.tolist() == [i % 3 for i in [0, 1, 3, 4, 6]]
    expected = torch.stack([_expected_scores(net, ds, i) for i in [0, 1, 3, 4, 6]])
    assert torch.allclose(result.scores, expected, atol=1e-5)
    assert result.num_views == 5 * 3

    scores, labels = evaluation.evaluate_model(net, ds, num_views=3, batch_size=2, softmax=True)
    expected_sm = torch.stack([_expected_scores(net, ds, i, True) for i in [0, 1, 3, 4, 6]])
    assert torch.allclose(scores, expected_sm, atol=1e-6)


def test_evaluate_ensemble_intersects_skips_and_weights():
    ds_a = _ToyVideos(n=5, views=2, bad={1})
    ds_b = _ToyVideos(n=5, views=2, bad={3})
    net_a = _ToyNet(channels=6, classes=3, seed=1)
    net_b = _ToyNet(channels=6, classes=3, seed=2)
    loaders = [evaluation.make_test_loader(d, batch_size=2, max_num=4) for d in (ds_a, ds_b)]
    result = evaluation.evaluate_ensemble(
        [net_a, net_b], loaders, [2, 2], torch.device("cpu"), coeffs=[1.0, 3.0], progress=False
    )
    kept = [0, 2]  # max_num=4 drops video 4; 1 and 3 are unreadable for one of the models
    assert result.indices.tolist() == kept
    assert result.num_skipped == 2
    expected = torch.stack(
        [
            (_expected_scores(net_a, ds_a, i) + 3 * _expected_scores(net_b, ds_b, i)) / 2
            for i in kept
        ]
    )
    assert torch.allclose(result.scores, expected, atol=1e-5)


def test_bf16_autocast_close_to_fp32():
    ds = _ToyVideos(n=2, views=2)
    net = _ToyNet(channels=6, classes=3, seed=3)
    ref, _ = evaluation.evaluate_model(net, ds, num_views=2, progress=False)
    low, _ = evaluation.evaluate_model(net, ds, num_views=2, amp="bf16", progress=False)
    assert low.dtype == torch.float32
    assert not torch.equal(low, ref)  # autocast did run the matmul in bf16
    assert torch.allclose(low, ref, atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="amp"):
        autocast(torch.device("cpu"), "fp8")


# ---------------------------------------------------------------- autocast in replica threads
class _DtypeProbe(torch.nn.Module):
    """A linear map of the per-channel means that records, per call, the thread it ran in and the
    dtype its linear layer computed in (what autocast decided in that thread)."""

    def __init__(self, channels=6, classes=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = torch.nn.Linear(channels, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, channels, generator=g))
        self.seen = []

    def forward(self, x):
        y = self.fc(x.mean(dim=(2, 3)))
        self.seen.append((threading.current_thread().name, y.dtype))
        return y


def _in_thread(module, x):
    """module(x) in a new thread, as DataParallel runs each replica (torch's parallel_apply)."""
    out = {}
    thread = threading.Thread(target=lambda: out.update(y=module(x)), name="replica")
    thread.start()
    thread.join()
    return out["y"]


class _ThreadedReplicas(torch.nn.Module):
    """DataParallel's shape on CPU: the batch split in two, each half run in a thread of its own."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return torch.cat([_in_thread(self.module, half) for half in x.chunk(2)])


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_reaches_a_forward_run_in_another_thread(amp, dtype):
    x = torch.randn(4, 6, 3, 3)
    probe = _DtypeProbe()
    # The premise: autocast entered in the calling thread does not reach a replica's thread.
    with autocast(torch.device("cpu"), amp):
        _in_thread(probe, x)
    assert probe.seen == [("replica", torch.float32)]

    probe.seen.clear()
    wrapped = evaluation.inference_model(probe, torch.device("cpu"), amp)
    y = _in_thread(wrapped, x)
    assert probe.seen == [("replica", dtype)]
    assert y.dtype == dtype
    assert evaluation.inference_model(probe, torch.device("cpu"), "off") is probe


def test_evaluation_with_threaded_replicas_runs_them_in_bf16():
    ds = _ToyVideos(n=4, views=2)
    probe = _DtypeProbe()
    replicas = _ThreadedReplicas(evaluation.inference_model(probe, torch.device("cpu"), "bf16"))
    loader = evaluation.make_test_loader(ds, batch_size=2)
    result = evaluation.evaluate_ensemble(
        [replicas], [loader], [2], torch.device("cpu"), amp="bf16", progress=False
    )
    assert [name for name, _ in probe.seen] == ["replica"] * 4  # 2 batches x 2 halves
    assert {dtype for _, dtype in probe.seen} == {torch.bfloat16}

    def per_view(i, low):  # independent loop over the views, in the main thread
        video = ds.video(i).view(2, 6, 4, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            return probe.fc(video.mean(dim=(2, 3))).float().mean(0)

    low = torch.stack([per_view(i, True) for i in range(4)])
    full = torch.stack([per_view(i, False) for i in range(4)])
    assert not torch.equal(low, full)  # bf16 and fp32 scores differ: the dtype shows in them
    assert torch.allclose(result.scores, low, atol=1e-6)


def test_data_parallel_without_the_autocast_wrapper_is_refused_under_amp():
    plain = torch.nn.DataParallel(_DtypeProbe())  # no GPU: DataParallel just holds the module
    ds = _ToyVideos(n=1, views=1)
    loader = evaluation.make_test_loader(ds)
    with pytest.raises(ValueError, match="inference_model"):
        evaluation.evaluate_ensemble([plain], [loader], [1], torch.device("cpu"), amp="bf16")
    wrapped = torch.nn.DataParallel(evaluation.AutocastForward(_DtypeProbe(), "bf16"))
    result = evaluation.evaluate_ensemble(
        [wrapped], [loader], [1], torch.device("cpu"), amp="bf16", progress=False
    )
    assert result.scores.shape == (1, 3)
