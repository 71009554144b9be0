"""Shared test fixtures."""

import logging

import pytest

from ops.synthetic import make_synthetic
from ops.utils import StderrHandler


@pytest.fixture(autouse=True)
def _restore_root_logger():
    """main.py / test_models.py configure the root logger when called in-process; put it back
    after each test so one test's handlers and level do not leak into the next one's output."""
    root = logging.getLogger()
    for handler in root.handlers[:]:  # one left by a module-scoped fixture's in-process run
        if isinstance(handler, StderrHandler):
            root.removeHandler(handler)
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A tiny synthetic dataset (2 classes x 4 training videos, 40x32 frames) for main.py runs."""
    root = tmp_path_factory.mktemp("data")
    make_synthetic(
        str(root),
        num_videos_per_class=4,
        num_val_per_class=2,
        num_frames=(8, 10),
        size=(40, 32),
        num_classes=2,
        seed=0,
    )
    return str(root)
