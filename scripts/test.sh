#!/usr/bin/env bash
# Install into ./.venv (first run only), lint, and run the test suite (slow tests excluded;
# pass -m slow to run those, or any other pytest arguments).
source "$(dirname "$0")/_venv.sh" requirements-dev.txt
"$VENV/bin/ruff" check .
exec "$PY" -m pytest -q -m "not slow" "$@"
