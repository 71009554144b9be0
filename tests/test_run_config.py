"""One run, one config (issue 24): the command line is resolved once into a frozen RunConfig,
which is the one record of the run's settings, compared field by field on resume; the run
folder is claimed only once the model and data are built."""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import pytest
import torch
from torch import nn

import main as train_main
from ops import distributed as du
from ops.checkpoint import load_checkpoint, model_checkpoint, save_checkpoint
from ops.engine import config
from ops.engine.run_folder import RunFolderError, check_run_folder
from ops.models import TSN
from opts import parse_args
from tests.test_main import tiny_args

CPU = du.DistContext(False, 0, 1, 0, 1, torch.device("cpu"), None)


def test_one_run_resolves_once_never_changes_its_args_and_records_one_config(
    data_root, tmp_path, monkeypatch, capsys
):
    # --available_gpus 0 under a scheduler that set CUDA_VISIBLE_DEVICES=0: the launcher keeps
    # the scheduler's choice (main.py used to write that back into args.available_gpus).
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    argv = tiny_args(data_root, str(tmp_path), "--epochs", "1", "--available_gpus", "0")
    args = parse_args(argv)
    before = copy.deepcopy(vars(args))
    monkeypatch.setattr(train_main, "parse_args", lambda _argv: args)
    summary = train_main.main(argv)
    assert vars(args) == before  # nothing below the parser changes the parsed flags

    # the dataset is resolved once: its line is logged once (it was logged twice)
    logged_lines = capsys.readouterr().err.splitlines()
    lines = [line for line in logged_lines if "synthetic (RGB): 2 classes" in line]
    assert len(lines) == 1, lines

    # run_config.json, args.txt and the checkpoint's record are one serialised RunConfig
    with open(os.path.join(summary["model_dir"], "run_config.json")) as f:
        stored = json.load(f)
    log_dir = os.path.join(str(tmp_path), "log", summary["run_name"])
    with open(os.path.join(log_dir, "args.txt")) as f:
        logged = json.load(f)
    ckpt = load_checkpoint(os.path.join(summary["model_dir"], "ckpt.pth.tar"))
    recorded = json.loads(json.dumps(ckpt["run_config"]))
    assert stored == logged == recorded
    assert stored["name"] == summary["run_name"] and stored["loop"]["seed"] == 0
    assert stored["optim"]["batch_per_process"] == 2 and stored["data"]["num_class"] == 2
    assert stored["data"]["class_names"] == ["moving_right", "moving_left"]
    assert stored["launch"]["available_gpus"] is None  # the scheduler's GPUs (all visible)
    # ... and --dry_run prints the same config (the defining fields: a dry run does not apply
    # --available_gpus, the real run did)
    capsys.readouterr()
    monkeypatch.setattr(train_main, "parse_args", parse_args)
    dry = train_main.main(argv + ["--dry_run"])
    printed = capsys.readouterr().out.split("run config:\n", 1)[1]
    assert json.loads(printed) == json.loads(json.dumps(dry["config"]))
    assert config.defining(dry["config"]) == config.defining(stored)


def test_tune_from_is_read_once_to_decide_and_once_to_load(data_root, tmp_path, monkeypatch):
    # fc lr x5 and the classifier rule are decided once from the --tune_from checkpoint (by the
    # launcher); the rank then loads its weights. It used to be read three times.
    first = train_main.main(tiny_args(data_root, str(tmp_path / "a"), "--epochs", "1"))
    path = os.path.join(first["model_dir"], "ckpt.best.pth.tar")
    real_load = torch.load
    reads = []

    def counting_load(f, *args, **kwargs):
        reads.append(os.fspath(f) if isinstance(f, (str, os.PathLike)) else f)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    out = str(tmp_path / "b")
    summary = train_main.main(tiny_args(data_root, out, "--epochs", "1", "--tune_from", path))
    assert reads.count(path) == 2
    ckpt = load_checkpoint(os.path.join(summary["model_dir"], "ckpt.pth.tar"))
    assert ckpt["run_config"]["model"]["tune_same_dataset"] is True
    assert ckpt["run_config"]["optim"]["fc_lr5"] is False  # same dataset: as published


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(data_root, tmp_path):
    # A model that cannot be built (a non-local block after a residual block that does not
    # exist) and a training list that is not there: one line each, and no run folder, so the
    # corrected command starts without --overwrite.
    for extra in (["--nl_where", "layer9.0"], ["--train_list", str(tmp_path / "missing.txt")]):
        argv = tiny_args(data_root, str(tmp_path), "--epochs", "1", *extra)
        with pytest.raises(SystemExit) as exc:
            train_main.main(argv)
        assert "\n" not in str(exc.value.code)
        assert not (tmp_path / "ckpt").exists() and not (tmp_path / "log").exists(), extra


