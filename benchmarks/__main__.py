"""The benchmark suite: every row measured against the published way of computing, in the same run.

    python -m benchmarks all                 # full CPU run (80 minutes on 2 AVX2 cores)
    python -m benchmarks all --quick         # reduced sizes, for CI
    python -m benchmarks step rnl            # a subset
    python -m benchmarks all --json bench_out/suite.json

Parts (each runs in processes of its own and writes JSON; this merges them):

- ``step``: RNL-TSM-ResNet50 training step and inference forward (benchmarks/bench_step.py)
- ``rnl``: one RNL block at layer2 and at layer3 size (benchmarks/bench_rnl.py)
- ``data``: the data pipelines, frames and video files (benchmarks/bench_data.py)
- ``test``: test-time throughput through ops/evaluation.py (benchmarks/bench_test.py)
- ``growth``: a training step at 8/16/32 frames and 224/256/320 px (benchmarks/bench_growth.py;
  about 25 minutes on 2 cores; ``step`` takes longer on a CPU without bf16 arithmetic, where its
  bf16 rows are emulated)
- ``saved``: what plain keeps for the backward against the published code, and the allocator's
  peak per configuration (benchmarks/bench_saved.py)

Every row carries its ratio against the "plain" row of its part (published computation).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

import torch

from ops.atomic import write_atomically

PARTS = ("step", "rnl", "data", "test", "growth", "saved")


def _run(module: str, args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", module, *args, "--json", out]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0 or not os.path.isfile(out):
            raise SystemExit(f"benchmarks: {' '.join(cmd[2:])} failed:\n{proc.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)


def run_part(part: str, quick: bool) -> dict[str, dict]:
    """Rows of one part, keyed ``part: row name``."""
    q = ["--quick"] if quick else []
    rows: dict[str, dict] = {}
    if part == "step":
        for name, r in _run("benchmarks.bench_step", q)["rows"].items():
            rows[f"step {name}"] = r
    elif part == "rnl":
        for stage in ("layer2", "layer3"):
            for name, r in _run("benchmarks.bench_rnl", [*q, "--stage", stage])["rows"].items():
                rows[f"rnl block {stage}: {name}"] = r
    elif part == "data":
        for name, r in _run("benchmarks.bench_data", q)["rows"].items():
            rows[f"data {name}"] = r
    elif part == "test":
        for name, r in _run("benchmarks.bench_test", q)["rows"].items():
            rows[f"test {name}"] = r
    elif part == "growth":
        for name, r in _run("benchmarks.bench_growth", q)["rows"].items():
            rows[f"growth {name}"] = r
    elif part == "saved":
        for name, r in _run("benchmarks.bench_saved", q)["rows"].items():
            rows[f"saved {name}"] = r
    return rows


def _fmt(r: dict) -> str:
    if r.get("fits", True) is False:
        return f"does not fit in {r['mem_limit_gib']:g} GiB"
    keys = [
        ("peak_mib", "peak {:.0f} MiB"),
        ("clips_per_s", "{:.3f} clips/s"),
        ("videos_per_s", "{:.3f} videos/s"),
        ("seconds", "{:.3f} s"),
        ("published_mib", "published {:.1f} MiB"),
        ("mem_ratio", "mem x{}"),
        ("time_ratio", "time x{}"),
        ("speedup", "speed x{}"),
        ("ratio", "speed x{}"),
        ("cpu_s_per_clip", "{:.4f} CPU s/clip"),
        ("cpu_ratio", "CPU x{}"),
        ("bytes_per_clip", "{} bytes/clip"),
        ("bytes_per_video", "{} bytes/video"),
        ("bytes_ratio", "bytes x{}"),
        ("files_per_video", "{:g} files/video"),
    ]
    return ", ".join(fmt.format(r[k]) for k, fmt in keys if r.get(k) is not None)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("parts", nargs="+", choices=("all",) + PARTS)
    p.add_argument("--quick", action="store_true", help="reduced sizes (CI)")
    p.add_argument(
        "--json", default=None, help="write all rows here (default: bench_out/suite[-quick].json)"
    )
    args = p.parse_args(argv)
    parts = PARTS if "all" in args.parts else tuple(dict.fromkeys(args.parts))
    rows: dict[str, dict] = {}
    for part in parts:
        print(f"== {part}", flush=True)
        rows.update(run_part(part, args.quick))
    suite = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "torch": torch.__version__,
        "quick": args.quick,
        "rows": rows,
    }
    path = args.json or os.path.join(
        "bench_out", "suite-quick.json" if args.quick else "suite.json"
    )
    write_atomically(path, json.dumps(suite, indent=2))
    print(f"\n== summary ({suite['date']}, {suite['machine']}, torch {suite['torch']})")
    width = max(len(k) for k in rows) if rows else 10
    for key, r in rows.items():
        print(f"{key:{width}s}  {_fmt(r)}")
    print(f"written {path}")
    return suite


if __name__ == "__main__":
    main(sys.argv[1:])
