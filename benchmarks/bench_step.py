"""Whole-model training step and inference forward of RNL-TSM-ResNet50 (or NL I3D-ResNet50): the
published way of computing ("plain") against our fast paths, each in a fresh process.

    python -m benchmarks.bench_step                  # 2 clips x 8 frames x 224 px, CPU
    python -m benchmarks.bench_step --quick          # 2 clips x 8 frames x 64 px (CI)
    python -m benchmarks.bench_step --device cuda --batch 16
    python -m benchmarks.bench_step --model nl_i3d --frames 32   # NL I3D-ResNet50, 32 frames

For NL I3D "plain" is mmaction2's computation (explicit ``P x P_source`` affinity in every
non-local block, everything kept for the backward); its fast paths are the fused attention and the
recompute of cheap activations (there is no region conv or shift: ``I3D_CONFIGS``).

A training step is forward + cross-entropy + backward + SGD (momentum 0.9) on random clips.
"plain" reproduces the published implementation's computation: explicit P x P affinity, masked
grouped region conv, shifted copies kept for the backward, fp32, contiguous tensors, and each RNL
block keeping its input and affinity until its next forward, as the published module does. It
keeps for the backward exactly what the published code keeps (benchmarks/bench_saved.py counts
both). "fast fp32" is the defaults: fused attention, depthwise region conv, and the cheap
activations (BatchNorm/ReLU outputs, the shift, theta and the region features) recomputed in the
backward (ops/recompute.py); "checkpoint_blocks" recomputes whole residual blocks. Our
configurations run as main.py's training processes do (ops/memory.py): on a CPU the heap serves
every block and its free pages are given back after each backbone stage's forward and backward;
compiled, and on a GPU, glibc's mmap threshold is pinned. "plain" and "fast fp32 glibc default
malloc" run with glibc's defaults, as the published code's process does; "fast fp32
channels_last pinned mmap threshold" and "... stage trims only" are earlier ways of giving memory
back (every large block its own mapping; the stage trims with glibc's own thresholds), and "...
checkpointed bottlenecks" the earlier recompute of the residual blocks (the selective checkpoint
instead of ops/lean_bottleneck.py).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from benchmarks.measure import limit_address_space, measure, run_child, save_result
from benchmarks.published_memory import keep_like_published
from ops import lean_bottleneck
from ops.engine.compile import CompiledWithFallback
from ops.memory import backbone_stages, give_memory_back, pin_mmap_threshold, return_memory_at
from ops.models import I3D, TSN

PLAIN = dict(rnl_fused=False, region_impl="masked", shift_recompute=False, recompute=False)
FAST = dict(rnl_fused=True, region_impl="depthwise", shift_recompute=True)  # + recompute: defaults
# name: TSN fast-path keywords, autocast dtype, channels_last
CONFIGS = {
    "plain": (PLAIN, None, False),
    "fused+depthwise": ({**FAST, "shift_recompute": False, "recompute": False}, None, False),
    "fast fp32 no recompute": ({**FAST, "recompute": False}, None, False),
    "fast fp32": (FAST, None, False),
    "fast fp32 checkpoint_blocks": ({**FAST, "checkpoint_blocks": True}, None, False),
    "fast fp32 channels_last": (FAST, None, True),
    "fast bf16": (FAST, "bf16", False),
    "fast bf16 channels_last": (FAST, "bf16", True),
}
# Our training process gives freed memory back (ops/memory.py, main.py); the published code's
# process runs with glibc's defaults, as does this row, which shows the allocator's share.
CONFIGS["fast fp32 glibc default malloc"] = CONFIGS["fast fp32"]
GLIBC_DEFAULTS = {"plain", "fast fp32 glibc default malloc"}
# The previous way: every block of 256 KiB or more its own mapping (faulted in on every use).
CONFIGS["fast fp32 channels_last pinned mmap threshold"] = CONFIGS["fast fp32 channels_last"]
PINNED = {"fast fp32 channels_last pinned mmap threshold"}
# The previous recompute of the bottlenecks: the selective checkpoint replays each block's forward
# (ops/recompute.py) instead of its written-out backward (ops/lean_bottleneck.py).
CONFIGS["fast fp32 channels_last checkpointed bottlenecks"] = CONFIGS["fast fp32 channels_last"]
CHECKPOINTED_BOTTLENECKS = {"fast fp32 channels_last checkpointed bottlenecks"}
# The stage trims with glibc's thresholds as they are (before keep_blocks_in_heap, ops/memory.py).
CONFIGS["fast fp32 channels_last stage trims only"] = CONFIGS["fast fp32 channels_last"]
TRIMS_ONLY = {"fast fp32 channels_last stage trims only"}
# torch.compile (inductor) of a configuration above: its first step, which compiles (minutes on a
# CPU), is a warm-up outside the measurement. Run on request: --configs "fast fp32 compiled".
for _name in ("fast fp32", "fast bf16 channels_last"):
    CONFIGS[f"{_name} compiled"] = CONFIGS[_name]
DEFAULT_CONFIGS = tuple(c for c in CONFIGS if not c.endswith("compiled"))
QUICK_CONFIGS = ("plain", "fast fp32", "fast bf16")
# NL I3D: the configurations that differ for a network without region conv and shift
I3D_CONFIGS = ("plain", "fast fp32 no recompute", "fast fp32", "fast fp32 checkpoint_blocks",
               "fast fp32 channels_last", "fast bf16")  # fmt: skip
I3D_QUICK_CONFIGS = ("plain", "fast fp32")
MODELS = ("rnl_tsm", "nl_i3d")


def build(config: str, frames: int, device: str, net: str = "rnl_tsm"):
    fast, amp, channels_last = CONFIGS[config]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if net == "nl_i3d":
        model = I3D(
            400, frames, base_model="i3d_resnet50", non_local=True, nl_type="nl", dropout=0.5,
            pretrain="scratch", partial_bn=False, print_spec=False, **fast,
        ).to(device)  # fmt: skip
        if channels_last:
            model = model.to_channels_last()
        return model, dtype, False  # the clip goes in as [N, T*3, H, W]; I3D converts it
    model = TSN(
        400,
        frames,
        "RGB",
        base_model="resnet50",
        is_shift=True,
        shift_div=8,
        non_local=True,
        dropout=0.5,
        pretrain="scratch",
        partial_bn=False,
        print_spec=False,
        **fast,
    ).to(device)
    if config == "plain":
        keep_like_published(model)
    if channels_last:
        model = model.to_channels_last()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return model, dtype, channels_last


def _child(args: argparse.Namespace) -> None:
    if args.mem_limit_gib:
        limit_address_space(args.mem_limit_gib)
    try:
        _measure_child(args)
    except (RuntimeError, MemoryError) as exc:  # torch's "can't allocate memory", or Python's
        if not args.mem_limit_gib or (isinstance(exc, RuntimeError) and "allocate" not in str(exc)):
            raise
        print(json.dumps({"fits": False, "mem_limit_gib": args.mem_limit_gib}))


def _measure_child(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model, dtype, channels_last = build(args.config, args.frames, args.device, args.model)
    lean_bottleneck.ENABLED = args.config not in CHECKPOINTED_BOTTLENECKS
    if args.config in PINNED:
        pin_mmap_threshold()
    elif args.config in TRIMS_ONLY:
        return_memory_at(backbone_stages(model))
    elif args.config not in GLIBC_DEFAULTS:  # as main.py's training processes do
        give_memory_back(model, torch.device(args.device).type, args.config.endswith("compiled"))
    shape = (
        (args.batch * args.frames, 3) if args.model == "rnl_tsm" else (args.batch, args.frames * 3)
    )
    x = torch.randn(*shape, args.size, args.size, device=args.device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 400, (args.batch,), device=args.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def autocast():
        return torch.autocast(args.device, dtype=dtype, enabled=dtype is not None)

    def train_step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    def infer() -> None:
        model.eval()
        with torch.no_grad(), autocast():
            model(x)

    work = train_step if args.mode == "train" else infer
    if args.config.endswith("compiled"):
        model = CompiledWithFallback(model)
        work()  # compiles, for these shapes and this mode
        if not model.compiled:
            raise SystemExit(f"torch.compile failed here: {model.failure}")
    else:
        # warm-up: one small step (kernels, thread pools, optimizer state)
        small = x[: args.frames, :, :32, :32]
        with torch.no_grad(), autocast():
            model.eval()(small)
    r = measure(work, repeats=args.repeats, device=args.device)
    r["clips_per_s"] = round(args.batch / r["seconds"], 3)
    print(json.dumps(r))


def best_round(results: list[dict]) -> dict:
    """One row from a configuration's rounds: the fastest round's time and the largest peak
    memory of any round (the time a quiet machine gives, the memory a run must expect); every
    round's figures are kept under "rounds" when there are several."""
    if len(results) == 1:
        return results[0]
    if any(r.get("fits", True) is False for r in results):
        return next(r for r in results if r.get("fits", True) is False)
    row = dict(min(results, key=lambda r: r["seconds"]))
    row["peak_mib"] = max(r["peak_mib"] for r in results)
    row["rounds"] = [{"seconds": r["seconds"], "peak_mib": r["peak_mib"]} for r in results]
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="2 clips, 64 px, three configurations (CI)")
    p.add_argument("--batch", type=int, default=2, help="clips per step")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every configuration this many times, in turn (the order reversed every "
        "other round); a row keeps its fastest round's time and its largest peak memory. On a "
        "shared machine whose speed drifts by 10-20%% between minutes, rounds let every row "
        "meet the same quiet moments",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="rnl_tsm", choices=MODELS, help="RNL-TSM-R50 or NL I3D-R50")
    p.add_argument("--configs", default="", help="comma-separated subset of: " + ", ".join(CONFIGS))
    p.add_argument("--modes", default="train,infer")
    p.add_argument("--json", help="write the results here")
    p.add_argument(
        "--mem_limit_gib",
        type=float,
        default=0,
        help="CPU: let each measurement allocate at most this much more (a run that needs more is "
        "reported as not fitting instead of swapping or meeting the OOM killer)",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return {}
    defaults = {
        "rnl_tsm": QUICK_CONFIGS if args.quick else DEFAULT_CONFIGS,
        "nl_i3d": I3D_QUICK_CONFIGS if args.quick else I3D_CONFIGS,
    }
    configs = [c for c in args.configs.split(",") if c] or list(defaults[args.model])
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}: choose from {list(CONFIGS)}")
    if args.quick:
        args.batch, args.size, args.repeats = 2, 64, 1  # 2: the channel gate BN needs 2 clips
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    measured: dict[str, list[dict]] = {}
    for turn in range(args.rounds):
        order = configs if turn % 2 == 0 else configs[::-1]
        for mode, name in ((m, c) for m in args.modes.split(",") for c in order):
            child = [
                "--config",
                name,
                "--mode",
                mode,
                "--batch",
                str(args.batch),
                "--frames",
                str(args.frames),
                "--size",
                str(args.size),
                "--repeats",
                str(args.repeats),
                "--device",
                args.device,
                "--mem_limit_gib",
                str(args.mem_limit_gib),
                "--model",
                args.model,
            ]
            row = run_child("benchmarks.bench_step", child)
            measured.setdefault(f"{mode}: {name}", []).append(row)
            print(f"  measured {mode}: {name}: {row}", file=sys.stderr, flush=True)
    rows = {key: best_round(results) for key, results in measured.items()}  # first round's order
    title = {"rnl_tsm": "RNL-TSM-ResNet50", "nl_i3d": "NL I3D-ResNet50"}[args.model]
    print(
        f"{title} {args.batch} clip(s) x {args.frames} frames x {args.size} px on {args.device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"{'configuration':32s} {'peak MiB':>9s} {'clips/s':>8s} {'mem ratio':>10s} {'speed-up':>9s}"
    )
    for key, r in rows.items():
        mode = key.split(":")[0]
        base = rows.get(f"{mode}: plain")
        if r.get("fits", True) is False:
            print(f"{key:32s} does not fit in {r['mem_limit_gib']:g} GiB")
            continue
        if base and base.get("fits", True):
            r["mem_ratio"] = (
                round(r["peak_mib"] / base["peak_mib"], 3) if base["peak_mib"] > 0 else None
            )
            r["speedup"] = round(r["clips_per_s"] / base["clips_per_s"], 3)
        print(
            f"{key:32s} {r['peak_mib']:9.1f} {r['clips_per_s']:8.3f} {r.get('mem_ratio')!s:>10s} "
            f"{r.get('speedup')!s:>9s}"
        )
    result = {
        "batch": args.batch,
        "frames": args.frames,
        "size": args.size,
        "device": args.device,
        "model": args.model,
        "rounds": args.rounds,
        "rows": rows,
    }
    return save_result(result, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
