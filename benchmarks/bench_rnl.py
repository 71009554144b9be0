"""One RNL block, forward + backward: fused attention vs the published explicit affinity, and the
region conv formulations.

    python -m benchmarks.bench_rnl            # layer2 size: batch 2, C=512, 8x28x28 (P = 6272)
    python -m benchmarks.bench_rnl --quick    # smaller, for CI
    python -m benchmarks.bench_rnl --json out.json

"plain" is the published computation: explicit P x P softmax and the masked grouped region conv.
Each row runs in a fresh process (see benchmarks/measure.py); ratios are against "plain" measured
in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from benchmarks.measure import measure, run_child, save_result
from ops.rnl import RNLBlock

CONFIGS = {
    # name: (fused attention, region conv impl, channels_last_3d input)
    "plain (explicit + masked conv)": (False, "masked", False),
    "explicit + depthwise": (False, "depthwise", False),
    "fused + masked conv": (True, "masked", False),
    "fused + depthwise": (True, "depthwise", False),
}


def _child(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads) if args.threads else None
    fused, impl, _ = CONFIGS[args.config]
    kernel = (3, 7, 7) if args.stage == "layer2" else (3, 3, 3)
    block = RNLBlock(args.channels, kernel_size=kernel, fused=fused, region_impl=impl)
    with torch.no_grad():
        block.W[1].weight.fill_(1.0)  # a trained-looking block (not the zero-init identity)
    x = torch.randn(
        args.batch, args.channels, args.frames, args.size, args.size, requires_grad=True
    )

    # warm-up on a tiny input: kernels, thread pools
    small = torch.randn(1, args.channels, 2, 4, 4, requires_grad=True)
    block(small).sum().backward()

    def step() -> None:
        block.zero_grad(set_to_none=True)
        x.grad = None
        block(x).sum().backward()

    print(json.dumps(measure(step, repeats=args.repeats)))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes (CI)")
    p.add_argument("--stage", choices=["layer2", "layer3"], default="layer2")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--channels", type=int, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return {}

    channels, size = (512, 28) if args.stage == "layer2" else (1024, 14)
    if args.quick:
        size, args.frames, args.repeats = size // 2, max(4, args.frames // 2), 1
    rows = {}
    for name in CONFIGS:
        child_args = [
            "--config",
            name,
            "--channels",
            str(channels),
            "--size",
            str(size),
            "--stage",
            args.stage,
            "--batch",
            str(args.batch),
            "--frames",
            str(args.frames),
            "--repeats",
            str(args.repeats),
            "--threads",
            str(args.threads),
        ]
        rows[name] = run_child("benchmarks.bench_rnl", child_args)
    base = rows["plain (explicit + masked conv)"]
    p_pos = args.frames * size * size
    print(
        f"RNL block fwd+bwd, {args.stage}: batch {args.batch}, C={channels}, {args.frames}x{size}x{size} "
        f"(P={p_pos}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"{'configuration':34s} {'peak MiB':>9s} {'time s':>8s} {'mem ratio':>10s} {'time ratio':>10s}"
    )
    for name, r in rows.items():
        r["mem_ratio"] = (
            round(r["peak_mib"] / base["peak_mib"], 3) if base["peak_mib"] > 0 else None
        )
        r["time_ratio"] = round(r["seconds"] / base["seconds"], 3)
        print(
            f"{name:34s} {r['peak_mib']:9.1f} {r['seconds']:8.3f} {r['mem_ratio']!s:>10s} {r['time_ratio']:10.3f}"
        )
    result = {
        "stage": args.stage,
        "batch": args.batch,
        "channels": channels,
        "frames": args.frames,
        "size": size,
        "rows": rows,
    }
    return save_result(result, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
