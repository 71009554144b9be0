"""opts.py and --dry_run: the two published commands parse verbatim and resolve as published."""

import os
import shlex

import pytest

import main as train_main
from ops.checkpoint import parse_published_name
from opts import DEMO_DEFAULTS, parse_args

# The two training commands of the RNL README, verbatim (after `python main.py`).
KINETICS = (
    "--dataset kinetics --dense_sample --dist-url 'tcp://localhost:6666' --dist-backend 'nccl' "
    "--multiprocessing-distributed --available_gpus 0,1,2,3 --world-size 1 --rank 0 --gd 20 "
    "--shift --shift_div=8 --shift_place=blockres --npb --lr 0.02 --wd 2e-4 --dropout 0.5 "
    "--num_segments 8 --batch_size 16 --batch_multiplier 4 --use_warmup --warmup_epochs 5 "
    "--lr_type cos --epochs 100 --non_local --suffix 1"
)
SOMETHING = (
    "--dist-url 'tcp://localhost:6666' --dist-backend 'nccl' --multiprocessing-distributed "
    "--available_gpus 0,1,2,3 --world-size 1 --rank 0 --dataset something --gd 20 --shift "
    "--shift_div=8 --shift_place=blockres --npb --lr 0.02 --wd 1e-3 --dropout 0.8 "
    "--num_segments 8 --batch_size 16 --batch_multiplier 4 --use_warmup --warmup_epochs 1 "
    "--lr_type cos --epochs 50 --non_local --suffix 1"
)


def test_published_commands_parse_verbatim():
    k = parse_args(shlex.split(KINETICS))
    assert (k.dataset, k.dense_sample, k.dist_url, k.dist_backend) == (
        "kinetics",
        True,
        "tcp://localhost:6666",
        "nccl",
    )
    assert k.multiprocessing_distributed and k.available_gpus == "0,1,2,3"
    assert (k.world_size, k.rank, k.clip_gradient, k.no_partialbn) == (1, 0, 20.0, True)
    assert (k.lr, k.weight_decay, k.dropout, k.warmup_epochs, k.epochs) == (0.02, 2e-4, 0.5, 5, 100)
    s = parse_args(shlex.split(SOMETHING))
    assert (s.dataset, s.dense_sample, s.weight_decay, s.dropout, s.epochs) == (
        "something",
        False,
        1e-3,
        0.8,
        50,
    )
    assert not s.demo and not k.demo


@pytest.mark.parametrize(
    "command, dataset, warmup, epochs, wd, dense, classes",
    [
        (KINETICS, "kinetics", 5, 100, 2e-4, True, 400),
        (SOMETHING, "something", 1, 50, 1e-3, False, 174),
    ],
)
def test_dry_run_of_published_commands(
    tmp_path, monkeypatch, capsys, command, dataset, warmup, epochs, wd, dense, classes
):
    # No GPU, no data, no ImageNet weights here: the dry run must still resolve and exit 0.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RNL_DATA_ROOT", raising=False)
    out = train_main.main(shlex.split(command) + ["--dry_run"])
    cfg = out["resolved"]
    assert cfg["shift"] is True and cfg["shift_div"] == 8 and cfg["shift_place"] == "blockres"
    assert cfg["non_local"] is True and cfg["dense_sample"] is dense
    assert cfg["batch_multiplier"] == 4
    assert cfg["use_warmup"] is True and cfg["warmup_epochs"] == warmup
    assert cfg["lr_type"] == "cos" and cfg["epochs"] == epochs
    # --batch_size is per node: 16 over 4 GPUs = 4 each; x 4 accumulation x 1 node = 64.
    assert cfg["processes_per_node"] == 4 and cfg["batch_per_process"] == 4
    assert cfg["total_batch"] == 16 * 4 * 1
    assert cfg["world_size"] == 4 and cfg["backend"] == "nccl" and cfg["sync_bn"] is True
    assert cfg["num_class"] == classes
    assert cfg["flip"] is (dataset == "kinetics")  # no flip for Something-Something
    expected = (
        f"TSM_{dataset}_RGB_resnet50_shift8_blockres_avg_segment8_e{epochs}_cos"
        + ("_dense" if dense else "")
        + f"_nl_lr0.02_wd{wd:.1e}_do{0.5 if dense else 0.8}_1"
    )
    assert cfg["run_name"] == expected
    parsed = parse_published_name(expected + ".pth.tar")
    assert parsed["dataset"] == dataset and parsed["num_segments"] == 8
    assert parsed["is_shift"] and parsed["shift_div"] == 8 and parsed["shift_place"] == "blockres"
    assert parsed["non_local"] and parsed["dense_sample"] is dense
    printed = capsys.readouterr().out
    assert f"run name: {expected}" in printed
    assert "= total batch 64" in printed
    assert "ImageNet weights" in printed  # says whether the backbone weights were found
    assert os.listdir(tmp_path) == []  # nothing written, no data read


