"""Write the `synthetic` video dataset of the demo and the tests (ops/synthetic.py explains it).

python tools/make_synthetic.py --data_root data      # -> data/synthetic
"""

from __future__ import annotations

import argparse
import logging
import sys

from ops.synthetic import make_synthetic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the synthetic motion-direction dataset (demo and tests).",
    )
    parser.add_argument(
        "--data_root", default="data", help="the dataset goes to DATA_ROOT/synthetic"
    )
    parser.add_argument(
        "--videos_per_class", type=int, default=40, help="training videos per class"
    )
    parser.add_argument("--val_per_class", type=int, default=12, help="validation videos per class")
    parser.add_argument(
        "--frames", type=int, nargs="+", default=[16, 24], help="frames per video: N or MIN MAX"
    )
    parser.add_argument("--size", type=int, nargs=2, default=[80, 64], metavar=("W", "H"))
    parser.add_argument("--num_classes", type=int, default=6, choices=(2, 4, 6))
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="rewrite even if up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(args.frames) not in (1, 2):
        parser.error("--frames takes N or MIN MAX")
    try:
        path = make_synthetic(
            args.data_root,
            num_videos_per_class=args.videos_per_class,
            num_val_per_class=args.val_per_class,
            num_frames=args.frames[0] if len(args.frames) == 1 else tuple(args.frames),
            size=tuple(args.size),
            seed=args.seed,
            num_classes=args.num_classes,
            quality=args.quality,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
