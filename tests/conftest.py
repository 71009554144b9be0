"""Shared test fixtures."""

import logging

import pytest


@pytest.fixture(autouse=True)
def _restore_root_logger():
    """main.py / test_models.py configure the root logger when called in-process; put it back
    after each test so one test's handlers and level do not leak into the next one's output."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
