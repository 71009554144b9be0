"""Write a tiny run checkpoint of today's code, to keep in tests/data/checkpoints/ (issue 25).

    python tests/data/make_checkpoint_fixture.py    # from the repository root

It trains epoch 1 of 2 of a TSM MobileNetV2 (the smallest backbone: ResNets have no width
setting; 2.2 M parameters) from scratch on a tiny synthetic dataset (2 classes, made in a
temporary folder) with `main.py --stop_after_epochs 1`, and copies the run's `ckpt.pth.tar`,
training state included (SGD momentum, every rank's RNG state, epoch, schedule, the run's
config), to `tests/data/checkpoints/ckpt_v<package version>.pth.tar`, with a JSON record of what
wrote it next to it (package and torch versions, git commit, the command line).

Run it once per released version and commit the new file; never regenerate an existing one:
`tests/test_checkpoint_fixtures.py` loads, evaluates and resumes every file there, so a change
of today's code that cannot read an old checkpoint fails there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "checkpoints")

# The training flags (paths added below). 2 classes, 4 training videos, 2 clips per iteration.
FLAGS = [
    "--dataset", "synthetic", "--arch", "mobilenetv2", "--pretrain", "scratch", "--shift",
    "--num_segments", "4", "--input_size", "32", "--batch_size", "2", "--lr", "0.01",
    "--wd", "1e-4", "--dropout", "0.5", "--lr_type", "cos", "--epochs", "2",
    "--stop_after_epochs", "1", "--workers", "0", "--seed", "0",
]  # fmt: skip
DATA = dict(num_videos_per_class=2, num_val_per_class=1, num_frames=8, size=(40, 32),
            num_classes=2, seed=5)  # fmt: skip


def main() -> str:
    import torch

    from ops.checkpoint import load_checkpoint
    from ops.synthetic import make_synthetic

    with tempfile.TemporaryDirectory(prefix="ckpt_fixture_") as tmp:
        make_synthetic(tmp, **DATA)
        models = os.path.join(tmp, "ckpt")
        argv = [*FLAGS, "--data_root", tmp, "--root_model", models,
                "--root_log", os.path.join(tmp, "log")]  # fmt: skip
        subprocess.run([sys.executable, os.path.join(REPO, "main.py"), *argv], cwd=tmp,
                       check=True)  # fmt: skip
        (run,) = os.listdir(models)
        source = os.path.join(models, run, "ckpt.pth.tar")
        written = load_checkpoint(source)["written_by"]
        os.makedirs(OUT, exist_ok=True)
        target = os.path.join(OUT, f"ckpt_v{written['version']}.pth.tar")
        if os.path.exists(target):
            raise SystemExit(f"{target} exists: keep it (one file per version), bump the version")
        shutil.copyfile(source, target)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    record = dict(written, commit=commit, python=sys.version.split()[0], flags=FLAGS,
                  data=DATA, file_bytes=os.path.getsize(target))  # fmt: skip
    record["torch"] = str(torch.__version__)
    with open(target[: -len(".pth.tar")] + ".json", "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(target)
    return target


if __name__ == "__main__":
    main()
