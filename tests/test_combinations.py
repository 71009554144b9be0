"""Options that combine, or say why not (issue 24): every pair of main.py's data, recipe and
speed options trains one tiny epoch together and writes a finite checkpoint, or is refused at
once with one line naming both flags; and a run of several of them stopped by SIGTERM at a
random step continues with `--resume auto` to the uninterrupted run's weights exactly.

The pairs come from a covering set (tests/_combinations.py): each run turns many options on, so
a few runs cover all ~250 pairs. Those runs take minutes and are marked slow; the default suite
runs one of them (`test_a_run_with_many_options_on_trains`) and the refusals.

On CPUs with AVX-512 BF16 torch's bf16 conv3d weight gradients are wrong for some small shapes
(issue 25), so runs with `--amp bf16` are only required to train and write finite weights (which
is all any row asserts: accuracy is not the point of a 4-iteration epoch).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import main as train_main
from ops import distributed as du
from ops.checkpoint import load_checkpoint, model_checkpoint, save_checkpoint
from ops.device_augment import EncodedBatch
from ops.engine.config import tsn_kwargs
from ops.engine.precise_bn import precise_bn
from ops.engine.trainer import LoopSettings, model_batch
from ops.models import TSN
from opts import parse_args
from tests import _combinations as C
from tests.test_main import assert_same_state, tiny_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TUNE = "<tune_from>"  # replaced by a checkpoint of the row's own model
FACTORS: dict[str, list[C.Level]] = {
    "device_aug": [(), ("--device_aug",)],
    "videos": [(), ("--videos",)],  # with the video lists of the tiny dataset
    "randaugment": [(), ("--randaugment", "2,9")],
    "mixing": [(), ("--mixup", "0.8"), ("--cutmix", "1.0")],
    "repeated_aug": [(), ("--repeated_aug", "2")],
    "ema": [(), ("--ema", "0.9")],
    "precise_bn": [(), ("--precise_bn", "1")],
    "batch_multiplier": [(), ("--batch_multiplier", "2")],
    "label_smoothing": [(), ("--label_smoothing", "0.1")],
    "channels_last": [(), ("--channels_last",)],
    "recompute": [(), ("--no-recompute",), ("--checkpoint_blocks",)],
    "amp": [(), ("--amp", "bf16")],
    "compile": [(), ("--compile", "--compile_backend", "aot_eager")],
    "sync_bn": [(), ("--sync_bn",)],
    "tune_from": [(), ("--tune_from", TUNE)],
    "resume": [(), ("--resume", "auto")],
    "dense_sample": [(), ("--dense_sample",), ("--dense_sample", "--clip_sampling", "mmaction")],
    "train_pixels": [(), ("--train_pixels", "pil")],
    "save_every": [(), ("--save_every", "0.0001")],  # a mid-epoch save at nearly every step
    "temporal_pool": [(), ("--temporal_pool",)],
    "nl_type": [
        (),
        ("--non_local", "--nl_type", "rnl"),
        ("--non_local", "--nl_type", "nl"),
        ("--non_local", "--nl_type", "gc"),
    ],
}
# Pairs main.py refuses at start (ops/engine/config.check_combinations), with what to use instead.
REFUSED = {
    frozenset({("device_aug", 1), ("randaugment", 1)}): ("--device_aug", "--randaugment"),
    frozenset({("device_aug", 1), ("train_pixels", 1)}): ("--train_pixels", "--device_aug"),
}
ROWS = C.covering_rows(FACTORS, set(REFUSED))


def test_the_rows_cover_every_pair_and_no_refused_one():
    # By enumeration, independently of the generator: every two "on" levels of two options
    # meet in some row, no row holds a refused pair, and there are far fewer rows than pairs.
    on_levels = [(f, i) for f, levels in FACTORS.items() for i in range(1, len(levels))]
    seen = set()
    for row in ROWS:
        chosen = [(f, i) for f, i in row.items() if i]
        for a in chosen:
            for b in chosen:
                if a[0] < b[0]:
                    seen.add((a, b))
    wanted = {
        (a, b) for a in on_levels for b in on_levels
        if a[0] < b[0] and frozenset((a, b)) not in REFUSED
    }  # fmt: skip
    assert wanted <= seen
    assert not any(pair in REFUSED for pair in map(frozenset, seen))
    assert len(wanted) > 200 and len(ROWS) <= 16


# --------------------------------------------------------------------------------------------
# data and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def videos(data_root, tmp_path_factory) -> list[str]:
    """The tiny dataset as H.264 video files (PyAV), with video lists: the flags of --videos."""
    out = tmp_path_factory.mktemp("tiny_videos")
    synthetic = os.path.join(data_root, "synthetic")
    lists = {}
    for split in ("train", "val"):
        lines = []
        with open(os.path.join(synthetic, f"{split}_videofolder.txt")) as f:
            for line in f.read().split("\n"):
                if not line.strip():
                    continue
                name, count, label = line.split()
                frames = [
                    np.asarray(Image.open(os.path.join(synthetic, "frames", name, f"img_{k:05d}.jpg")))
                    for k in range(1, int(count) + 1)
                ]
                _encode(str(out / f"{name}.mp4"), frames)
                lines.append(f"{name}.mp4 {label}")
        lists[split] = out / f"{split}.txt"
        lists[split].write_text("\n".join(lines) + "\n")
    return ["--video_root", str(out), "--train_list", str(lists["train"]), "--val_list",
            str(lists["val"]), "--num_class", "2"]  # fmt: skip


def _encode(path: str, frames: list[np.ndarray]) -> None:
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def row_argv(data_root: str, out: str, row: dict[str, int], videos: list[str], *extra) -> list[str]:
    """main.py's command line of a row: the tiny run without its own non-local block (the row
    chooses), the row's flags, the video lists with --videos, a tune_from checkpoint of the
    row's own model with --tune_from."""
    base = [a for a in tiny_args(data_root, out, *extra) if a != "--non_local"]
    flags = C.row_flags(FACTORS, row)
    if row["videos"]:
        flags += videos
    if row["tune_from"]:
        i = flags.index(TUNE)
        flags[i] = tune_checkpoint(base + [f for f in flags if f not in ("--tune_from", TUNE)], out)
    return base + flags


