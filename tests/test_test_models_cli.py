"""Acceptance tests of test_models.py (issue 5).

Scores saved by the script are compared with an independent computation (tests/_eval_helpers.py:
SPEC frame numbers, PIL decoding/resizing/cropping by hand, one view at a time through the model).
The model is a small RNL TSM-ResNet18 at 32 px (frames scaled to 36 px), so each run takes seconds.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import test_models
from ops.checkpoint import save_checkpoint
from tests import _eval_helpers as H

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLISHED_4 = "TSM_synthetic_RGB_resnet18_shift8_blockres_avg_segment4_e50_cos_nl_lr0.01.pth.tar"
PUBLISHED_8 = "TSM_synthetic_RGB_resnet18_shift8_blockres_avg_segment8_e50_cos_nl_lr0.01.pth.tar"

PUBLISHED_COMMANDS = [
    "python test_models.py kinetics --weights=pretrained/TSM_kinetics_RGB_resnet50_shift8_blockres"
    "_avg_segment8_e100_cos_dense_nl_lr0.02_wd2.0e-04.pth.tar --test_segments=8 --batch_size=16 "
    "-j 25 --test_crops=3 --dense_sample --full_res",
    "python test_models.py something --weights=pretrained/TSM_something_RGB_resnet50_shift8_blockres"
    "_avg_segment8_e50_cos_nl_h_8e-4.pth.tar --test_segments=8 --batch_size=2 -j 25 --test_crops=3 "
    "--twice_sample --full_res",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A dataset and two published-format checkpoints (4 and 8 segments), built once."""
    root = tmp_path_factory.mktemp("eval")
    data_root = str(root / "data")
    H.write_synthetic_dataset(data_root)
    models = {}
    for seg, name, seed in ((4, PUBLISHED_4, 0), (8, PUBLISHED_8, 1)):
        model = H.make_model(seed, **H.small_model_config(num_segments=seg))
        path = str(root / name)
        H.save_published(path, model)
        models[seg] = (path, model)
    return {"root": root, "data_root": data_root, "models": models}


@pytest.fixture(autouse=True)
def _keep_pytest_logging(monkeypatch):
    """cli() installs its own stderr log handler; in-process runs keep pytest's instead."""
    monkeypatch.setattr(test_models, "setup_logging", lambda rank=0: None)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = test_models.cli(argv)
    out, err = capsys.readouterr()
    return code, out, err


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def scores_of(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = np.load(path)
    return data["scores"], data["labels"], data["indices"]


# --------------------------------------------------------------------------- devices
def test_cuda_devices_are_the_gpus_given_in_order_else_all_visible():
    assert test_models.cuda_devices([2, 3], num_visible=4) == [2, 3]
    assert test_models.cuda_devices([3, 1], num_visible=4) == [3, 1]
    assert test_models.cuda_devices(None, num_visible=3) == [0, 1, 2]
    with pytest.raises(ValueError, match="GPU 4 is not visible"):
        test_models.cuda_devices([1, 4], num_visible=4)
    with pytest.raises(ValueError, match="twice"):
        test_models.cuda_devices([1, 1], num_visible=4)


def test_single_process_makes_the_first_of_gpus_the_current_device(monkeypatch):
    # No GPU here: CUDA's device count and set_device are stood in for; the rest is the real path.
    current = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(torch.device(d)))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    ctx, gpu_ids = test_models.init_process("auto", [2, 3])
    assert current == [torch.device("cuda", 2)]
    assert ctx.device == torch.device("cuda", 2) and gpu_ids == [2, 3]
    current.clear()
    ctx, gpu_ids = test_models.init_process("auto", None)
    assert current == [torch.device("cuda", 0)] and gpu_ids == [0, 1, 2, 3]
    current.clear()
    ctx, gpu_ids = test_models.init_process("cpu", [2, 3])
    assert current == [] and ctx.device == torch.device("cpu") and gpu_ids == []


# --------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("command", PUBLISHED_COMMANDS)
def test_published_commands_parse_verbatim(command):
    argv = shlex.split(command)[2:]
    args = test_models.get_args_parser().parse_args(argv)
    weights, segments, coeffs, _ = test_models.split_list_args(args)
    assert weights == [argv[1].split("=", 1)[1]] and segments == [8] and coeffs == [1.0]
    assert args.test_crops == 3 and args.full_res and args.workers == 25


