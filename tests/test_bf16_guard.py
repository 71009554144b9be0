"""ops/bf16_guard.py: a wrong bf16 kernel is found and routed around, nothing changes without one.

The faulty kernel is simulated (a dispatch mode that corrupts the bf16 weight gradient of the
convolutions of one weight shape), so these tests prove the routing on every CPU; the real
fault of torch 2.14.1 on CPUs with AVX-512 BF16 / AMX is checked where the CPU has it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ops import bf16_guard
from ops.models import TSN
from ops.region_conv import RegionConv3d
from ops.rnl import RNLBlock
from ops.temporal_shift import TemporalShift

PENTA = "base_model.layer2.0.nl.penta"  # the first RNL block's region conv (64 channels, 3x7x7)
CLIP = (2, 4 * 3, 32, 32)  # 2 clips of 4 frames, 32 px


@pytest.fixture(autouse=True)
def _fresh_verdicts():
    # Verdicts found under a simulated fault must not outlive the test that simulated it.
    bf16_guard.clear_cache()
    yield
    bf16_guard.clear_cache()


class WrongWeightGradient(TorchDispatchMode):
    """A bf16 convolution backward whose weight gradient is negated, for the weights of one
    shape (optionally only when the input is channels-last): the fault class of torch 2.14.1,
    where output and input gradient stay right."""

    def __init__(self, weight_shape: tuple, channels_last_only: bool = False) -> None:
        super().__init__()
        self.weight_shape = tuple(weight_shape)
        self.channels_last_only = channels_last_only
        self.hits = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.convolution_backward.default:
            x, weight = args[1], args[2]
            channels_last = x.dim() == 5 and not x.is_contiguous()
            if (
                weight.dtype == torch.bfloat16
                and tuple(weight.shape) == self.weight_shape
                and out[1] is not None
                and (channels_last or not self.channels_last_only)
            ):
                self.hits += 1
                out = (out[0], -out[1], out[2])
        return out


def _model(**kw) -> TSN:
    torch.manual_seed(0)
    cfg = dict(base_model="resnet18", is_shift=True, non_local=True, pretrain="scratch")
    cfg.update(dropout=0.0, print_spec=False, input_size=32, **kw)
    model = TSN(6, 4, "RGB", **cfg).train()
    with torch.no_grad():  # trained-looking RNL blocks (a new one is the identity: no gradient)
        for m in model.modules():
            if isinstance(m, RNLBlock):
                m.W[1].weight.fill_(0.7)
    return model


def _penta_weight_shape(model: TSN) -> tuple:
    penta = dict(model.named_modules())[PENTA]
    return (penta.channels, 1, *penta.kernel_size)  # the depthwise kernel the backward sees


def _layer_grads(module: torch.nn.Module, x: torch.Tensor, amp: bool) -> tuple:
    """Output and weight gradient of ``module`` on ``x`` (bf16 autocast with ``amp``)."""
    module = copy.deepcopy(module)
    x = x.detach().requires_grad_(True)
    with torch.autocast("cpu", torch.bfloat16, enabled=amp):
        y = module(x)
    y.float().square().sum().backward()
    return y.detach().float(), x.grad.float(), module.weight.grad.float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _step(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """One bf16 training step's output and parameter gradients."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", torch.bfloat16):
        out = model(x)
    F.cross_entropy(out.float(), torch.arange(len(x)) % out.shape[1]).backward()
    return [out.detach()] + [p.grad for p in model.parameters() if p.grad is not None]


def _not_routed(module: torch.nn.Module) -> bool:
    return not isinstance(module, bf16_guard.Bf16Routed) and not hasattr(module, "bf16_route")