def test_kinetics_run_name_matches_the_published_checkpoint_prefix():
    args = parse_args(shlex.split(KINETICS))
    published = (
        "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e100_cos_dense_nl_lr0.02_wd2.0e-04"
    )
    assert train_main.run_name(args).startswith(published)


def test_dry_run_unknown_dataset_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        train_main.main(["--dataset", "kinetic", "--dry_run"])
    message = str(exc.value.code)
    assert "unknown dataset 'kinetic'" in message and "\n" not in message


def test_no_dataset_means_demo_defaults_but_explicit_flags_win():
    args = parse_args([])
    assert args.demo and args.dataset == "synthetic"
    assert all(getattr(args, k) == v for k, v in DEMO_DEFAULTS.items())
    tsn = parse_args(["--no-shift", "--epochs", "2", "--lr", "0.05"])
    assert tsn.demo and tsn.shift is False and tsn.epochs == 2 and tsn.lr == 0.05
    assert tsn.non_local is True and tsn.arch == DEMO_DEFAULTS["arch"]


def test_flags_keep_tsm_defaults_outside_the_demo():
    args = parse_args(["--dataset", "something"])
    assert (args.arch, args.shift, args.non_local, args.lr_type) == (
        "resnet50",
        False,
        False,
        "step",
    )
    assert args.lr_steps == [20.0, 40.0] and args.amp == "off" and args.sync_bn is None


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--batch_multiplier", "0"], "--batch_multiplier"),
        (["--use_warmup", "--warmup_epochs", "5", "--epochs", "5"], "--warmup_epochs"),
        (["--available_gpus", "0,x"], "--available_gpus"),
        (["--amp", "fp8"], "--amp"),
    ],
)
def test_bad_values_exit_with_a_message(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--dataset", "kinetics"] + argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--dataset", "something", "--shift_div", "4"], "--shift_div"),
        (["--dataset", "something", "--shift_place=block"], "--shift_place"),
        (
            ["--no-shift", "--shift_div", "16", "--shift_place", "blockres"],
            "--shift_div --shift_place",
        ),
        (["--dataset", "kinetics", "--nl_type", "rnl"], "--nl_type"),
    ],
)
def test_a_flag_that_needs_another_is_refused_without_it(argv, named, capsys):
    """--shift_div 4 without --shift would train a TSN and say nothing; even a value equal to
    the default counts when it is written on the command line."""
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{named} given without" in err and "drop it" in err


def test_the_same_flags_with_what_they_need_parse():
    args = parse_args(
        ["--dataset", "something", "--shift", "--shift_div", "4", "--shift_place=block"]
    )
    assert (args.shift, args.shift_div, args.shift_place) == (True, 4, "block")
    demo = parse_args(["--shift_div", "4"])  # the demo shifts by default
    assert demo.shift and demo.shift_div == 4


def test_nl_options_reach_the_model_and_bad_ones_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    kernels = '{"kernels": [[1,3,3],[1,5,5],[3,5,5],[3,3,3]]}'
    train_main.main(shlex.split(KINETICS) + ["--nl_options", kernels, "--dry_run"])
    assert (
        "non_local: True (rnl at the published places, options {'kernels'"
        in capsys.readouterr().out
    )
    with pytest.raises(SystemExit) as exc:  # refused when the command line is read
        train_main.main(
            shlex.split(KINETICS) + ["--nl_options", '{"kernel": [3,3,3]}', "--dry_run"]
        )
    assert exc.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown option(s) kernel for block type 'rnl'" in message
    with pytest.raises(SystemExit):
        parse_args(["--nl_options", "kernels=3"])  # not JSON: argparse's one-line error
    assert "--nl_options: not JSON" in capsys.readouterr().err


