#!/usr/bin/env bash
# Install into ./.venv (first run only), lint, and run the test suite (slow tests excluded;
# pass -m slow to run those, or any other pytest arguments).
source "$(dirname "$0")/_venv.sh" requirements-dev.txt
# OpenMP threads that spin while waiting steal the cores from DataLoader workers and from the
# test's subprocesses on a small machine; an explicit setting in the environment wins.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
"$VENV/bin/ruff" check .
exec "$PY" -m pytest -q -m "not slow" "$@"
