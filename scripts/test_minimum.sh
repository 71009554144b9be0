#!/usr/bin/env bash
# The declared minimum of requirements.txt, tested: a venv of its own (default /tmp/rnl-min-venv,
# MIN_VENV=DIR to choose) with exactly the minimum torch / torchvision (about 5 GB with PyPI's CUDA
# wheels), then the fast tests of the code that depends on their versions. Not part of
# scripts/test.sh: the download is too large for every CI run. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=$(sed -n 's/^torch>=\([0-9.]*\).*/\1/p' requirements.txt)
VISION=$(sed -n 's/^torchvision>=\([0-9.]*\).*/\1/p' requirements.txt)
VENV="${MIN_VENV:-/tmp/rnl-min-venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
printf 'torch==%s\ntorchvision==%s\n' "$TORCH" "$VISION" > "$VENV/minimum.txt"
PIP_CONSTRAINT="$VENV/minimum.txt" "$VENV/bin/pip" install -q "torch==$TORCH" "torchvision==$VISION" \
    -r requirements.txt pytest scikit-video
"$VENV/bin/python" -c "import torch, torchvision; print('testing torch', torch.__version__, 'torchvision', torchvision.__version__)"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec "$VENV/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider \
    tests/test_recompute.py tests/test_rnl.py tests/test_checkpoint.py tests/test_device_augment.py \
    tests/test_seeding.py tests/test_temporal_shift.py tests/test_fast_paths.py tests/test_main.py \
    tests/test_trainer.py tests/test_opts.py "$@"