def tune_checkpoint(argv: list[str], out: str) -> str:
    """A checkpoint of the model of `argv` (another seed, the same dataset) to fine-tune from."""
    cfg = train_main.resolve(parse_args(argv + ["--dry_run"]))
    torch.manual_seed(123)
    model = TSN(**tsn_kwargs(cfg, "scratch"), print_spec=False)
    path = os.path.join(out, "tune_from.pth.tar")
    record = model_checkpoint(
        model.state_dict(), arch=cfg.model.arch, model_config=model.model_config(),
        dataset="synthetic", dense_sample=cfg.data.dense_sample, class_names=None,
    )  # fmt: skip
    save_checkpoint(record, path)
    return path


def checkpoint_of(summary: dict) -> dict:
    return load_checkpoint(os.path.join(summary["model_dir"], "ckpt.pth.tar"))


def assert_trained(ckpt: dict, row: dict[str, int], epochs: int) -> None:
    """A finished, finite checkpoint that records the row's options."""
    assert ckpt["epoch"] == epochs and ckpt["iteration"] == 0 and not ckpt["validation_pending"]
    for name, t in ckpt["state_dict"].items():
        if t.is_floating_point():
            assert torch.isfinite(t).all(), f"{name} is not finite"
    cfg = ckpt["run_config"]
    assert cfg["data"]["device_aug"] is bool(row["device_aug"])
    assert cfg["data"]["videos"] is bool(row["videos"])
    assert cfg["model"]["temporal_pool"] is bool(row["temporal_pool"])
    assert cfg["model"]["non_local"] is bool(row["nl_type"])
    assert cfg["loop"]["compile"] is bool(row["compile"])
    assert cfg["recipe"]["ema"] == (0.9 if row["ema"] else 0.0)
    assert ("ema" in ckpt) is bool(row["ema"])
    assert cfg["recipe"]["precise_bn"] == (1 if row["precise_bn"] else 0)
    assert cfg["optim"]["batch_multiplier"] == (2 if row["batch_multiplier"] else 1)
    if row["nl_type"]:
        assert ckpt["model_config"]["nl_type"] == FACTORS["nl_type"][row["nl_type"]][-1]


