"""Issue 18's recipe options (ops/engine/recipe.py and the files it names), each checked against
a hand computation, and the published recipe left exactly as it was when they are off."""

import argparse
import math
import shlex

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import main as train_main
import test_models
from ops.checkpoint import load_checkpoint
from ops.distributed import DistContext
from ops.engine.config import RecipeConfig, tsn_kwargs
from ops.engine.ema import WeightEMA
from ops.engine.mixing import ClipMix
from ops.engine.precise_bn import precise_bn
from ops.engine.recipe import OFF, active_options, training_criterion
from ops.engine.repeated_aug import RepeatedAugSampler
from ops.engine.seeding import EpochSampler, SeededDataset
from ops.engine.state import EMA_CHECKPOINT
from ops.model_loading import load_model
from ops.randaugment import ClipRandAugment
from opts import parse_args
from tests.test_main import assert_same_state, tiny_args
from tests.test_opts import KINETICS, SOMETHING

CPU = DistContext(False, 0, 1, 0, 1, torch.device("cpu"), None)


# --------------------------------------------------------------------------- defaults
@pytest.mark.parametrize("command", [KINETICS, SOMETHING])
def test_published_commands_have_every_recipe_option_off(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RNL_DATA_ROOT", raising=False)
    args = parse_args(shlex.split(command))
    assert {k: getattr(args, k) for k in OFF} == {
        "label_smoothing": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "mix_prob": 1.0,
        "mix_switch_prob": 0.5,
        "randaugment": None,
        "repeated_aug": 1,
        "ema": 0.0,
        "precise_bn": 0,
    }
    out = train_main.main(shlex.split(command) + ["--dry_run"])
    assert active_options(RecipeConfig(**out["config"]["recipe"])) == {}
    assert out["config"]["recipe"] == OFF  # every option at its "off" value
    assert "recipe: published (no recipe option on)" in capsys.readouterr().out
    # the published loss: plain cross-entropy
    assert training_criterion(args).label_smoothing == 0.0


def test_options_that_are_on_are_named_in_the_run_name_and_the_dry_run(capsys):
    extra = "--label_smoothing 0.1 --mixup 0.8 --cutmix 1.0 --randaugment 2,9 --repeated_aug 2 "
    extra += "--ema 0.999 --precise_bn 20"
    out = train_main.main(shlex.split(KINETICS) + shlex.split(extra) + ["--dry_run"])
    name = out["config"]["name"]
    assert name.endswith("_do0.5_ls0.1_mixup0.8_cutmix1.0_ra2-9_rep2_ema0.999_pbn20_1")
    # mix_prob / mix_switch_prob at their defaults are not named
    on = active_options(RecipeConfig(**out["config"]["recipe"]))
    assert "mix_prob" not in on
    assert "mix_switch_prob" not in on
    # a switch probability matters only with both kinds on; a mix_prob only with mixing on
    only_mixup = parse_args(["--dataset", "kinetics", "--mixup", "1", "--mix_switch_prob", "0.2"])
    assert active_options(only_mixup) == {"mixup": 1.0}
    no_mix = parse_args(["--dataset", "kinetics", "--mix_prob", "0.5"])
    assert active_options(no_mix) == {}
    printed = capsys.readouterr().out
    assert "recipe: published + --label_smoothing 0.1, --mixup 0.8" in printed
    assert "--randaugment 2,9" in printed


@pytest.mark.parametrize(
    "flags, needle",
    [
        ("--label_smoothing 1.0", "--label_smoothing must be in [0, 1)"),
        ("--ema 1.5", "--ema is a decay in (0, 1)"),
        ("--mix_prob 2", "--mix_prob must be in [0, 1]"),
        ("--repeated_aug 0", "--repeated_aug must be >= 1"),
        ("--randaugment 2", "expected N,M"),
        ("--randaugment 2,9 --modality Flow", "RGB frames only"),
    ],
)
def test_bad_recipe_values_are_one_line_errors(flags, needle, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--dataset", "kinetics"] + shlex.split(flags))
    assert needle in capsys.readouterr().err


# --------------------------------------------------------------------------- label smoothing
def test_label_smoothing_loss_equals_a_hand_computation():
    args = argparse.Namespace(label_smoothing=0.1)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 1])
    # By hand: target = 0.9 * onehot + 0.1 / 3, loss = -sum target * log softmax, batch mean.
    expected = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        for k, v in enumerate(row):
            t = 0.9 * (k == y) + 0.1 / 3
            expected -= t * (v - log_z)
    expected /= 2
    assert training_criterion(args)(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    # Soft (mixed) targets are smoothed the same way: target = 0.9 * soft + 0.1 / 3.
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.25, 0.75]])
    expected = 0.0
    for row, s in zip(logits.tolist(), soft.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        expected -= sum((0.9 * sk + 0.1 / 3) * (v - log_z) for v, sk in zip(row, s))
    expected /= 2
    assert training_criterion(args)(logits, soft).item() == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- mixup / cutmix
def _clips(n=4, t=3, h=6, w=5):
    return torch.arange(n * t * 3 * h * w, dtype=torch.float32).view(n, t * 3, h, w)


def test_cutmix_pastes_the_same_box_on_every_frame_and_targets_sum_to_one():
    data, labels = _clips(), torch.tensor([0, 1, 2, 1])
    mix = ClipMix(num_class=3, cutmix_alpha=1.0)
    box = (1, 4, 2, 5)  # rows 1..3, columns 2..4 of a 6 x 5 frame
    # pair (0, 3): CutMix with one box; pair (1, 2): mixup with lambda 0.3
    plans = [("cutmix", 1 - 9 / 30, box), ("mixup", 0.3, None)]
    plans += plans[::-1]
    mixed, soft, dominant = mix.apply(data, labels, plans)
    # By hand, frame by frame: clip i's partner is clip 3 - i.
    for i, partner in enumerate([3, 2, 1, 0]):
        for f in range(3):
            frame = data[i, 3 * f : 3 * f + 3].clone()
            other = data[partner, 3 * f : 3 * f + 3]
            if plans[i][0] == "cutmix":
                frame[:, 1:4, 2:5] = other[:, 1:4, 2:5]
            elif plans[i][0] == "mixup":
                frame = 0.3 * frame + 0.7 * other
            assert torch.allclose(mixed[i, 3 * f : 3 * f + 3], frame), (i, f)
    # The pasted region of clip 0 is the same box in each of its 3 frames.
    changed = (mixed[0] != data[0]).view(3, 3, 6, 5).any(dim=1)
    assert all(torch.equal(changed[f], changed[0]) for f in range(3))
    assert changed[0].sum() == 9
    assert torch.allclose(soft.sum(dim=1), torch.ones(4))
    # clip 0 keeps 21/30 of its area: 0.7 of label 0 and 0.3 of its partner's label 1;
    # clip 3 is the other side of the same box: 0.7 of its label 1, 0.3 of label 0
    assert torch.allclose(soft[0], torch.tensor([0.7, 0.3, 0.0]))
    assert torch.allclose(soft[3], torch.tensor([0.3, 0.7, 0.0]))
    assert torch.allclose(soft[1], torch.tensor([0.0, 0.3, 0.7]))  # 0.3 of its 1, 0.7 of 2
    assert torch.allclose(soft[2], torch.tensor([0.0, 0.7, 0.3]))
    # accuracy counts the dominant label: clips 1 and 2 are mostly their partner
    assert dominant.tolist() == [0, 2, 1, 1]


def test_drawn_boxes_match_their_lambda_and_draws_repeat_with_the_seed():
    mix = ClipMix(num_class=5, mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=0.8)
    torch.manual_seed(3)
    plans = mix.draw(400, 32, 24)
    assert all(plans[i] == plans[399 - i] for i in range(200))  # one draw per clip pair
    kinds = [p[0] for p in plans[:200]]
    assert {"none", "mixup", "cutmix"} == set(kinds)
    assert 0.1 < kinds.count("none") / 200 < 0.3  # mix_prob 0.8
    assert [p[0] for p in mix.draw(5, 8, 8)][2] == "none"  # an odd batch's middle clip
    for kind, lam, box in plans:
        assert 0.0 <= lam <= 1.0
        if kind == "cutmix":
            y0, y1, x0, x1 = box
            assert 0 <= y0 <= y1 <= 32 and 0 <= x0 <= x1 <= 24
            assert lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / (32 * 24))
    torch.manual_seed(3)
    assert mix.draw(400, 32, 24) == plans


