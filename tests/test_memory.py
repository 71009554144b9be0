"""ops/memory.py: with glibc's mmap threshold pinned, freed activations leave the process's
resident memory; with glibc's default (a threshold raised by every large free) they stay in a
fragmented heap. Each case runs in a fresh process (the setting is process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

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


def _child(mode: str, **env) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"} | env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc / Linux only")
def test_pinned_threshold_gives_freed_activations_back():
    default, pinned = _child("default"), _child("pin")
    assert pinned["pinned"]
    # 4 MiB still live; the other 92 MiB freed: back to the system only with the pinned threshold
    assert pinned["kept_mib"] < 16, pinned
    assert default["kept_mib"] > 64, default  # glibc's default keeps them resident


def test_a_users_own_glibc_setting_is_left_alone():
    assert _child("pin", MALLOC_MMAP_THRESHOLD_="1048576")["pinned"] is False