def train_row(data_root: str, out: str, row: dict[str, int], videos: list[str]) -> dict:
    """One tiny epoch of a row; a row with --resume auto trains epoch 1 of 2, stops
    (--stop_after_epochs) and continues with --resume auto."""
    if not row["resume"]:
        summary = train_main.main(row_argv(data_root, out, row, videos, "--epochs", "1"))
        assert_trained(checkpoint_of(summary), row, 1)
        return summary
    first = row_argv(data_root, out, row, videos, "--epochs", "2", "--stop_after_epochs", "1")
    assert train_main.main(first)["stopped"]
    summary = train_main.main(row_argv(data_root, out, row, videos, "--epochs", "2"))
    assert_trained(checkpoint_of(summary), row, 2)
    return summary


# --------------------------------------------------------------------------------------------
# refused pairs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pair", sorted(REFUSED.values()))
def test_a_pair_that_cannot_work_is_refused_at_once_in_one_line(
    pair, data_root, tmp_path, capsys
):
    factors = {flag.lstrip("-") for flag in pair}
    row = {f: int(f in factors) for f in FACTORS}
    argv = row_argv(data_root, str(tmp_path), row, [], "--epochs", "1")
    with pytest.raises(SystemExit) as exc:
        train_main.main(argv)
    message = exc.value.code
    if not isinstance(message, str):  # refused while parsing: argparse's usage, then one line
        errors = [line for line in capsys.readouterr().err.splitlines() if "error: " in line]
        assert len(errors) == 1, errors
        message = errors[0]
    assert "\n" not in message and all(flag in message for flag in pair), message
    assert "drop" in message  # what to use instead
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "log").exists()


# --------------------------------------------------------------------------------------------
# precise BN takes its batches as the training loop does
# --------------------------------------------------------------------------------------------

CPU = du.DistContext(False, 0, 1, 0, 1, torch.device("cpu"), None)


def test_precise_bn_recomputes_the_statistics_from_device_augmented_batches(data_root, tmp_path):
    # --device_aug --precise_bn 1: the precise-BN loader hands over encoded clips (it used the
    # plain collate and died on them after a whole epoch). The recomputed statistics of the
    # first BatchNorm are those of its input on that batch, decoded and augmented on the device,
    # computed here by hand with a hook.
    argv = tiny_args(data_root, str(tmp_path), "--device_aug", "--precise_bn", "1", "--dry_run")
    cfg = train_main.resolve(parse_args(argv))
    model, settings = train_main.prepare_model(cfg, CPU)
    train_set, val_set = train_main.build_datasets(cfg, model)
    loader = train_main.build_loaders(cfg, train_set, val_set, CPU).precise_bn
    loader.sampler.set_epoch(1)
    loader.dataset.set_epoch(1)
    batch = next(iter(loader))
    assert isinstance(batch[0], EncodedBatch) and len(batch[0]) == 2
    seen = []
    bn = model.base_model.bn1
    hook = bn.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
    with torch.no_grad():
        model.eval()(model_batch(batch, CPU, settings)[0])
    assert precise_bn(model, loader, 1, CPU, settings) == 1
    hook.remove()
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])  # the same batch, decoded twice
    x = seen[0].transpose(0, 1).reshape(bn.num_features, -1)  # [C, N*T*H*W]
    torch.testing.assert_close(bn.running_mean, x.mean(dim=1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, x.var(dim=1, unbiased=True), rtol=1e-4, atol=1e-5)


def _precise_bn_with_a_one_clip_batch(local_rank: int, port: int, out_dir: str) -> None:
    plan = du.LaunchPlan(
        mode="spawn", nprocs=2, nodes=1, world_size=2, node_rank=0, backend="gloo",
        dist_url=f"tcp://127.0.0.1:{port}", use_cuda=False, local_world_size=2,
    )  # fmt: skip
    ctx = du.init_worker(plan, local_rank, timeout_minutes=1.0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.BatchNorm1d(4))
    g = torch.Generator().manual_seed(10 + ctx.rank)
    batches = [(torch.randn(3, 6, generator=g), torch.zeros(3)) for _ in range(3)]
    if ctx.rank == 0:  # its second batch lost two of its three clips (unreadable videos)
        batches[1] = (batches[1][0][:1], batches[1][1][:1])
    used = precise_bn(model, batches, 3, ctx, LoopSettings(min_batch=2))
    result = {"used": used, "mean": model[2].running_mean.tolist()}
    with open(os.path.join(out_dir, f"rank{ctx.rank}.json"), "w") as f:
        json.dump(result, f)
    du.cleanup(ctx)


def test_precise_bn_skips_a_batch_too_small_on_any_rank_on_every_rank(tmp_path):
    # BatchNorm1d cannot normalise one clip: rank 0 alone failed and rank 1 waited for it until
    # the collective timeout. Both ranks must skip that batch and end with the same statistics.
    du.spawn(_precise_bn_with_a_one_clip_batch, 2, (du.free_port(), str(tmp_path)),
             forward_signals=False)  # fmt: skip
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["used"] for r in results] == [2, 2]  # batches 0 and 2 on both ranks
    assert results[0]["mean"] == results[1]["mean"]  # averaged over the ranks