def test_a_wrong_bf16_weight_gradient_is_routed_and_named(caplog):
    model = _model()
    penta = dict(model.named_modules())[PENTA]
    x = torch.randn(2, penta.channels, 4, 4, 4).bfloat16().float()
    with WrongWeightGradient(_penta_weight_shape(model)) as fault:
        ref = _layer_grads(penta, x, amp=False)
        wrong = _layer_grads(penta, x, amp=True)
        assert fault.hits == 1 and _rel(wrong[2], ref[2]) > 1  # the simulated kernel is wrong
        with caplog.at_level(logging.WARNING, logger="ops.bf16_guard"):
            routed = bf16_guard.guard_bf16(model, CLIP, "cpu", "bf16")
        # The fault is in both memory formats: float32 is the only right route.
        assert routed == {PENTA: "fp32"}
        got = _layer_grads(penta, x, amp=True)
    for a, b in zip(got, ref):
        assert _rel(a, b) < 1e-2
    with torch.autocast("cpu", torch.bfloat16):
        assert penta(x).dtype == torch.bfloat16  # what the layer returned before the route
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and PENTA in warnings[0].getMessage()
    assert "docs/bf16_cpu.md" in warnings[0].getMessage()
    others = [m for n, m in model.named_modules() if n != PENTA]
    assert all(_not_routed(m) for m in others)  # every other layer runs as before
    # the route is the layer's class (a subclass of its own): copies and pickles keep it, the
    # state_dict keeps its keys
    assert isinstance(penta, bf16_guard.Bf16Routed) and isinstance(penta, RegionConv3d)
    assert "bf16_route='fp32'" in repr(penta)
    assert isinstance(copy.deepcopy(penta), bf16_guard.Bf16Routed)
    assert isinstance(pickle.loads(pickle.dumps(penta)), bf16_guard.Bf16Routed)
    assert list(model.state_dict()) == list(_model().state_dict())
    assert penta.cpu_channels_last  # the fp32 route keeps the layout


def test_routed_layer_trains_with_the_fast_paths_and_matches_an_unfaulted_model():
    # Fast paths on (depthwise region conv on channels-last, shift+conv recompute, recompute):
    # under the fault the guarded model's step is that of a model whose penta runs in fp32.
    model = _model(recompute=True, shift_recompute=True, region_impl="depthwise")
    expected = copy.deepcopy(model)
    bf16_guard.apply_route(dict(expected.named_modules())[PENTA], "fp32")
    clip = torch.randn(CLIP)
    with WrongWeightGradient(_penta_weight_shape(model)) as fault:
        assert bf16_guard.guard_bf16(model, CLIP, "cpu", "bf16") == {PENTA: "fp32"}
        hits = fault.hits
        got = _step(model, clip)
        assert fault.hits == hits  # the faulty kernel no longer runs in the model
    want = _step(expected, clip)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    unguarded = _model(recompute=True, shift_recompute=True, region_impl="depthwise")
    with WrongWeightGradient(_penta_weight_shape(unguarded)):
        _step(unguarded, clip)
    wrong = dict(unguarded.named_parameters())[PENTA + ".weight"].grad
    assert _rel(wrong, dict(expected.named_parameters())[PENTA + ".weight"].grad) > 1


@pytest.mark.parametrize(
    "contiguous_s, cheaper",
    [(1.0, "contiguous"), (3.0, "fp32"), (1.8, "fp32")],  # fp32 takes 2 s; 1.8 s: within noise
)
def test_a_fault_in_one_memory_format_takes_the_cheaper_right_route(
    monkeypatch, contiguous_s, cheaper
):
    timings = {"contiguous": contiguous_s, "fp32": 2.0}
    chosen: list = []

    def seconds(self, repeats=3):
        route = self.module.bf16_route
        chosen.append(route)
        return timings[route]

    monkeypatch.setattr(bf16_guard._Probe, "seconds", seconds)
    model = _model()
    penta = dict(model.named_modules())[PENTA]
    x = torch.randn(2, penta.channels, 4, 4, 4).bfloat16().float()
    with WrongWeightGradient(_penta_weight_shape(model), channels_last_only=True):
        ref = _layer_grads(penta, x, amp=False)
        assert bf16_guard.guard_bf16(model, CLIP, "cpu", "bf16") == {PENTA: cheaper}
        got = _layer_grads(penta, x, amp=True)
    assert sorted(chosen) == ["contiguous", "fp32"]  # both were right, both were timed
    assert penta.cpu_channels_last is (cheaper != "contiguous")
    for a, b in zip(got, ref):
        assert _rel(a, b) < 1e-2


