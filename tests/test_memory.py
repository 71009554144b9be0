"""ops/memory.py: with glibc's mmap threshold pinned, freed activations leave the process's
resident memory; with glibc's default (a threshold raised by every large free) they stay in a
fragmented heap, unless the stage hooks (``return_memory_at``, what CPU training uses) give the
heap's free pages back. Each case runs in a fresh process (the settings are process-wide)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A step's pattern in miniature: one large tensor freed (glibc raises its threshold to its size),
# then 24 activations of 4 MiB allocated and touched, all freed but the last one allocated.
CHILD = r"""
import json, sys
import torch
from ops.memory import pin_mmap_threshold
from benchmarks.measure import current_rss_mib
pinned = pin_mmap_threshold() if sys.argv[1] == "pin" else False
big = torch.ones(4 * 2**20)  # 16 MiB: glibc raises its threshold to this (at most 32 MiB)
del big
base = current_rss_mib()
acts = [torch.ones(2**20) for _ in range(24)]  # 24 x 4 MiB, touched
last = acts[-1]
del acts
print(json.dumps({"pinned": pinned, "kept_mib": current_rss_mib() - base}))
"""


def _run(code: str, mode: str, **env) -> dict:
    """Run ``code`` with argument ``mode`` in a fresh Python (glibc's malloc settings of this
    environment left out, ``env`` added); the JSON dict it prints last."""
    out = subprocess.run(
        [sys.executable, "-c", code, mode], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"} | env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc / Linux only")
def test_pinned_threshold_gives_freed_activations_back():
    default, pinned = _run(CHILD, "default"), _run(CHILD, "pin")
    assert pinned["pinned"]
    # 4 MiB still live; the other 92 MiB freed: back to the system only with the pinned threshold
    assert pinned["kept_mib"] < 16, pinned
    assert default["kept_mib"] > 64, default  # glibc's default keeps them resident


def test_a_users_own_glibc_setting_is_left_alone():
    assert _run(CHILD, "pin", MALLOC_MMAP_THRESHOLD_="1048576")["pinned"] is False


# The CPU training process's way (return_memory_at): glibc's defaults (freed blocks reused), and
# the heap's free pages given back after each stage's forward and after its backward. Stage
# "churn" frees 72 MiB of 4 MiB temporaries in its forward and again in its backward.
CHURN = r"""
import json, sys
import torch
from torch import nn
from ops.memory import return_memory_at
from benchmarks.measure import current_rss_mib

KEPT = []  # every fourth block stays: the freed ones are holes, not the heap's top

