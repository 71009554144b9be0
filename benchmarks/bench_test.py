"""Test-time throughput (videos/s) of RNL-TSM-ResNet50, 8 frames, 1 clip x 1 crop, on CPU.

Runs ops/evaluation.py's inference loop (batched views, view averaging) over in-memory random
videos, once with our default RNL computation (fused attention, depthwise region conv) and once
with the plain published computation (explicit P x P affinity, masked grouped region conv), in
the same process, and prints both and their ratio. Data loading is left out
on purpose: it measures the network, not the JPEG decoder.

    python benchmarks/bench_test.py                 # 224 px, 4 videos, batch 2 (about a minute)
    python benchmarks/bench_test.py --input_size 112 --videos 8
    python -m benchmarks.bench_test --quick --json out.json
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.utils.data import Dataset

from benchmarks.measure import save_result
from ops import evaluation
from ops.models import TSN


class RandomVideos(Dataset):
    """`n` normalised-looking random videos `[T*3, S, S]` with labels 0; fixed seed."""

    def __init__(self, n: int, num_segments: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.videos = [torch.randn(num_segments * 3, size, size, generator=g) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int):
        return self.videos[i], 0


def build(fast: bool, num_segments: int, input_size: int, num_class: int) -> TSN:
    model = TSN(
        num_class=num_class,
        num_segments=num_segments,
        modality="RGB",
        base_model="resnet50",
        pretrain="scratch",
        is_shift=True,
        shift_div=8,
        shift_place="blockres",
        non_local=True,
        rnl_fused=fast,
        region_impl="depthwise" if fast else "masked",
        input_size=input_size,
        dropout=0.5,
        print_spec=False,
    )
    return model.eval()


def time_model(model: TSN, data: RandomVideos, batch_size: int) -> float:
    """Seconds to score every video once (after one warm-up batch)."""
    loader = evaluation.make_test_loader(data, batch_size=batch_size)
    warm = evaluation.make_test_loader(data, batch_size=batch_size, max_num=batch_size)
    evaluation.evaluate_ensemble([model], [warm], [1], torch.device("cpu"), progress=False)
    start = time.perf_counter()
    evaluation.evaluate_ensemble([model], [loader], [1], torch.device("cpu"), progress=False)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="112 px, 2 videos, 1 repeat (CI)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=2, help="videos per forward pass")
    parser.add_argument("--num_segments", type=int, default=8)
    parser.add_argument("--input_size", type=int, default=224)
    parser.add_argument("--num_class", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes; the best is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args(argv)
    if args.quick:
        args.input_size, args.videos, args.repeats = 112, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = RandomVideos(args.videos, args.num_segments, args.input_size)

    with torch.inference_mode():
        fused_model = build(True, args.num_segments, args.input_size, args.num_class)
        plain_model = build(False, args.num_segments, args.input_size, args.num_class)
        plain_model.load_state_dict(fused_model.state_dict())
        candidates = [
            ("plain (explicit attention, masked conv)", plain_model),
            ("fast (fused, depthwise)", fused_model),
        ]
        best = {name: float("inf") for name, _ in candidates}
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            for name, model in candidates:
                best[name] = min(best[name], time_model(model, data, args.batch_size))
    rows = [(name, args.videos / best[name]) for name, _ in candidates]

    print(
        f"RNL-TSM-ResNet50 test throughput, CPU ({torch.get_num_threads()} threads), "
        f"{args.num_segments} frames x 1 clip x 1 crop, {args.input_size} px, "
        f"batch {args.batch_size} videos, {args.videos} videos"
    )
    print(f"{'RNL path':<36} {'videos/s':>9} {'vs plain':>9}")
    base = rows[0][1]
    result = {
        "input_size": args.input_size,
        "num_segments": args.num_segments,
        "batch_size": args.batch_size,
        "rows": {},
    }
    for name, vps in rows:
        print(f"{name:<36} {vps:>9.3f} {vps / base:>8.2f}x")
        result["rows"][name] = {"videos_per_s": round(vps, 4), "speedup": round(vps / base, 3)}
    return save_result(result, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