def test_without_a_fault_nothing_is_routed_and_the_step_is_bit_identical(monkeypatch):
    model = _model()
    plain = copy.deepcopy(model)
    rng = torch.get_rng_state()
    # without the guard's own restore of the random state: the probe draws from its generator
    monkeypatch.setattr(bf16_guard, "_kept_rng", contextlib.nullcontext)
    routed = bf16_guard.guard_bf16(model, CLIP, "cpu", "bf16")
    assert routed == {}
    assert torch.equal(torch.get_rng_state(), rng)  # the model's random stream is untouched
    assert all(p.grad is None for p in model.parameters())
    assert all(_not_routed(m) for m in model.modules())
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name
    clip = torch.randn(CLIP)
    got, want = _step(model, clip), _step(plain, clip)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_a_repeated_probe_computes_nothing(monkeypatch):
    with WrongWeightGradient(_penta_weight_shape(_model())):
        assert bf16_guard.guard_bf16(_model(), CLIP, "cpu", "bf16") == {PENTA: "fp32"}

        def no_probe(*args, **kwargs):
            raise AssertionError("probed again")

        monkeypatch.setattr(bf16_guard._Probe, "__init__", no_probe)
        second = _model()  # another model of the same shapes: the verdicts are reused
        assert bf16_guard.guard_bf16(second, CLIP, "cpu", "bf16") == {PENTA: "fp32"}
        assert dict(second.named_modules())[PENTA].bf16_route == "fp32"
        # guarding a routed model again leaves its routes as they are
        assert bf16_guard.guard_bf16(second, CLIP, "cpu", "bf16") == {}
        with pytest.raises(AssertionError, match="probed again"):  # another batch: new shapes
            bf16_guard.guard_bf16(_model(), (4, *CLIP[1:]), "cpu", "bf16")


def test_no_right_route_is_a_one_line_error():
    class Unstable(WrongWeightGradient):  # and in float32 right only the first time
        fp32_calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = super().__torch_dispatch__(func, types, args, kwargs)
            if func is torch.ops.aten.convolution_backward.default:
                if tuple(args[2].shape) == self.weight_shape and args[2].dtype == torch.float32:
                    self.fp32_calls += 1
                    if self.fp32_calls > 1:
                        out = (out[0], -out[1], out[2])
            return out

    model = _model()
    with Unstable(_penta_weight_shape(model)):
        with pytest.raises(ValueError, match=f"wrong for {PENTA} and no other way.*--amp off"):
            bf16_guard.guard_bf16(model, CLIP, "cpu", "bf16")
    assert all(_not_routed(m) for m in model.modules())


