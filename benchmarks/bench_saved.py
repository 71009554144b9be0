"""What a training step keeps for the backward: plain against the published code, and the
allocator's peak of each configuration.

    python -m benchmarks.bench_saved             # RNL-TSM-ResNet50, 2 clips x 8 frames x 224 px
    python -m benchmarks.bench_saved --quick     # 64 px (CI)

Two kinds of rows:

* ``plain keeps: ...``: the bytes autograd keeps for the backward in the plain configuration
  (counted with ``saved_tensors_hooks``, benchmarks/measure.py), against what the published code
  keeps, counted from shapes operation by operation (benchmarks/published_memory.py). A ratio of
  1.000 means plain keeps exactly what the published code keeps.
* ``allocated peak: <config>``: the peak of the bytes held by PyTorch's CPU allocator during one
  training step (forward, cross-entropy, backward), from the profiler's allocation events, as a
  ratio against plain. Unlike the resident memory of benchmarks/bench_step.py it does not depend
  on how the C library reuses freed memory or on other processes, so it is the same on a busy
  machine; what PyTorch does not allocate (oneDNN caches) is not in it.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks import bench_step
from benchmarks.measure import allocated_peak_mib, save_result, saved_bytes_by_unit
from benchmarks.published_memory import RNL_AT, published_step_bytes

NUM_CLASS = 400
PEAK_CONFIGS = ("plain", "fast fp32 no recompute", "fast fp32", "fast fp32 checkpoint_blocks")


def _units(model) -> dict[str, list[torch.nn.Module]]:
    net = model.base_model
    units = {"stem": [net.conv1, net.bn1, net.relu, net.maxpool]}
    for stage in range(1, 5):
        for i, unit in enumerate(getattr(net, f"layer{stage}")):
            units[f"layer{stage}.{i}"] = [unit]
    return units


def plain_against_published(clips: int, frames: int, size: int) -> dict[str, dict]:
    torch.manual_seed(0)
    model, _, _ = bench_step.build("plain", frames, "cpu")
    model.train()
    x = torch.randn(clips * frames, 3, size, size)
    y = torch.randint(0, NUM_CLASS, (clips,))
    exclude = [*model.parameters(), *model.buffers(), x, y]
    kept = saved_bytes_by_unit(
        lambda: torch.nn.functional.cross_entropy(model(x), y), _units(model), exclude, "head"
    )
    published = published_step_bytes(clips, frames, size, NUM_CLASS)
    groups = {
        "RNL units (residual block + channel gate + RNL)": list(RNL_AT),
        "other residual blocks": [
            u for u in published if u.startswith("layer") and u not in RNL_AT
        ],
        "stem and head": ["stem", "head"],
        "whole step": list(published),
    }
    rows = {}
    for name, members in groups.items():
        ours = sum(kept[u] for u in members) / 2**20
        theirs = sum(published[u] for u in members) / 2**20
        rows[f"plain keeps: {name}"] = {
            "plain_mib": round(ours, 2),
            "published_mib": round(theirs, 2),
            "mem_ratio": round(ours / theirs, 4),
        }
    return rows


def step_peak(config: str, clips: int, frames: int, size: int) -> float:
    """Allocator peak (MiB) of one training step of ``config`` (benchmarks/bench_step.py)."""
    torch.manual_seed(0)
    model, _, _ = bench_step.build(config, frames, "cpu")
    x = torch.randn(clips * frames, 3, size, size)
    y = torch.randint(0, NUM_CLASS, (clips,))
    with torch.no_grad():
        model.eval()(x[:frames, :, :32, :32])  # warm-up

    def step() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    return allocated_peak_mib(step)


def allocated_peaks(clips: int, frames: int, size: int) -> dict[str, dict]:
    rows = {
        f"allocated peak: {c}": {"peak_mib": step_peak(c, clips, frames, size)}
        for c in PEAK_CONFIGS
    }
    base = rows["allocated peak: plain"]["peak_mib"]
    for r in rows.values():
        r["mem_ratio"] = round(r["peak_mib"] / base, 3)
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="64 px (CI)")
    p.add_argument("--batch", type=int, default=2, help="clips per step")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224, help="a multiple of 32")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.size = 64
    rows = plain_against_published(args.batch, args.frames, args.size)
    rows.update(allocated_peaks(args.batch, args.frames, args.size))
    print(
        f"RNL-TSM-ResNet50 {args.batch} clips x {args.frames} frames x {args.size} px, CPU, fp32, "
        f"torch {torch.__version__}"
    )
    for name, r in rows.items():
        if "published_mib" in r:
            print(
                f"{name:60s} plain {r['plain_mib']:9.2f} MiB  published {r['published_mib']:9.2f} MiB"
                f"  ratio {r['mem_ratio']:.4f}"
            )
        else:
            print(f"{name:60s} {r['peak_mib']:9.1f} MiB  mem ratio {r['mem_ratio']}")
    result = {"batch": args.batch, "frames": args.frames, "size": args.size, "rows": rows}
    return save_result(result, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