# --------------------------------------------------------------------------- scores vs reference
@pytest.mark.parametrize(
    "crops, flags",
    [
        (1, []),
        (3, []),
        (5, []),
        (10, []),
        (3, ["--full_res"]),
        (1, ["--dense_sample"]),
        (3, ["--twice_sample", "--full_res"]),
    ],
)
def test_scores_match_independent_pipeline(workspace, tmp_path, capsys, crops, flags):
    path, model = workspace["models"][4]
    out = str(tmp_path / "scores.npz")
    argv = ["synthetic", f"--weights={path}", "--test_segments=4", f"--test_crops={crops}"]
    argv += ["--batch_size=3", "-j", "0", "--input_size=32", "--data_root", workspace["data_root"]]
    argv += ["--save_scores", out, "--device", "cpu", *flags]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    scores, labels, indices = scores_of(out)
    expected = H.reference_scores(
        model,
        workspace["data_root"],
        num_segments=4,
        test_crops=crops,
        full_res="--full_res" in flags,
        dense="--dense_sample" in flags,
        twice="--twice_sample" in flags,
    )
    H.assert_close(scores, expected)
    assert labels.tolist() == [v[2] for v in H.VIDEOS]
    assert indices.tolist() == list(range(len(H.VIDEOS)))
    top1 = 100.0 * np.mean(expected.argmax(1) == labels)
    assert f"Overall Prec@1 {top1:.02f}%" in stdout


