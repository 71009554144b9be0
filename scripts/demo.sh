#!/usr/bin/env bash
# Install into ./.venv (first run only) and run the embedded demo:
# synthetic videos -> train a small TSM+RNL model on CPU -> evaluate it.
source "$(dirname "$0")/_venv.sh" requirements.txt
exec "$PY" main.py "$@"
