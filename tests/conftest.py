"""Shared test fixtures."""

import logging

import pytest

from ops.synthetic import make_tiny
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
    return make_tiny(tmp_path_factory.mktemp("data"))