# --------------------------------------------------------------------------------------------
# every pair trains
# --------------------------------------------------------------------------------------------


def test_a_run_with_many_options_on_trains(data_root, tmp_path):
    # The default suite's share of the covering set: the device path with precise BN (whose
    # loader collated encoded clips with the plain collate and died after a whole epoch), EMA,
    # CutMix, label smoothing, repeated augmentation, accumulation, channels-last and a
    # non-local block, in one run.
    row = {f: 0 for f in FACTORS}
    row.update(device_aug=1, precise_bn=1, ema=1, mixing=2, label_smoothing=1, repeated_aug=1)
    row.update(batch_multiplier=1, channels_last=1, nl_type=3)
    train_row(data_root, str(tmp_path), row, [])


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(ROWS)))
def test_each_row_of_the_covering_set_trains(index, data_root, videos, tmp_path):
    train_row(data_root, str(tmp_path), ROWS[index], videos)


# --------------------------------------------------------------------------------------------
# SIGTERM at a random step, then --resume auto
# --------------------------------------------------------------------------------------------


def signal_rows() -> list[int]:
    """Rows of the covering set that together turn every option on at least once (greedy)."""
    chosen: list[int] = []
    missing = {(f, i) for f, levels in FACTORS.items() for i in range(1, len(levels))}
    while missing:
        best = max(range(len(ROWS)), key=lambda r: len(missing & set(ROWS[r].items())))
        chosen.append(best)
        missing -= set(ROWS[best].items())
    return chosen


def _run_until(argv: list[str], needle: str, cwd) -> tuple[subprocess.Popen, list[str]]:
    """main.py in a session of its own, read until a line holding `needle`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=REPO)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "main.py"), *argv], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            return proc, lines
    proc.wait()
    raise AssertionError(f"{needle!r} never came; output:\n{''.join(lines[-40:])}")


@pytest.mark.slow
@pytest.mark.parametrize("index", signal_rows())
def test_sigterm_at_a_random_step_then_resume_gives_the_uninterrupted_weights(
    index, data_root, videos, tmp_path
):
    row = dict(ROWS[index])
    rng = random.Random(index)
    extra = ["--epochs", "2", "--workers", "2"]
    full = train_main.main(row_argv(data_root, str(tmp_path / "full"), row, videos, *extra))
    epoch, it = rng.randrange(1, 3), rng.randrange(1, 4)
    argv = row_argv(data_root, str(tmp_path / "parts"), row, videos, *extra)
    proc, lines = _run_until(argv, f"Epoch: [{epoch}][{it}/4]", tmp_path)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group, loader workers too (as torchrun)
    out = "".join(lines) + proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "stopped by SIGTERM" in out, out[-3000:]
    resume = [] if row["resume"] else ["--resume", "auto"]
    parts = train_main.main(argv + resume)
    a, b = checkpoint_of(full), checkpoint_of(parts)
    assert a["epoch"] == b["epoch"] == 2, f"row {C.row_flags(FACTORS, row)}"
    assert_same_state(a["state_dict"], b["state_dict"])
    if row["ema"]:
        assert_same_state(a["ema"]["state_dict"], b["ema"]["state_dict"])