def test_only_cpu_bf16_is_probed(monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("probed")

    monkeypatch.setattr(bf16_guard, "trace_calls", no_probe)
    model = _model()
    assert bf16_guard.guard_bf16(model, CLIP, "cpu", "off") == {}
    assert bf16_guard.guard_bf16(model, CLIP, torch.device("cuda", 0), "bf16") == {}


def test_forward_only_probes_the_inference_path():
    # Testing runs no backward: the probe compares the output only, under no_grad (where the
    # region conv and the shift take their plain paths).
    model = _model()
    with WrongWeightGradient(_penta_weight_shape(model)) as fault:
        assert bf16_guard.guard_bf16(model.eval(), CLIP, "cpu", "bf16", backward=False) == {}
        assert fault.hits == 0
    verdicts = list(bf16_guard._VERDICTS.values())
    assert verdicts and all(set(v.errors) == {"y"} for v in verdicts)


@pytest.mark.parametrize("clips", [2, 5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_trace_records_what_the_layers_get_in_a_step(channels_last, clips):
    # The probe reproduces each call's input layout from the trace (at 5 clips: extrapolated
    # from 2 and 3): it must be what the layer gets in a training step at that batch.
    model = _model()
    if channels_last:
        model.to_channels_last()
    shape = (clips, *CLIP[1:])
    flags = [m.training for m in model.modules()]
    traced = bf16_guard.trace_calls(model, shape, channels_last)
    assert [m.training for m in model.modules()] == flags  # train/eval flags untouched
    modules = dict(model.named_modules())
    seen = {}

    def record(name):
        def hook(module, args, y):
            seen[name] = (tuple(args[0].shape), tuple(args[0].stride()), tuple(y.shape))

        return hook

    handles = [modules[c.name].register_forward_hook(record(c.name)) for c in traced]
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    _step(model, x)
    for h in handles:
        h.remove()
    assert len(traced) == len(seen) > 10
    for call in traced:
        assert seen[call.name] == (call.shape, call.stride, call.out_shape), call.name


def test_probed_layers_are_the_region_shift_and_suspect_convs():
    model = _model()
    names = {c.name for c in bf16_guard.trace_calls(model, CLIP)}
    modules = dict(model.named_modules())
    assert {n for n, m in modules.items() if isinstance(m, RegionConv3d)} <= names
    shifts = {n for n, m in modules.items() if isinstance(m, TemporalShift)}
    assert shifts <= names and not {f"{n}.net" for n in shifts} & names
    assert {n for n, m in modules.items() if isinstance(m, torch.nn.Conv3d)} <= names
    # the stem (7x7 over 32x32) and layer1's unshifted 3x3 convs (over 8x8) are ordinary
    assert "base_model.conv1" not in names and "base_model.layer1.0.conv2" not in names
    # layer4's 3x3 convs see 1x1 maps: a kernel larger than its input is a suspect class
    assert "base_model.layer4.0.conv2" in names


def test_the_real_kernel_fault_is_routed_where_this_cpu_has_it():
    # torch 2.14.1 on AVX-512 BF16 / AMX: wrong weight gradient for a 3x7x7 region conv over 2
    # frames. Measured here with the raw kernel, independently of the guard; where the CPU has
    # no fault (AVX2: bf16 is emulated) nothing may be routed.
    torch.manual_seed(0)
    conv = RegionConv3d(64, (3, 7, 7))
    x = torch.randn(2, 64, 2, 9, 9).bfloat16()
    w = conv.depthwise_weight().detach().bfloat16()
    g = torch.randn(2, 64, 2, 9, 9).bfloat16()
    args = ([1, 1, 1], [1, 3, 3], [1, 1, 1], False, [0, 0, 0], 64, [False, True, False])
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    g_cl = g.contiguous(memory_format=torch.channels_last_3d)
    raw = torch.ops.aten.convolution_backward(g_cl, x_cl, w, None, *args)[1]
    ref = torch.ops.aten.convolution_backward(g.float(), x.float(), w.float(), None, *args)[1]
    faulty = not _rel(raw.float(), ref) < bf16_guard.TOLERANCE if raw.isfinite().all() else True
    routed = bf16_guard.guard_bf16(
        conv, (2, 64, 2, 9, 9), "cpu", "bf16"
    )  # a bare layer: its own name is ""
    assert (routed != {}) == faulty
    got = _layer_grads(conv, x.float(), amp=True)
    want = _layer_grads(conv, x.float(), amp=False)
    for a, b in zip(got, want):
        assert _rel(a, b) < 5e-2


# ---------------------------------------------------------------------------------------------
# The hooks: main.py (training shapes) and test_models.py (forward only)


class WrongOutput(TorchDispatchMode):
    """A bf16 convolution whose output is 5 times too large, for the weights of one shape (a
    forward fault, the only kind a forward-only probe can find; not a sign flip, which the
    region features' affinity r.r would not show)."""

    def __init__(self, weight_shape: tuple) -> None:
        super().__init__()
        self.weight_shape = tuple(weight_shape)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.convolution.default:
            weight = args[1]
            if weight.dtype == torch.bfloat16 and tuple(weight.shape) == self.weight_shape:
                out = 5 * out
        return out


def test_main_py_probes_its_training_shapes_and_routes(data_root, tmp_path, capsys, monkeypatch):
    import main as train_main
    from tests.test_main import tiny_args

    calls = []
    guard = bf16_guard.guard_bf16

    def spy(model, shape, device, amp, *args, **kwargs):
        calls.append((tuple(shape), str(device), amp, args, kwargs))
        # the kernel of layer2.0's region conv (C' = 64, 3x7x7) is wrong while it is probed
        with WrongWeightGradient((64, 1, 3, 7, 7)):
            routed = guard(model, shape, device, amp, *args, **kwargs)
        calls.append(dict(model.named_modules())[PENTA].bf16_route)
        return routed

    monkeypatch.setattr(bf16_guard, "guard_bf16", spy)
    train_main.main(tiny_args(data_root, str(tmp_path), "--epochs", "1", "--amp", "bf16"))
    # batch 2 of 4 frames at 32 px, channels-first, warned by rank 0; the model trained is the
    # routed one
    assert calls[0] == ((2, 12, 32, 32), "cpu", "bf16", (False, True), {})
    assert calls[1] == "fp32"
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "bf16 on this CPU" in line]
    assert len(lines) == 1 and f"{PENTA} [2] -> fp32" in lines[0], err[-2000:]
    assert "layer3.0.nl.penta" not in lines[0]


def test_test_models_py_probes_the_forward_and_routes(tmp_path, caplog, monkeypatch):
    import test_models
    from tests import _eval_helpers as H

    monkeypatch.setattr(test_models, "setup_logging", lambda rank=0: None)
    data_root = str(tmp_path / "data")
    H.write_synthetic_dataset(data_root)
    weights = str(
        tmp_path / "TSM_synthetic_RGB_resnet18_shift8_blockres_avg_segment4_e50_cos_nl.pth.tar"
    )
    H.save_published(weights, H.make_model(0, **H.small_model_config(num_segments=4)))

    def scores(name: str, *extra: str):
        out = str(tmp_path / f"{name}.npz")
        argv = ["synthetic", f"--weights={weights}", "--test_segments=4", "-j", "0"]
        argv += ["--batch_size=2", "--data_root", data_root, "--save_scores", out]
        argv += ["--device", "cpu", *extra]
        assert test_models.cli(argv) == 0
        return np.load(out)["scores"]

    fp32 = scores("fp32")
    fault = WrongOutput((128, 64, 3, 3))  # layer2.0's shifted strided conv1
    with fault, caplog.at_level(logging.WARNING, logger="ops.bf16_guard"):
        guarded = scores("guarded", "--amp", "bf16")
    assert _rel(torch.from_numpy(guarded), torch.from_numpy(fp32)) < 5e-2
    warnings = [r.getMessage() for r in caplog.records if r.name == "ops.bf16_guard"]
    shifted = "base_model.layer2.0.block.conv1"
    assert len(warnings) == 1 and re.search(rf"{shifted} \[4(\.0\d*)?\] -> fp32", warnings[0])
    monkeypatch.setattr(bf16_guard, "guard_bf16", lambda *a, **k: {})
    with fault:
        unguarded = scores("unguarded", "--amp", "bf16")
    assert _rel(torch.from_numpy(unguarded), torch.from_numpy(fp32)) > 0.2  # the fault matters


def _raw_region_fault(channels: int, kernel: tuple, shape: tuple) -> bool:
    """Whether PyTorch's bf16 depthwise conv3d backward (channels-last, as RegionConv3d runs it
    on the CPU) gives a wrong weight gradient at ``shape``: measured here, without the guard."""
    torch.manual_seed(0)
    x = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last_3d)
    g = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(channels, 1, *kernel).bfloat16()
    pad = [(k - 1) // 2 for k in kernel]
    args = ([1, 1, 1], pad, [1, 1, 1], False, [0, 0, 0], channels, [False, True, False])
    raw = torch.ops.aten.convolution_backward(g, x, w, None, *args)[1].float()
    ref = torch.ops.aten.convolution_backward(g.float(), x.float(), w.float(), None, *args)[1]
    return not _rel(raw, ref) <= bf16_guard.TOLERANCE


def test_main_py_at_two_frames_routes_the_region_convs_where_the_cpu_is_wrong(data_root, tmp_path):
    # As users run it: a subprocess, real kernels. With --temporal_pool the RNL blocks see 2 of
    # the 4 frames, the shape class that torch 2.14.1 gets wrong on AVX-512 CPUs; on a CPU
    # without the fault (AVX2) nothing may be routed.
    from tests.test_main import REPO, tiny_args

    expected = {
        name
        for name, channels, kernel, side in (
            ("base_model.layer2.net.0.nl.penta", 64, (3, 7, 7), 4),
            ("base_model.layer3.0.nl.penta", 128, (3, 3, 3), 2),
        )
        if _raw_region_fault(channels, kernel, (2, channels, 2, side, side))
    }
    argv = tiny_args(data_root, str(tmp_path), "--epochs", "1", "--amp", "bf16")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "main.py"), *argv, "--temporal_pool"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "bf16 on this CPU" in line]
    named = {n for n in re.findall(r"(base_model\.\S+\.penta) \[", "".join(lines))}
    assert named == expected, proc.stderr[-3000:]
    assert len(lines) == (1 if expected else 0)