def test_min_batch_is_measured_before_the_syncbatchnorm_conversion(data_root):
    # A distributed run on GPUs converts BatchNorm1d (the RNL channel gate's) to SyncBatchNorm;
    # the smallest batch must still be 2 clips per process (it became 1, and a 1-clip batch
    # crashed). The conversion is module surgery, so it runs here on CPU modules.
    args = parse_args(tiny_args(data_root, "/unused", "--epochs", "1", "--dry_run"))
    cfg = train_main.resolve(args)
    plan = dataclasses.replace(cfg.launch.plan, mode="spawn", use_cuda=True)
    cfg = dataclasses.replace(
        cfg,
        optim=dataclasses.replace(cfg.optim, sync_bn=True),
        launch=dataclasses.replace(cfg.launch, plan=plan),
    )
    ddp = dataclasses.replace(CPU, distributed=True, world_size=2, local_world_size=2)
    model, settings = train_main.prepare_model(cfg, ddp)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert settings.min_batch == 2
    one = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, batch_per_process=1))
    with pytest.raises(ValueError, match="raise --batch_size"):
        train_main.prepare_model(one, ddp)


def test_resume_compares_the_defining_fields_and_ignores_the_execution_ones(tmp_path):
    args = parse_args(tiny_args(str(tmp_path), str(tmp_path), "--dry_run", "--num_class", "2"))
    base = config.to_dict(train_main.resolve(args))
    marked = config.execution_paths()
    assert ("loop", "workers") in marked and ("model", "recompute") in marked
    assert ("launch",) in marked and ("paths",) in marked and ("optim", "batch_size") in marked
    assert ("loop", "seed") not in marked and ("optim", "lr") not in marked
    folder, logs = str(tmp_path / "run"), str(tmp_path / "logs")
    os.makedirs(folder)
    with open(os.path.join(folder, "run_config.json"), "w") as f:
        json.dump(base, f)
    # other workers, print frequency, recompute, batch split: the same run
    changed = copy.deepcopy(base)
    changed["loop"].update(workers=7, print_freq=3)
    changed["model"]["recompute"] = False
    changed["optim"].update(batch_size=64, batch_per_process=16)
    assert check_run_folder(folder, logs, changed, resume="auto", overwrite=False) == "resume"
    # another seed or lr: another run, named in one line by its flag
    for section, key, value in (("loop", "seed", 1), ("optim", "lr", 0.5)):
        other = copy.deepcopy(base)
        other[section][key] = value
        with pytest.raises(RunFolderError, match=f"--{key} .* there vs {value!r} now"):
            check_run_folder(folder, logs, other, resume="auto", overwrite=False)
    # a folder written before RunConfig (a flat dict of the flags): compared on what it says
    flat = {"seed": 0, "lr": 0.01, "workers": 3, "fc_lr5": None, "num_class": None}
    with open(os.path.join(folder, "run_config.json"), "w") as f:
        json.dump(flat, f)
    assert check_run_folder(folder, logs, base, resume="auto", overwrite=False) == "resume"
    flat["seed"] = 5
    with open(os.path.join(folder, "run_config.json"), "w") as f:
        json.dump(flat, f)
    with pytest.raises(RunFolderError, match="--seed 5 there vs 0 now"):
        check_run_folder(folder, logs, base, resume="auto", overwrite=False)


def test_the_config_is_frozen_and_a_checkpoint_of_an_older_version_still_resumes(
    data_root, tmp_path
):
    cfg = train_main.resolve(parse_args(tiny_args(data_root, str(tmp_path), "--dry_run")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]
    # A checkpoint written before RunConfig: its record of the run is a flat `args` dict and
    # its model config uses the old name of the block settings. It resumes.
    torch.manual_seed(0)
    model = TSN(**config.tsn_kwargs(cfg, "scratch"), print_spec=False)
    old_config = model.model_config()
    old_config["rnl_options"] = old_config.pop("nl_options")
    contents = model_checkpoint(
        model.state_dict(), arch="resnet18", model_config=old_config, dataset="synthetic",
        dense_sample=False, class_names=None, epoch=1, best_prec1=50.0,
        args={"lr": 0.01, "seed": 0, "randaugment": None},
    )  # fmt: skip
    # a training checkpoint holds its optimizer state (--resume refuses weights alone)
    contents["optimizer"] = torch.optim.SGD(model.get_optim_policies(), lr=0.01).state_dict()
    path = tmp_path / "old.pth.tar"
    save_checkpoint(contents, path)
    argv = tiny_args(data_root, str(tmp_path / "out"), "--epochs", "2", "--resume", str(path))
    summary = train_main.main(argv)
    ckpt = load_checkpoint(os.path.join(summary["model_dir"], "ckpt.pth.tar"))
    assert ckpt["epoch"] == 2 and "run_config" in ckpt