# ---- issue 25: every numeric flag finite and in range, block options checked at parse time ----


def _float_flags() -> list[str]:
    """Every float flag of main.py, read from the parser itself (a new float flag is covered
    without editing this test)."""
    from opts import get_args_parser

    return [a.option_strings[0] for a in get_args_parser()._actions if a.type is float]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("flag", _float_flags())
def test_every_float_flag_refuses_non_finite_values(flag, value, capsys):
    # --gd nan trained until the loss was NaN; --lr_steps nan never decayed the learning rate.
    with pytest.raises(SystemExit) as exc:
        parse_args(["--dataset", "kinetics", f"{flag}={value}"])  # '=': -inf is not an option
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error: " in err[-1] and flag in err[-1] and value in err[-1], err[-1]


def test_gd_and_lr_steps_of_the_issue(capsys):
    for argv, needle in (
        (["--gd", "nan"], "--gd must be a number in (0, 1e30), got nan"),
        (["--lr_steps", "20", "nan"], "--lr_steps must be a finite number >= 0, got nan"),
        (["--lr_steps", "-5"], "--lr_steps must be a finite number >= 0, got -5.0"),
        (["--gd", "0"], "--gd must be a number in (0, 1e30), got 0.0"),
        (["--dist_timeout", "1e300"], "--dist_timeout must be a number in (0, 1e9)"),
        (["--seed", "-1"], "--seed must be in [0, 4294967296), got -1"),
        (["--num_class", "0"], "--num_class must be >= 1, got 0"),
        (["--warmup_epochs", "-1"], "--warmup_epochs must be >= 0, got -1"),
    ):
        with pytest.raises(SystemExit):
            parse_args(["--dataset", "kinetics", *argv])
        assert needle in capsys.readouterr().err, argv
    # in-range values still parse (and the published --gd 20)
    args = parse_args(["--dataset", "kinetics", "--gd", "20", "--lr_steps", "0", "35.5"])
    assert args.clip_gradient == 20.0 and args.lr_steps == [0.0, 35.5]


@pytest.mark.parametrize(
    "options, needle",
    [
        ('{"kernels": 5}', "4 kernels"),
        ('{"kernels": [[3,3,3]]}', "4 kernels"),
        ('{"kernels": [[3,3],[3,3],[3,3],[3,3]]}', "(kt, kh, kw)"),
        ('{"kernels": [[3,4,4],[3,7,7],[3,3,3],[3,3,3]]}', "odd"),
        ('{"kernels": [[3,7,7],[3,7,7],[0,3,3],[3,3,3]]}', "odd"),
        ('{"kernels": [[3,7,7],[3,7,7],[3,"a",3],[3,3,3]]}', "(kt, kh, kw)"),
        ('{"activation": "tanh"}', "activation"),
    ],
)
def test_bad_block_options_are_one_line_at_parse_time(options, needle, capsys):
    # {"kernels":5} was a TypeError, [[3,3,3]] an IndexError, even sizes a reshape error in the
    # middle of the first training step.
    with pytest.raises(SystemExit) as exc:
        parse_args(["--dataset", "kinetics", "--non_local", "--nl_options", options])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--nl_options" in err and needle in err and "Traceback" not in err, err


def test_even_region_kernels_are_refused_when_a_model_is_built():
    # The same rule where settings come from a checkpoint, not the command line.
    from ops.models import TSN

    with pytest.raises(ValueError, match="odd"):
        TSN(4, 4, "RGB", base_model="resnet18", pretrain="scratch", non_local=True,
            nl_options={"kernels": [[3, 4, 4], [3, 7, 7], [3, 3, 3], [3, 3, 3]]},
            print_spec=False)  # fmt: skip