# --------------------------------------------------------------------------- EMA
def test_ema_equals_a_hand_computed_average():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    hand = None
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(8, 3)).pow(2).sum().backward()
        opt.step()
        ema.update()
        now = {
            k: v.double() if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()
        }
        if hand is None:  # the first update copies the weights
            hand = now
        else:
            hand = {
                k: (0.9 * hand[k] + 0.1 * now[k]) if now[k].is_floating_point() else now[k]
                for k in now
            }
    assert ema.updates == 4
    got = ema.module.state_dict()
    for k in hand:
        assert torch.allclose(got[k].double(), hand[k].double(), atol=1e-6), k
    assert got["1.num_batches_tracked"] == 4  # integers copied, not averaged
    # the BN statistics are averaged too, and differ from the model's
    assert not torch.equal(got["1.running_mean"], model.state_dict()["1.running_mean"])


def test_every_option_resumes_bit_identically_and_the_ema_loads_like_any_checkpoint(
    data_root, tmp_path
):
    # All recipe options at once: their random draws (mixing, RandAugment, repeated copies,
    # precise BN's batches) must all come back the same after a resume.
    extra = ["--epochs", "2", "--ema", "0.8", "--workers", "0", "--label_smoothing", "0.1"]
    extra += ["--mixup", "0.8", "--cutmix", "1.0", "--randaugment", "2,9", "--repeated_aug", "2"]
    extra += ["--precise_bn", "1"]
    full, parts = tmp_path / "full", tmp_path / "parts"
    a = train_main.main(tiny_args(data_root, str(full), *extra))
    train_main.main(tiny_args(data_root, str(parts), *extra, "--stop_after_epochs", "1"))
    b = train_main.main(tiny_args(data_root, str(parts), *extra, "--resume", "auto"))
    assert a["run_name"] == b["run_name"]
    assert a["run_name"].endswith("_ls0.1_mixup0.8_cutmix1.0_ra2-9_rep2_ema0.8_pbn1")
    ca = load_checkpoint(full / "ckpt" / a["run_name"] / "ckpt.pth.tar")
    cb = load_checkpoint(parts / "ckpt" / b["run_name"] / "ckpt.pth.tar")
    assert ca["ema"]["updates"] == cb["ema"]["updates"] == 8  # 2 epochs x 4 steps
    assert_same_state(ca["state_dict"], cb["state_dict"])
    assert_same_state(ca["ema"]["state_dict"], cb["ema"]["state_dict"])
    assert ca["run_config"]["recipe"]["ema"] == 0.8
    assert ca["run_config"]["recipe"]["randaugment"] == (2, 9)
    # ckpt.ema.pth.tar: the EMA weights as an ordinary checkpoint (test_models.py, predict)
    path = parts / "ckpt" / b["run_name"] / EMA_CHECKPOINT
    model, meta = load_model(path)
    assert_same_state(model.state_dict(), cb["ema"]["state_dict"])
    assert load_checkpoint(path)["best_prec1"] == b["ema_val_top1"]
    # test_models.py takes it as it is, and scores it as the run's EMA validation did
    argv = ["synthetic", "--data_root", data_root, "--weights", str(path), "--test_segments"]
    argv += ["4", "--test_crops", "1", "--batch_size", "2", "-j", "0"]
    metrics = test_models.main(test_models.get_args_parser().parse_args(argv))
    assert metrics["top1"] == pytest.approx(b["ema_val_top1"])
    assert not torch.equal(
        cb["ema"]["state_dict"]["new_fc.weight"], cb["state_dict"]["new_fc.weight"]
    )


