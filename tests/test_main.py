"""main.py end to end on a tiny synthetic dataset (CPU): outputs, exact resume, DDP replicas.

The model is a TSM + RNL ResNet-18 at 32 px with 4 segments; the dataset has 2 classes x 4
training videos, so a run takes seconds and most of the time goes into starting processes.
"""

import csv
import glob
import os
import subprocess
import sys

import pytest
import torch

import main as train_main
from ops.checkpoint import load_checkpoint, save_checkpoint
from ops.models import TSN
from ops.synthetic import make_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_args(data_root, out, *extra):
    return [
        "--dataset",
        "synthetic",
        "--data_root",
        data_root,
        "--arch",
        "resnet18",
        "--pretrain",
        "scratch",
        "--shift",
        "--non_local",
        "--npb",
        "--num_segments",
        "4",
        "--input_size",
        "32",
        "--batch_size",
        "2",
        "--lr",
        "0.01",
        "--wd",
        "1e-4",
        "--dropout",
        "0.5",
        "--gd",
        "20",
        "--lr_type",
        "cos",
        "--workers",
        "0",
        "--print-freq",
        "1",
        "--root_model",
        os.path.join(out, "ckpt"),
        "--root_log",
        os.path.join(out, "log"),
        *extra,
    ]


def params_of(path):
    return load_checkpoint(path)["state_dict"]


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_two_epochs_write_checkpoints_and_logs(data_root, tmp_path):
    out = train_main.main(tiny_args(data_root, str(tmp_path), "--epochs", "2", "--suffix", "t"))
    name = out["run_name"]
    run_dir = tmp_path / "ckpt" / name
    assert sorted(os.listdir(run_dir)) == ["ckpt.best.pth.tar", "ckpt.pth.tar", "run_config.json"]
    ckpt = load_checkpoint(run_dir / "ckpt.pth.tar")  # weights_only loading
    # Published keys plus what resuming and evaluation need.
    for key in ("epoch", "arch", "state_dict", "optimizer", "best_prec1", "model_config"):
        assert key in ckpt
    assert ckpt["epoch"] == 2 and ckpt["iteration"] == 0 and ckpt["dataset"] == "synthetic"
    assert ckpt["model_config"]["is_shift"] and ckpt["model_config"]["non_local"]
    assert ckpt["model_config"]["num_class"] == 2 and ckpt["arch"] == "resnet18"
    # the class names, line by line from the dataset's category file (for tools/predict.py)
    categories = os.path.join(data_root, "synthetic", "category.txt")
    with open(categories) as f:
        assert ckpt["class_names"] == f.read().split() == ["moving_right", "moving_left"]
    assert ckpt["lr_scheduler"]["iters_per_epoch"] == 4  # 8 videos / batch 2
    assert isinstance(ckpt["rng_states"][0]["torch"], torch.Tensor)
    assert ckpt["run_config"]["optim"]["lr"] == 0.01 and ckpt["world_size"] == 1
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])

    log_dir = tmp_path / "log" / name
    with open(log_dir / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(r["val_top1"] != "" and r["train_loss"] != "" for r in rows)
    # Validation accuracy on 4 videos can only be a multiple of 25%.
    assert all(float(r["val_top1"]) % 25.0 == 0.0 for r in rows)
    assert float(rows[1]["best_top1"]) == max(float(r["val_top1"]) for r in rows)
    assert glob.glob(str(log_dir / "events.out.tfevents.*"))
    assert (log_dir / "args.txt").is_file()
    assert "Epoch: [2][4/4]" in (log_dir / "log.txt").read_text()
    # The cosine schedule without warmup ends epoch 2 of 2 at lr 0.5*0.01*(1+cos(pi*7/8)).
    assert float(rows[1]["lr"]) == pytest.approx(
        0.005 * (1 + torch.cos(torch.tensor(7 / 8 * torch.pi)).item()), rel=1e-4
    )


def test_resume_after_epoch_one_is_bit_identical(data_root, tmp_path):
    # Gradient accumulation, warmup, dropout and a loader worker all take part.
    extra = ["--epochs", "3", "--batch_multiplier", "2", "--use_warmup", "--workers", "1"]
    full = tmp_path / "full"
    parts = tmp_path / "parts"
    a = train_main.main(tiny_args(data_root, str(full), *extra))
    b1 = train_main.main(tiny_args(data_root, str(parts), *extra, "--stop_after_epochs", "1"))
    assert b1["stopped"]
    first = load_checkpoint(parts / "ckpt" / b1["run_name"] / "ckpt.pth.tar")
    assert first["epoch"] == 1
    b2 = train_main.main(tiny_args(data_root, str(parts), *extra, "--resume", "auto"))
    assert a["run_name"] == b2["run_name"]
    ca = load_checkpoint(full / "ckpt" / a["run_name"] / "ckpt.pth.tar")
    cb = load_checkpoint(parts / "ckpt" / b2["run_name"] / "ckpt.pth.tar")
    assert ca["epoch"] == cb["epoch"] == 3
    assert_same_state(ca["state_dict"], cb["state_dict"])
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    # Training did move the weights away from the epoch-1 checkpoint.
    assert not torch.equal(ca["state_dict"]["new_fc.weight"], first["state_dict"]["new_fc.weight"])
    with open(parts / "log" / b2["run_name"] / "log.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]


def test_persistent_workers_train_exactly_like_fresh_workers(data_root, tmp_path):
    # Persistent workers (the default) are started once; fresh ones are started every epoch and
    # learn the epoch when they start. Both must feed identical batches, so identical weights.
    extra = ["--epochs", "2", "--workers", "2"]
    kept = train_main.main(tiny_args(data_root, str(tmp_path / "kept"), *extra))
    fresh = train_main.main(
        tiny_args(data_root, str(tmp_path / "fresh"), *extra, "--no-persistent_workers")
    )
    ca = params_of(tmp_path / "kept" / "ckpt" / kept["run_name"] / "ckpt.pth.tar")
    cb = params_of(tmp_path / "fresh" / "ckpt" / fresh["run_name"] / "ckpt.pth.tar")
    assert_same_state(ca, cb)


def test_compile_trains_like_eager(data_root, tmp_path):
    # aot_eager runs Dynamo and AOTAutograd (the compiled graph, forward and backward) without
    # code generation, so it is quick; the inductor backend is compared in test_compile.py.
    extra = ["--epochs", "1", "--dropout", "0"]
    eager = train_main.main(tiny_args(data_root, str(tmp_path / "eager"), *extra))
    comp = train_main.main(
        tiny_args(
            data_root, str(tmp_path / "comp"), *extra, "--compile", "--compile_backend", "aot_eager"
        )
    )
    assert comp["compiled"] and not eager["compiled"]  # it did run compiled, to the end
    ca = params_of(tmp_path / "eager" / "ckpt" / eager["run_name"] / "ckpt.pth.tar")
    cb = params_of(tmp_path / "comp" / "ckpt" / comp["run_name"] / "ckpt.pth.tar")
    assert ca.keys() == cb.keys()  # the wrapper adds no prefix to the saved weights
    for k in ca:
        if ca[k].is_floating_point():
            torch.testing.assert_close(cb[k], ca[k], rtol=1e-3, atol=1e-5, msg=k)


def test_ddp_two_gloo_processes_keep_identical_replicas(data_root, tmp_path):
    out = train_main.main(
        tiny_args(
            data_root,
            str(tmp_path),
            "--epochs",
            "2",
            "--multiprocessing-distributed",
            "--cpu_procs",
            "2",
            "--batch_size",
            "4",  # per node: 2 clips per process
            "--batch_multiplier",
            "2",  # the first iteration of each step runs under DDP's no_sync
            "--dist-backend",
            "gloo",
        )
    )
    run_dir = tmp_path / "ckpt" / out["run_name"]
    assert sorted(os.listdir(run_dir)) == ["ckpt.best.pth.tar", "ckpt.pth.tar", "run_config.json"]
    ckpt = load_checkpoint(run_dir / "ckpt.pth.tar")
    assert ckpt["epoch"] == 2 and ckpt["world_size"] == 2
    # 8 videos over 2 processes x 2 clips: 2 iterations per epoch.
    assert ckpt["lr_scheduler"]["iters_per_epoch"] == 2
    # Every rank's parameter checksum, gathered when the checkpoint was written.
    sums = ckpt["replica_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert len(ckpt["rng_states"]) == 2
    assert not torch.equal(ckpt["rng_states"][0]["torch"], ckpt["rng_states"][1]["torch"])
    log_dir = tmp_path / "log" / out["run_name"]
    with open(log_dir / "log.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    assert glob.glob(str(log_dir / "events.out.tfevents.*"))


def test_torchrun_launch_env_rendezvous(data_root, tmp_path):
    # The same 2-process CPU run started by torchrun instead of --multiprocessing-distributed.
    args = tiny_args(data_root, str(tmp_path), "--epochs", "1", "--batch_size", "4")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, os.path.join(REPO, "main.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world size 2" in proc.stderr and "env://" in proc.stderr
    name = train_main.run_name(train_main.parse_args(args))
    ckpt = load_checkpoint(tmp_path / "ckpt" / name / "ckpt.pth.tar")
    assert ckpt["world_size"] == 2 and ckpt["lr_scheduler"]["iters_per_epoch"] == 2
    assert len(set(ckpt["replica_checksums"])) == 1


def test_evaluate_and_tune_from_load_a_finished_run(data_root, tmp_path):
    first = train_main.main(tiny_args(data_root, str(tmp_path / "a"), "--epochs", "1"))
    ckpt_path = tmp_path / "a" / "ckpt" / first["run_name"] / "ckpt.pth.tar"
    with open(tmp_path / "a" / "log" / first["run_name"] / "log.csv") as f:
        logged = list(csv.DictReader(f))[0]

    # --evaluate with the checkpoint reproduces the validation of the epoch that wrote it.
    evaluated = train_main.main(
        tiny_args(
            data_root,
            str(tmp_path / "e"),
            "--epochs",
            "1",
            "--evaluate",
            "--resume",
            str(ckpt_path),
        )
    )
    assert evaluated["val_top1"] == pytest.approx(float(logged["val_top1"]))
    assert evaluated["val_loss"] == pytest.approx(float(logged["val_loss"]), rel=1e-5)

    # --tune_from the same dataset loads every weight, classifier included: with lr 0 they stay.
    tuned = train_main.main(
        tiny_args(
            data_root,
            str(tmp_path / "t"),
            "--epochs",
            "1",
            "--lr",
            "0",
            "--tune_from",
            str(ckpt_path),
        )
    )
    a = load_checkpoint(ckpt_path)["state_dict"]
    t = load_checkpoint(tmp_path / "t" / "ckpt" / tuned["run_name"] / "ckpt.pth.tar")["state_dict"]
    for k in a:
        if "running_" not in k and "num_batches" not in k:  # BN statistics keep updating
            assert torch.equal(a[k], t[k]), k


def test_tune_from_turns_the_classifier_lr_x5_on_for_another_dataset_whatever_the_file_names(
    data_root, tmp_path
):
    # An own checkpoint of the synthetic dataset, named like a published Kinetics one ...
    first = train_main.main(tiny_args(data_root, str(tmp_path / "a"), "--epochs", "1"))
    same = tmp_path / "TSM_kinetics_RGB_resnet18_shift8_blockres_avg_segment4_e1.pth.tar"
    os.rename(tmp_path / "a" / "ckpt" / first["run_name"] / "ckpt.pth.tar", same)
    # ... and an own checkpoint of Kinetics (400 classes), named after the synthetic dataset.
    other = tmp_path / "synthetic_finetuned.pth.tar"
    kinetics = TSN(
        400, 4, "RGB", base_model="resnet18", is_shift=True, non_local=True, dropout=0.5,
        pretrain="scratch", input_size=32, print_spec=False,
    )  # fmt: skip
    save_checkpoint(
        {
            "state_dict": kinetics.state_dict(),
            "model_config": kinetics.model_config(),
            "dataset": "kinetics",
        },
        other,
    )
    sizes = {}
    for path, lr5 in ((same, False), (other, True)):
        out = str(tmp_path / path.stem)
        dry = train_main.main(tiny_args(data_root, out, "--tune_from", str(path), "--dry_run"))
        assert dry["config"]["optim"]["fc_lr5"] is lr5
        run = train_main.main(tiny_args(data_root, out, "--epochs", "1", "--tune_from", str(path)))
        saved = load_checkpoint(os.path.join(out, "ckpt", run["run_name"], "ckpt.pth.tar"))
        groups = {g["name"]: g for g in saved["optimizer"]["param_groups"]}
        assert (len(groups["lr5_weight"]["params"]), groups["lr5_weight"]["lr_mult"]) == (lr5, 5)
        assert (len(groups["lr10_bias"]["params"]), groups["lr10_bias"]["lr_mult"]) == (lr5, 10)
        sizes[lr5] = {name: len(g["params"]) for name, g in groups.items()}
    # without lr x5 the classifier's weight and bias train with the other weights and biases
    assert sizes[False]["normal_weight"] == sizes[True]["normal_weight"] + 1
    assert sizes[False]["normal_bias"] == sizes[True]["normal_bias"] + 1


@pytest.mark.slow
def test_tsm_beats_tsn_on_the_demo_data(tmp_path, capsys):
    """The demo recipe (python main.py) with and without temporal shift / RNL blocks.

    The synthetic classes come in time-reversed pairs made of the very same frames, so a model
    that cannot compare frames (TSN: per-frame logits averaged) stays near chance on them.
    ~4-5 minutes per variant on 2 CPU cores.
    """
    root = str(tmp_path / "data")
    make_synthetic(root, seed=0)  # the demo's dataset (default sizes)
    variants = {
        "TSM + RNL (demo)": [],
        "TSM": ["--no-non_local"],
        "TSN + RNL": ["--no-shift"],
        "TSN": ["--no-shift", "--no-non_local"],
    }
    acc = {}
    for label, flags in variants.items():
        out = str(tmp_path / label.replace(" ", "").replace("(", "").replace(")", ""))
        summary = train_main.main(
            ["--data_root", root, "--root_model", out, "--root_log", out, "--no_demo_eval"] + flags
        )
        acc[label] = (summary["val_top1"], summary["best_prec1"], summary["seconds"])
    with capsys.disabled():
        print("\nvalidation top-1 on the 72 synthetic videos (6 classes, chance 16.7%):")
        for label, (final, best, seconds) in acc.items():
            print(f"  {label:18s} final {final:5.1f}%  best {best:5.1f}%  ({seconds / 60:.1f} min)")
    assert acc["TSM"][0] >= acc["TSN"][0] + 25.0
    assert acc["TSM + RNL (demo)"][0] >= acc["TSN"][0] + 25.0