def test_ensemble_of_two_weights_with_coefficients(workspace, tmp_path, capsys):
    (p4, m4), (p8, m8) = workspace["models"][4], workspace["models"][8]
    out = str(tmp_path / "ens.npz")
    argv = ["synthetic", f"--weights={p4},{p8}", "--test_segments=4,8", "--coeff=1,0.5"]
    argv += ["--twice_sample", "--batch_size=2", "-j", "0", "--softmax", "--input_size=32"]
    argv += ["--data_root", workspace["data_root"], "--save_scores", out, "--device", "cpu"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    a = H.reference_scores(m4, workspace["data_root"], 4, 1, twice=True, softmax=True)
    b = H.reference_scores(m8, workspace["data_root"], 8, 1, twice=True, softmax=True)
    H.assert_close(scores_of(out)[0], (a + 0.5 * b) / 2)


def _save_own(path: str, model) -> str:
    """One of our checkpoints: the model settings inside, any file name."""
    torch.save({"model_config": model.model_config(), "state_dict": model.state_dict()}, path)
    return path


def test_settings_not_given_are_the_checkpoints(workspace, tmp_path, capsys):
    """Issue 24: without --test_segments and --input_size a 4-segment, 32 px checkpoint is tested
    at 4 segments and 32 px (the --test_segments default used to test it at 8)."""
    m4 = H.make_model(2, **H.small_model_config(num_segments=4, input_size=32))
    weights = _save_own(str(tmp_path / "four_frames.weights"), m4)
    out = str(tmp_path / "s.npz")
    argv = ["synthetic", f"--weights={weights}", "-j", "0", "--data_root", workspace["data_root"]]
    code, stdout, err = run_cli(argv + ["--save_scores", out, "--device", "cpu"], capsys)
    assert code == 0, err
    H.assert_close(scores_of(out)[0], H.reference_scores(m4, workspace["data_root"], 4, 1))
    # the same weights at 8 segments give other scores, so the check above tells them apart
    at8 = H.make_model(0, **H.small_model_config(num_segments=8, input_size=32))
    at8.load_state_dict(m4.state_dict())
    other = H.reference_scores(at8, workspace["data_root"], 8, 1)
    assert np.abs(scores_of(out)[0] - other).max() > 0.1


def test_ensemble_without_segments_tests_each_checkpoint_at_its_own(workspace, tmp_path, capsys):
    m4 = H.make_model(3, **H.small_model_config(num_segments=4))
    m8 = H.make_model(4, **H.small_model_config(num_segments=8))
    a4, a8 = _save_own(str(tmp_path / "a.pth"), m4), _save_own(str(tmp_path / "b.pth"), m8)
    out = str(tmp_path / "ens.npz")
    argv = ["synthetic", f"--weights={a4},{a8}", "-j", "0", "--softmax", "--save_scores", out]
    code, _, err = run_cli(
        argv + ["--data_root", workspace["data_root"], "--device", "cpu"], capsys
    )
    assert code == 0, err
    a = H.reference_scores(m4, workspace["data_root"], 4, 1, softmax=True)
    b = H.reference_scores(m8, workspace["data_root"], 8, 1, softmax=True)
    H.assert_close(scores_of(out)[0], (a + b) / 2)


def test_segments_given_override_the_checkpoints(workspace, tmp_path, capsys):
    """As the published commands do: --test_segments=8 tests a 4-segment checkpoint at 8."""
    m4 = H.make_model(2, **H.small_model_config(num_segments=4, input_size=32))
    weights = _save_own(str(tmp_path / "four_frames.weights"), m4)
    out = str(tmp_path / "s.npz")
    argv = ["synthetic", f"--weights={weights}", "--test_segments=8", "-j", "0", "--save_scores"]
    code, _, err = run_cli(
        argv + [out, "--data_root", workspace["data_root"], "--device", "cpu"], capsys
    )
    assert code == 0, err
    at8 = H.make_model(0, **H.small_model_config(num_segments=8, input_size=32))
    at8.load_state_dict(m4.state_dict())  # the same weights, shift and blocks over 8 frames
    H.assert_close(scores_of(out)[0], H.reference_scores(at8, workspace["data_root"], 8, 1))


def test_checkpoint_written_by_main_py_renamed(workspace, tmp_path, capsys, monkeypatch):
    """Train one tiny epoch with main.py, rename its best checkpoint, evaluate it."""
    import main

    monkeypatch.setattr(main, "setup_logging", lambda rank=0: None)
    argv = ["--dataset", "synthetic", "--data_root", workspace["data_root"], "--arch", "resnet18"]
    argv += ["--shift", "--non_local", "--num_segments", "4", "--input_size", "32"]
    argv += ["--pretrain", "scratch", "--epochs", "1", "--batch_size", "3", "--workers", "0"]
    argv += ["--root_model", str(tmp_path / "ck"), "--root_log", str(tmp_path / "log"), "--npb"]
    summary = main.main(argv)
    best = os.path.join(summary["model_dir"], "ckpt.best.pth.tar")
    renamed = str(tmp_path / "renamed_without_settings.weights")
    os.replace(best, renamed)

    out = str(tmp_path / "main.npz")
    cli_argv = ["synthetic", f"--weights={renamed}", "--test_segments=4", "-j", "0"]
    cli_argv += ["--data_root", workspace["data_root"], "--save_scores", out, "--device", "cpu"]
    code, _, err = run_cli(cli_argv, capsys)
    assert code == 0, err

    # The test rebuilds the model from the stored settings with plain PyTorch loading.
    from ops.models import TSN

    ckpt = torch.load(renamed, map_location="cpu", weights_only=True)
    model = TSN(**dict(ckpt["model_config"], pretrain="scratch", print_spec=False))
    model.load_state_dict({k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()})
    expected = H.reference_scores(model.eval(), workspace["data_root"], 4, 1)
    H.assert_close(scores_of(out)[0], expected)


def test_csv_report_and_max_num(workspace, tmp_path, capsys):
    path, model = workspace["models"][4]
    csv_file, report = tmp_path / "pred.csv", tmp_path / "report"
    out = str(tmp_path / "s.npz")
    argv = ["synthetic", f"--weights={path}", "--test_segments=4", "--max_num=2", "-j", "0"]
    argv += ["--input_size=32"]
    argv += ["--data_root", workspace["data_root"], "--csv_file", str(csv_file)]
    argv += ["--report_dir", str(report), "--save_scores", out, "--device", "cpu"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    expected = H.reference_scores(model, workspace["data_root"], 4, 1, videos=H.VIDEOS[:2])
    H.assert_close(scores_of(out)[0], expected)
    lines = csv_file.read_text().splitlines()
    assert lines == [f"{v[0]};{H.CLASSES[c]}" for v, c in zip(H.VIDEOS, expected.argmax(1))]
    per_class = (report / "per_class_accuracy.csv").read_text().splitlines()
    assert len(per_class) == 1 + len(H.CLASSES)
    assert (report / "confusion_matrix.png").stat().st_size > 0


def test_unreadable_video_is_reported_and_left_out(workspace, tmp_path, capsys):
    path, model = workspace["models"][4]
    lines = [f"{name} {frames} {label}" for name, frames, label, _ in H.VIDEOS]
    lines.insert(1, "no_such_video 12 0")
    test_list = tmp_path / "test_list.txt"
    test_list.write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "s.npz")
    argv = ["synthetic", f"--weights={path}", "--test_segments=4", f"--test_list={test_list}"]
    argv += ["-j", "0", "--batch_size=2", "--input_size=32", "--data_root", workspace["data_root"]]
    argv += ["--save_scores", out, "--device", "cpu"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    scores, labels, indices = scores_of(out)
    assert indices.tolist() == [0, 2, 3]
    assert np.load(out)["videos"].tolist() == [v[0] for v in H.VIDEOS]
    H.assert_close(scores, H.reference_scores(model, workspace["data_root"], 4, 1))
    assert "videos skipped   : 1" in stdout and "videos_missing_dir=1" in stdout


# --------------------------------------------------------------------------- bad inputs
def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit code != 0 and stderr is exactly one `test_models.py: error: ...` line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("test_models.py: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def bad_run(workspace, capsys, weights: str, segments: str = "4") -> tuple[int, str]:
    argv = ["synthetic", f"--weights={weights}", f"--test_segments={segments}", "-j", "0"]
    code, _, err = run_cli(argv + ["--data_root", workspace["data_root"]], capsys)
    return code, err


@pytest.mark.parametrize("flag", ["--save_scores", "--csv_file", "--report_dir"])
@pytest.mark.parametrize("victim", ["weights", "test_list", "category_file"])
def test_no_output_is_written_over_an_input(workspace, tmp_path, capsys, flag, victim):
    # Issue 25: --save_scores given the weights path turned an 89 MB checkpoint into a 1.4 KB
    # npz; --csv_file given the test list overwrote the list. A copy of each input here, named
    # as the output directly or (for --report_dir) through the folder it writes into.
    path = workspace["models"][4][0]
    data = os.path.join(workspace["data_root"], "synthetic")
    sources = {
        "weights": path,
        "test_list": os.path.join(data, "val_videofolder.txt"),
        "category_file": os.path.join(data, "category.txt"),
    }
    folder = tmp_path / "in"
    folder.mkdir()
    copies = {k: str(folder / os.path.basename(v)) for k, v in sources.items()}
    if flag == "--report_dir":  # the report's per-class CSV is the input
        copies[victim] = str(folder / "per_class_accuracy.csv")
    for k, v in sources.items():
        shutil.copy(v, copies[k])
    model = workspace["models"][4][1]  # our own format: any file name works
    own = {"state_dict": model.state_dict(), "model_config": model.model_config()}
    save_checkpoint(dict(own, dataset="synthetic"), copies["weights"])
    before = {k: sha(v) for k, v in copies.items()}
    target = str(folder) if flag == "--report_dir" else copies[victim]
    argv = ["synthetic", f"--weights={copies['weights']}", "--test_segments=4", "-j", "0"]
    argv += ["--input_size=32", "--data_root", workspace["data_root"], "--device", "cpu"]
    argv += [f"--test_list={copies['test_list']}", f"--category_file={copies['category_file']}"]
    code, out, err = run_cli([*argv, flag, target], capsys)
    shown = {"weights": "--weights", "test_list": "--test_list", "category_file": "--category_file"}
    assert_one_line_error(code, err, f"is the input {shown[victim]} {copies[victim]}")
    assert "it would be written over" in err and out == ""
    assert {k: sha(v) for k, v in copies.items()} == before
    assert sorted(os.listdir(folder)) == sorted(os.path.basename(v) for v in copies.values())


def test_bad_input_weights_and_segments_differ(workspace, capsys):
    path = workspace["models"][4][0]
    code, err = bad_run(workspace, capsys, f"{path},{path}", segments="4")
    assert_one_line_error(code, err, "2 weights but 1 --test_segments values")


def test_bad_input_unknown_published_name(workspace, tmp_path, capsys):
    model = H.make_model(0, **H.small_model_config(num_segments=4))
    path = str(tmp_path / "my_weights.pth.tar")
    H.save_published(path, model)
    code, err = bad_run(workspace, capsys, path)
    assert_one_line_error(code, err, "my_weights.pth.tar")


def test_bad_input_wrong_number_of_classes(workspace, tmp_path, capsys):
    cfg = H.small_model_config(num_segments=4, non_local=False)
    cfg["num_class"] = 7
    path = str(tmp_path / "TSM_synthetic_RGB_resnet18_shift8_blockres_avg_segment4_e1.pth")
    H.save_published(path, H.make_model(0, **cfg))
    code, err = bad_run(workspace, capsys, path)
    assert_one_line_error(code, err, "7 classes", "has 3")


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint\n", "dict", "missing"])
def test_bad_input_unreadable_or_not_a_checkpoint(workspace, tmp_path, capsys, content):
    path = tmp_path / PUBLISHED_4
    if content == "dict":
        torch.save({"hello": "world"}, path)
    elif content != "missing":
        path.write_bytes(content)
    code, err = bad_run(workspace, capsys, str(path))
    assert_one_line_error(code, err, PUBLISHED_4)


class _Payload:
    """Unpickling this would create the file `target` (never run by a safe loader)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_bad_input_malicious_pickle_is_not_executed(workspace, tmp_path):
    """As a real process: exit status, and nothing on stderr but the one error line."""
    target = tmp_path / "pwned.txt"
    path = tmp_path / PUBLISHED_4
    torch.save({"state_dict": {}, "epoch": _Payload(str(target))}, path)
    argv = ["synthetic", f"--weights={path}", "--test_segments=4"]
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "test_models.py"), *argv],
        cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert not target.exists()
    assert_one_line_error(proc.returncode, proc.stderr, PUBLISHED_4, "refused")


# --------------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_give_the_same_scores(workspace, tmp_path, capsys):
    path = workspace["models"][4][0]
    common = ["synthetic", f"--weights={path}", "--test_segments=4", "--test_crops=3"]
    common += ["--batch_size=1", "-j", "0", "--data_root", workspace["data_root"]]
    common += ["--device", "cpu", "--input_size=32"]
    single = str(tmp_path / "one.npz")
    code, _, err = run_cli(common + ["--save_scores", single], capsys)
    assert code == 0, err

    double = str(tmp_path / "two.npz")
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += [f"--master_port={_free_port()}", os.path.join(REPO, "test_models.py")]
    proc = subprocess.run(
        cmd + common + ["--save_scores", double],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s1, l1, i1 = scores_of(single)
    s2, l2, i2 = scores_of(double)
    assert i2.tolist() == i1.tolist() and l2.tolist() == l1.tolist()
    np.testing.assert_allclose(s2, s1, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- published commands
def _published_layout(root, dataset: str, frames: int) -> None:
    """One video in the dataset's registered layout (SPEC.md section 8), frames 320x240."""
    from PIL import Image

    if dataset == "kinetics":
        lists, folder, tmpl = (
            root / "kinetics/labels",
            root / "kinetics/images/abseiling_0",
            "img_{:05d}.jpg",
        )
        line = "abseiling_0"
    else:
        lists = root / "something/v1"
        folder, tmpl, line = lists / "20bn-something-something-v1/100218", "{:05d}.jpg", "100218"
        (lists / "category.txt").parent.mkdir(parents=True, exist_ok=True)
        (lists / "category.txt").write_text("".join(f"class {i}\n" for i in range(174)))
    folder.mkdir(parents=True, exist_ok=True)
    lists.mkdir(parents=True, exist_ok=True)
    for i in range(1, frames + 1):
        Image.fromarray(H.frame_pixels(0, i, (320, 240))).save(folder / tmpl.format(i))
    (lists / "val_videofolder.txt").write_text(f"{line} {frames} 3\n")


@pytest.mark.slow
@pytest.mark.parametrize("command", PUBLISHED_COMMANDS)
def test_published_command_runs_verbatim(tmp_path, command):
    """The README command, character for character, on a one-video dataset with a checkpoint of
    the published layout and name (RNL TSM-ResNet50, 224 px; random weights)."""
    argv = shlex.split(command)
    weights = argv[3].split("=", 1)[1]
    dataset = argv[2]
    num_class = 400 if dataset == "kinetics" else 174
    cfg = H.small_model_config(num_segments=8, non_local=True, input_size=224)
    cfg.update(base_model="resnet50", num_class=num_class)
    (tmp_path / "pretrained").mkdir()
    H.save_published(str(tmp_path / weights), H.make_model(0, **cfg))
    _published_layout(tmp_path / "data", dataset, frames=70 if dataset == "kinetics" else 30)
    os.symlink(os.path.join(REPO, "test_models.py"), tmp_path / "test_models.py")
    env = dict(os.environ, PYTHONPATH=REPO, RNL_DATA_ROOT=str(tmp_path / "data"))
    proc = subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "videos evaluated : 1" in proc.stdout and "Overall Prec@1" in proc.stdout