# --------------------------------------------------------------------------- precise BN
class _Net(nn.Module):
    """conv -> BN (trains) -> frozen BN (eval in train mode, as partial BN) -> pooled logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.frozen = nn.BatchNorm2d(3)

    def train(self, mode=True):
        super().train(mode)
        self.frozen.eval()
        return self

    def forward(self, x):
        return self.frozen(self.bn(self.conv(x))).mean(dim=(2, 3))


def test_precise_bn_gives_the_statistics_of_the_batches_it_saw():
    torch.manual_seed(0)
    net = _Net()
    net.frozen.running_mean.fill_(7.0)
    batches = [(torch.randn(4, 2, 3, 3) * (i + 1) + i, torch.zeros(4)) for i in range(3)]
    batches.append((torch.randn(4, 2, 3, 3), torch.zeros(4)))  # beyond N = 3: unused
    batches.insert(1, None)  # a batch whose videos were all unreadable: skipped, not counted
    net.bn.running_mean.fill_(100.0)  # whatever was there is forgotten
    net.eval()
    assert precise_bn(net, batches, 3, CPU) == 3
    assert not net.training  # left as it was
    # By hand: the BN input of batch i is conv(x_i); per channel, mean over (N, H, W) and the
    # unbiased variance; the statistics are their averages over the 3 batches.
    with torch.no_grad():
        used = [b for b in batches if b is not None][:3]
        feats = [net.conv(x).transpose(0, 1).reshape(3, -1) for x, _ in used]
    mean = sum(f.mean(dim=1) for f in feats) / 3
    var = sum(f.var(dim=1, unbiased=True) for f in feats) / 3
    assert torch.allclose(net.bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(net.bn.running_var, var, atol=1e-5)
    assert net.bn.momentum == 0.1  # restored
    assert torch.equal(net.frozen.running_mean, torch.full((3,), 7.0))  # partial BN kept


# --------------------------------------------------------------------------- RandAugment
def _frames(t=4, h=20, w=18, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, 3, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("seed", range(6))
def test_randaugment_applies_the_same_ops_to_every_frame_and_repeats_with_the_seed(seed):
    clip = _frames()
    ra = ClipRandAugment(2, 9)
    torch.manual_seed(seed)
    out = ra(clip)
    # Independently: each frame alone, with the generator in the same state, draws the same ops
    # and magnitudes (RandAugment's draws do not depend on the image), so if the clip got one
    # draw for all frames, frame t of the clip result is the augmentation of frame t alone.
    for t in range(4):
        torch.manual_seed(seed)
        assert torch.equal(out[t], ClipRandAugment(2, 9)(clip[t : t + 1])[0]), t
    torch.manual_seed(seed)
    assert torch.equal(ra(clip), out)  # reproducible from the seed
    # PIL frames (main.py's pipeline) get exactly the same result as the tensor
    pil = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in clip]
    torch.manual_seed(seed)
    back = torch.stack([torch.from_numpy(np.array(f)).permute(2, 0, 1) for f in ra(pil)])
    assert torch.equal(back, out)


def test_randaugment_draws_differ_between_clips_and_identical_frames_stay_identical():
    frame = _frames(t=1)
    clip = frame.repeat(5, 1, 1, 1)
    outs = []
    for seed in range(8):
        torch.manual_seed(seed)
        out = ClipRandAugment(2, 15)(clip)
        assert all(torch.equal(out[t], out[0]) for t in range(5))  # no flicker between frames
        outs.append(out[0])
    assert len({o.numpy().tobytes() for o in outs}) > 4  # the ops are drawn per clip


@pytest.mark.parametrize("pixels", ["fast", "pil"])
def test_randaugment_in_the_training_data_is_seeded_per_clip(data_root, pixels):
    # The training dataset as main.py builds it, wrapped as main.py wraps it: item i of epoch e
    # is the same every time, and another epoch draws another augmentation.
    argv = tiny_args(data_root, "/unused", "--randaugment", "2,9", "--train_pixels", pixels)
    cfg = train_main.resolve(parse_args(argv))
    model = train_main.TSN(**tsn_kwargs(cfg, "scratch"), print_spec=False)
    train, _ = train_main.build_datasets(cfg, model)
    tf = train.transform  # the PIL path's Compose, or the fast path's one transform
    steps = tf.transforms if pixels == "pil" else [tf.randaugment]
    assert any(isinstance(t, ClipRandAugment) for t in steps)
    seeded = SeededDataset(train, seed=0)
    a, b = seeded[3][0], seeded[3][0]
    assert torch.equal(a, b)
    seeded.set_epoch(1)
    assert not torch.equal(seeded[3][0], a)


# --------------------------------------------------------------------------- repeated aug
def test_repeated_aug_yields_each_index_k_times_over_two_ranks_with_other_augmentations():
    n, k = 10, 2

    class Draw(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return i, torch.rand(()).item()  # stands for a random crop

    seeded = SeededDataset(Draw(), seed=0)
    seen = []
    for rank in range(2):
        sampler = RepeatedAugSampler(n, repeats=k, num_replicas=2, rank=rank, seed=0)
        sampler.set_epoch(4)
        assert len(sampler) == 5  # the epoch keeps its length: 10 over 2 ranks
        seen += [seeded[i] for i in sampler]
    assert len(seen) == 10
    counts = {}
    for item, _ in seen:
        counts[item] = counts.get(item, 0) + 1
    assert set(counts.values()) == {k} and len(counts) == n // k
    draws = {}
    for item, draw in seen:
        draws.setdefault(item, set()).add(draw)
    assert all(len(d) == k for d in draws.values())  # every copy augmented differently
    # By hand: the order is the epoch's permutation with each index twice in a row, copies as
    # i + c * n; rank r takes every other position, so the two copies go to the two ranks.
    perm = EpochSampler(n, seed=0)
    perm.set_epoch(4)
    expected = [i + c * n for i in perm.permutation() for c in range(k)][:n]
    r0 = RepeatedAugSampler(n, repeats=k, num_replicas=2, rank=0, seed=0)
    r0.set_epoch(4)
    assert list(r0) == expected[0::2] and all(i < n for i in r0)  # copy 0 on rank 0


def test_repeated_aug_resumes_at_the_same_copy_and_k1_is_the_published_order():
    n = 9
    full = RepeatedAugSampler(n, repeats=3, num_replicas=2, rank=0, seed=5)
    full.set_epoch(2)
    order = full.order()
    assert len(order) == 10  # 9 padded to a multiple of 2 ranks, as without repeats
    # stopped after 2 draws per rank on 2 ranks: global position 4; resumed on 1 process
    assert full.position(2) == 4
    resumed = RepeatedAugSampler(n, repeats=3, num_replicas=1, rank=0, seed=5)
    resumed.set_epoch(2, start=4)
    # the same positions of the same order (one process pads nothing: the epoch ends at 9)
    assert list(resumed) == order[4:9]
    assert order[:9] == [i + c * n for i in full.permutation() for c in range(3)][:9]
    for rank in range(2):
        plain = EpochSampler(n, num_replicas=2, rank=rank, seed=5)
        once = RepeatedAugSampler(n, repeats=1, num_replicas=2, rank=rank, seed=5)
        plain.set_epoch(2, start=2)
        once.set_epoch(2, start=2)
        assert list(once) == list(plain)


def test_two_gloo_processes_with_repeated_aug_ema_and_precise_bn(data_root, tmp_path):
    extra = ["--epochs", "2", "--multiprocessing-distributed", "--cpu_procs", "2"]
    extra += ["--batch_size", "4", "--dist-backend", "gloo", "--workers", "0"]
    extra += ["--repeated_aug", "2", "--ema", "0.9", "--precise_bn", "1"]
    out = train_main.main(tiny_args(data_root, str(tmp_path), *extra))
    run_dir = tmp_path / "ckpt" / out["run_name"]
    ckpt = load_checkpoint(run_dir / "ckpt.pth.tar")
    assert ckpt["world_size"] == 2
    assert ckpt["lr_scheduler"]["iters_per_epoch"] == 2  # 8 videos / (2 x 2): unchanged
    sums = ckpt["replica_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert ckpt["ema"]["updates"] == 4  # after each of the 2 x 2 optimizer steps
    recipe = ckpt["run_config"]["recipe"]
    assert recipe["repeated_aug"] == 2 and recipe["precise_bn"] == 1
    ema_file = load_checkpoint(run_dir / EMA_CHECKPOINT)
    assert_same_state(ema_file["state_dict"], ckpt["ema"]["state_dict"])
