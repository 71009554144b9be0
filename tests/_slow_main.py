"""`python tests/_slow_main.py SECONDS [--no-demo-data] ARGS...`: main.py with every clip read
SECONDS more slowly (a slow disk), so that a test can send a signal while a given pass is reading
its data. `--no-demo-data`: the demo trains on the dataset already under --data_root (the tiny
test dataset) instead of writing its own. Run it with the repository on PYTHONPATH."""

from __future__ import annotations

import sys
import time

import main
from ops.dataset import TSNDataSet


def main_slowly(delay: float, argv: list[str]) -> None:
    read = TSNDataSet.__getitem__

    def slow_read(self, index):
        time.sleep(delay)
        return read(self, index)

    TSNDataSet.__getitem__ = slow_read  # loader workers are forked: they read slowly too
    if argv[:1] == ["--no-demo-data"]:
        main.prepare_demo_data = lambda data_root: None
        argv = argv[1:]
    main.main(argv)


if __name__ == "__main__":
    try:
        main_slowly(float(sys.argv[1]), sys.argv[2:])
    except KeyboardInterrupt:
        sys.exit(130)