class Temporaries(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        acts = [torch.ones(2**20) for _ in range(24)]  # 24 x 4 MiB, touched
        KEPT.extend(acts[3::4])  # 24 MiB kept, 72 MiB freed
        return x * acts[-1][0]
    @staticmethod
    def backward(ctx, g):
        acts = [torch.ones(2**20) for _ in range(24)]
        KEPT.extend(acts[3::4])
        return g * acts[-1][0]

class Churn(nn.Module):
    def forward(self, x):
        return Temporaries.apply(x)

stages = nn.Sequential(nn.Linear(8, 8), Churn())
if sys.argv[1] == "trim":
    return_memory_at([stages[1]])
big = torch.ones(4 * 2**20)  # 16 MiB: glibc raises its threshold to this (at most 32 MiB)
del big
x = torch.ones(4, 8)
base = current_rss_mib()
y = stages(x)
after_forward = current_rss_mib() - base
y.sum().backward()
after_backward = current_rss_mib() - base
print(json.dumps({"forward": after_forward, "backward": after_backward}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc / Linux only")
def test_stage_hooks_give_the_heaps_free_pages_back_after_forward_and_backward():
    plain, trimmed = _run(CHURN, "plain"), _run(CHURN, "trim")
    # kept: 24 MiB after the forward, 48 after the backward; freed: 72 MiB in each
    assert plain["forward"] > 24 + 40 and plain["backward"] > 48 + 40, plain  # the heap keeps them
    assert trimmed["forward"] < 24 + 16 and trimmed["backward"] < 48 + 16, trimmed


def test_stage_hooks_trim_only_while_gradients_are_recorded(monkeypatch):
    from torch import nn

    import ops.memory as memory

    calls: list[str] = []
    monkeypatch.setattr(memory, "trim_heap", lambda: calls.append("trim") or True)
    stages = [nn.Linear(4, 4), nn.Linear(4, 4)]
    handles = memory.return_memory_at(stages)
    x = torch.randn(2, 4, requires_grad=True)
    y = stages[1](stages[0](x))
    assert len(calls) == 2  # after each stage's forward
    y.sum().backward()
    assert len(calls) == 4  # and after each stage's backward
    with torch.no_grad():
        stages[1](stages[0](x))
    assert len(calls) == 4  # evaluation: nothing
    for h in handles:
        h.remove()
    stages[1](stages[0](x)).sum().backward()
    assert len(calls) == 4


def test_backbone_stages_of_the_video_models():
    from ops.memory import backbone_stages
    from ops.models import TSN

    model = TSN(5, 2, "RGB", base_model="resnet18", pretrain="scratch", print_spec=False)
    assert backbone_stages(model) == [model.base_model.layer1, model.base_model.layer2,
                                      model.base_model.layer3, model.base_model.layer4]  # fmt: skip


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc / Linux only")
def test_training_processes_choose_stage_trims_on_an_eager_cpu_and_the_threshold_elsewhere(
    monkeypatch,
):
    import ops.memory as memory
    from ops.models import TSN

    pinned: list[bool] = []
    heap: list[bool] = []
    monkeypatch.setattr(memory, "pin_mmap_threshold", lambda: pinned.append(True) or True)
    monkeypatch.setattr(memory, "keep_blocks_in_heap", lambda: heap.append(True) or True)
    model = TSN(5, 2, "RGB", base_model="resnet18", pretrain="scratch", print_spec=False)
    assert memory.give_memory_back(model, "cpu", compiled=False) == "stage trims"
    assert not pinned and model.base_model.layer1._forward_pre_hooks  # hooks on the stages
    assert heap == [True]  # and every block from the heap, given back by the trims only
    assert memory.give_memory_back(model, "cpu", compiled=True) == "mmap threshold"
    assert memory.give_memory_back(model, "cuda", compiled=False) == "mmap threshold"
    assert len(pinned) == 2 and heap == [True]


# keep_blocks_in_heap: a block above glibc's own largest threshold (32 MiB) freed, then another
# large one (a little smaller: PyTorch's 64-byte aligned requests need a few bytes more than the
# block they free); then the heap trimmed by hand.
BIG = r"""
import json, resource, sys
import torch
from ops.memory import keep_blocks_in_heap, trim_heap
from benchmarks.measure import current_rss_mib

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

kept = keep_blocks_in_heap() if sys.argv[1] == "heap" else False
a = torch.ones(12 * 2**20)  # 48 MiB, touched
del a
f0 = faults()
b = torch.ones(10 * 2**20)  # 40 MiB, touched
refaults = faults() - f0
del b
before = current_rss_mib()
trim_heap()
print(json.dumps({"kept": kept, "refaults": refaults, "trimmed_mib": before - current_rss_mib()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc / Linux only")
def test_blocks_kept_in_the_heap_are_reused_without_faults_and_given_back_by_the_trim():
    default, heap = _run(BIG, "default"), _run(BIG, "heap")
    assert heap["kept"]
    pages = 40 * 2**20 // resource.getpagesize()
    # glibc's default: its own mapping each time, every page faulted in again, nothing left to trim
    assert default["refaults"] > pages // 2, default
    assert default["trimmed_mib"] < 8, default
    # from the heap: the freed block's pages are used again; it stays resident until the trim
    assert heap["refaults"] < pages // 20, heap
    assert heap["trimmed_mib"] > 40, heap


@pytest.mark.parametrize(
    "env",
    [{"MALLOC_TRIM_THRESHOLD_": "131072"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}],
    ids=["malloc-variable", "tunables"],
)
def test_a_users_own_glibc_malloc_settings_keep_the_heap_as_it_is(env):
    assert _run(BIG, "heap", **env)["kept"] is False
