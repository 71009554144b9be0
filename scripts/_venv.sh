# Sourced by the scripts in this folder: creates ./.venv on first use, installs the given
# requirements file into it and the project itself, editable (`pip install -e .`: the packages
# ops, archs, tools and benchmarks importable from anywhere, as `python tools/predict.py` needs);
# again only when one of those files changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REQ="$1"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
STAMP="$VENV/.installed-$(basename "$REQ")"
if [ ! -f "$STAMP" ] || [ "$REQ" -nt "$STAMP" ] || [ requirements.txt -nt "$STAMP" ] \
    || [ pyproject.toml -nt "$STAMP" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # (UserWarnings off: setuptools prints a long notice on what an editable install is)
    PYTHONWARNINGS=ignore::UserWarning "$VENV/bin/python" -m pip install --quiet -r "$REQ" -e .
    touch "$STAMP"
fi
PY="$VENV/bin/python"
