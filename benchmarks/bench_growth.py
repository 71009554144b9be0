"""How a training step's cost grows with frames and resolution, plain against fast.

    python -m benchmarks.bench_growth              # RNL-TSM-ResNet50, 2 clips: 8/16/32 frames at
                                                   # 224 px, 224/256/320 px at 8 frames (2 cores: ~25 min)
    python -m benchmarks.bench_growth --quick      # 4/8 frames at 64 px, 64/96 px at 4 frames (CI)
    python -m benchmarks.bench_growth --device cuda --batch 8

The non-local block at layer2 attends over P = frames x (size/8)^2 positions. The published
computation materialises a P x P affinity per clip (and keeps it, and its softmax, for the
backward), so its memory grows with P^2: 4x per doubling of frames, 2x from 224 to 320 px. The
fused attention never holds it. Each cell is one training step (forward, loss, backward, SGD)
measured in a fresh process by benchmarks/bench_step.py: plain, "fast fp32" (the defaults: fused
attention, depthwise region conv, cheap activations recomputed in the backward; the same numbers
as plain) and "fast fp32 checkpoint_blocks" (whole residual blocks recomputed, for long clips).

Nothing is extrapolated: on CPU each process may allocate at most --mem_limit_gib (default: the
memory available when the run starts, less 2 GiB), and a cell that needs more is reported as
"does not fit". Batch 2 is the smallest a training step can use (the channel gate's BatchNorm1d
normalises over clips).
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import bench_step
from benchmarks.measure import available_gib, save_result

CONFIGS = ("plain", "fast fp32", "fast fp32 checkpoint_blocks")


def cells(quick: bool) -> list[tuple[int, int]]:
    """(frames, size) pairs: the frames sweep at the base size, then the size sweep at 8 frames."""
    if quick:
        return [(4, 64), (8, 64), (4, 96)]
    return [(8, 224), (16, 224), (32, 224), (8, 256), (8, 320)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sizes (CI)")
    p.add_argument("--batch", type=int, default=2, help="clips per step (>= 2)")
    p.add_argument("--repeats", type=int, default=1, help="timed steps per cell, after the first")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--mem_limit_gib",
        type=float,
        default=None,
        help="CPU: most memory one measurement may allocate (default: available memory - 2 GiB)",
    )
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.mem_limit_gib is None:
        args.mem_limit_gib = 0 if args.device != "cpu" else round(max(1.0, available_gib() - 2), 1)

    rows: dict[str, dict] = {}
    for frames, size in cells(args.quick):
        step = bench_step.main(
            [
                "--modes", "train",
                "--configs", ",".join(CONFIGS),
                "--batch", str(args.batch),
                "--frames", str(frames),
                "--size", str(size),
                "--repeats", str(args.repeats),
                "--device", args.device,
                "--mem_limit_gib", str(args.mem_limit_gib),
            ]
        )  # fmt: skip
        positions = frames * (size // 8) ** 2
        for config in CONFIGS:
            r = dict(step["rows"][f"train: {config}"], frames=frames, size=size, positions=positions)
            rows[f"{frames} frames x {size} px: {config}"] = r

    print(
        f"\nTraining step growth, RNL-TSM-ResNet50, {args.batch} clips, {args.device}"
        + (f", at most {args.mem_limit_gib:g} GiB per run" if args.mem_limit_gib else "")
    )
    print(f"{'cell':34s} {'layer2 P':>8s} {'peak MiB':>9s} {'s/step':>8s} {'mem ratio':>9s} {'speed-up':>8s}")
    for name, r in rows.items():
        if r.get("fits", True) is False:
            print(f"{name:34s} {r['positions']:8d}  does not fit in {r['mem_limit_gib']:g} GiB")
            continue
        seconds = args.batch / r["clips_per_s"]
        print(
            f"{name:34s} {r['positions']:8d} {r['peak_mib']:9.0f} {seconds:8.1f} "
            f"{r.get('mem_ratio')!s:>9s} {r.get('speedup')!s:>8s}"
        )
    result = {
        "batch": args.batch,
        "device": args.device,
        "mem_limit_gib": args.mem_limit_gib,
        "rows": rows,
    }
    return save_result(result, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
