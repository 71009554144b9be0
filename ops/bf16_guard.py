"""bf16 autocast on the CPU, checked before it is used: probe the model's convolutions, route
around a faulty kernel.

torch 2.14.1's oneDNN bf16 convolutions compute wrong *weight gradients* for some shapes on
AVX-512 CPUs (measured on an AMD Zen 4 with AVX-512 BF16; AMX not measured; right where bf16 is
emulated on AVX2): a 3-D convolution with a temporal kernel of 3 over 2 frames (every RNL region
conv at T = 2), a 7x7 conv2d over a 1x1 or 2x2 map, ... The output and the input gradient stay
right, so training runs, with weights that do not learn (docs/bf16_cpu.md has the measurements
and a standalone reproduction). Which shapes are hit is a
property of the library build and of the CPU, not of this code, so it is measured, not listed:

1. **Trace.** The model runs under bf16 autocast, in eval mode, on 2 clips of the run's input
   size (see ``trace_calls``); every probed layer (below) records the shape and strides of its
   input, scaled to the run's batch.
2. **Probe.** Each distinct call is run on a copy of the layer on the CPU, under bf16 autocast
   and in float32, on the same bf16-representable input, weights and output gradient (drawn
   from a private generator): output, input gradient and every weight gradient (forward only for
   testing) are compared as ``max |bf16 - fp32| / max |fp32|``. A right bf16 kernel is within
   4e-2 (rounding); the faults are errors of 0.87 and more, inf or NaN (``TOLERANCE``: 0.2).
3. **Route.** A layer whose bf16 call is wrong runs another way, the cheapest of the candidates
   that the same probe finds right: its other memory format (contiguous <-> channels-last; not
   offered for the shift+conv) or float32 (autocast off inside the layer, input cast up, output
   cast back to the autocast dtype), float32 unless the other is clearly faster (timed, best
   of 3; ``MARGIN``). One warning names the routed layers.

Probed layers: the region convs (``RegionConv3d``), the temporal-shift convs
(``TemporalShift`` around a ``Conv2d``, with its memory-saving ``recompute`` path), and every
other convolution of a suspect kernel class: all ``Conv3d``, grouped or depthwise ``Conv2d``, and
a ``Conv2d`` whose kernel is larger than its input in some dimension. The remaining dense conv2ds
(the bulk of a backbone's time at 224 px) are not probed, so that probing costs a fraction of a
step; their shapes were measured right (docs/bf16_cpu.md).

Nothing changes when no fault is found: the model's modules, parameters, gradients and random
number streams are left as they were (the probe works on copies with its own generator), so the
outputs are bit-identical to an unprobed model. Verdicts are cached in the process per (layer
kind and settings, input shape and strides, weight strides, forward/backward, torch version, CPU
flags, oneDNN ISA limit, threads): probing the same shapes again (an ensemble, a second model)
computes nothing. There is no on-disk cache: a kernel's behaviour can change under the same
torch version string (a rebuilt wheel, another oneDNN in LD_LIBRARY_PATH), and a stale "right"
verdict would silently train wrong weights again.

Only CPU bf16 autocast is probed: on a GPU, or without ``--amp bf16``, ``guard_bf16`` returns at
once.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ops.region_conv import RegionConv3d
from ops.temporal_shift import TemporalShift

logger = logging.getLogger(__name__)

# Largest accepted max |bf16 - fp32| / max |fp32| of one probed tensor. The inputs, weights and
# output gradient are bf16 numbers, so a right kernel differs from fp32 only by rounding: 2e-3 to
# 5e-3 with native bf16 (AVX-512 BF16), up to 4e-2 where bf16 is emulated (AVX2: the depthwise
# 3x7x7 input gradient at RNL-R50's layer2 shape). The faults measured are errors of 0.87 and
# more, inf or NaN (docs/bf16_cpu.md).
TOLERANCE = 0.2
FP32 = "fp32"  # the route that runs a layer in float32 (autocast off inside the layer)
MARGIN = 1.25  # another route is taken over fp32 only when it is measured this much faster
MEMORY_FORMATS = {
    "contiguous": torch.contiguous_format,
    "channels_last": torch.channels_last,
    "channels_last_3d": torch.channels_last_3d,
}
DOC = "docs/bf16_cpu.md"


# --------------------------------------------------------------------------------------------
# Routes: how a faulty layer runs instead
# --------------------------------------------------------------------------------------------


class Bf16Routed:
    """Mixin of a routed layer: its class becomes a subclass of its own class with this mixin
    first (as ops/recompute.py does for residual blocks), so that copies, replicas and pickles
    keep the route. Under CPU autocast, ``forward`` runs by ``bf16_route``:

    * ``'fp32'``: autocast off inside the layer, the input cast to float32, the output cast back
      to the autocast dtype (what the layer returned before);
    * a memory format name (``Conv2d``/``Conv3d`` only): input and weight in that layout, from
      which oneDNN picks its kernel.

    Elsewhere (no autocast, another device) the layer runs as before."""

    bf16_route: str = "fp32"

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
            return super().forward(x, *args, **kwargs)
        if self.bf16_route == FP32:
            dtype = torch.get_autocast_dtype("cpu")
            with torch.autocast("cpu", enabled=False):
                y = super().forward(x.float(), *args, **kwargs)
            return y.to(dtype)
        fmt = MEMORY_FORMATS[self.bf16_route]
        weight = self.weight.contiguous(memory_format=fmt)
        return self._conv_forward(x.contiguous(memory_format=fmt), weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bf16_route={self.bf16_route!r}"


_ROUTED_CLASSES: dict[type, type] = {}


def _routed_class(cls: type) -> type:
    """``Bf16Routed<cls>``, made once per class and named in this module (picklable)."""
    if cls not in _ROUTED_CLASSES:
        name = f"Bf16Routed{cls.__name__}"
        routed = type(name, (Bf16Routed, cls), {"__module__": __name__, "__qualname__": name})
        globals()[name] = routed
        _ROUTED_CLASSES[cls] = routed
    return _ROUTED_CLASSES[cls]


def _other_format(module: nn.Module, x_stride: tuple, shape: tuple) -> str | None:
    """The memory format a route may try for ``module``: the one its kernel did not get."""
    if isinstance(module, RegionConv3d):
        if module.impl == "depthwise":  # its CPU path chooses the layout itself
            return "contiguous" if module.cpu_channels_last else "channels_last_3d"
        return None
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        last = "channels_last" if len(shape) == 4 else "channels_last_3d"
        fmt = MEMORY_FORMATS[last]
        x = torch.empty_strided(shape, x_stride, device="meta")
        # oneDNN runs channels-last when the input or the weight is (PyTorch's CPU rule)
        kernel_last = x.is_contiguous(memory_format=fmt) or module.weight.is_contiguous(
            memory_format=fmt
        )
        return "contiguous" if kernel_last else last
    return None  # the shift+conv: float32 only


def apply_route(module: nn.Module, route: str) -> None:
    """Make ``module`` run by ``route``: ``'fp32'`` or a memory format name (see
    ``_other_format``). Its parameters, buffers and state_dict are unchanged."""
    if isinstance(module, RegionConv3d) and route != FP32:
        module.cpu_channels_last = route == "channels_last_3d"  # its own CPU layout switch
    elif not isinstance(module, Bf16Routed):
        module.__class__ = _routed_class(type(module))
    module.bf16_route = route


# --------------------------------------------------------------------------------------------
# Which calls the model makes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvCall:
    """One probed layer call: the layer's name, the input's shape and strides, the output's
    shape."""

    name: str
    shape: tuple
    stride: tuple
    out_shape: tuple


def _suspect(module: nn.Module, shape: tuple) -> bool:
    """Whether ``module`` called on an input of ``shape`` is probed (see the module docstring)."""
    if isinstance(module, (RegionConv3d, nn.Conv3d)):
        return True
    if isinstance(module, TemporalShift):
        return isinstance(module.net, nn.Conv2d)
    if isinstance(module, nn.Conv2d):
        small = any(s < k for s, k in zip(shape[2:], module.kernel_size))
        return module.groups > 1 or small
    return False


def trace_calls(
    model: nn.Module,
    input_shape: Sequence[int],
    channels_last: bool = False,
    backward: bool = True,
) -> list[ConvCall]:
    """The probed layer calls of ``model`` on an input of ``input_shape`` (channels-last with
    ``channels_last``), recorded by running it on the CPU as the run will: under bf16 autocast,
    with gradients when the run has a backward (``backward``), but in eval mode (no running
    statistics change). Layouts depend on the dtype: where bf16 is emulated (AVX2) a bf16
    conv3d's output is contiguous where the float32 one's is channels-last.

    Beyond 2 clips the model runs on 2 clips, and each call is scaled to ``input_shape[0]``
    clips: its dim 0 is a multiple of the clip count (clips, or clips x frames) and, when it is
    the outermost dimension of the layout, no other stride depends on it. A call for which that
    does not hold (or a module whose input's dim 0 is not a clip count) is traced at
    ``input_shape``. (Not 1 clip: a dimension of size 1 may have any stride. Not the meta
    device, which costs nothing but does not give the CPU's memory formats.)"""
    clips = int(input_shape[0])
    if clips > 2:
        try:
            two = _trace(model, (2, *input_shape[1:]), channels_last, backward)
        except RuntimeError:  # dim 0 is not a clip count (a bare layer of N*T frames)
            two = []
        if two and all(_outermost_first(c) for c in two):
            return [_scaled(c, clips / 2) for c in two]
    return _trace(model, input_shape, channels_last, backward)


def _outermost_first(call: ConvCall) -> bool:
    """Whether dim 0 of the call's input and output is even and outermost in a dense layout."""
    span = max(st * (sz - 1) for st, sz in zip(call.stride[1:], call.shape[1:])) + 1
    return call.shape[0] % 2 == 0 and call.out_shape[0] == call.shape[0] and call.stride[0] >= span


def _scaled(call: ConvCall, factor: float) -> ConvCall:
    def first(shape: tuple) -> tuple:
        return (int(shape[0] * factor), *shape[1:])

    return ConvCall(call.name, first(call.shape), call.stride, first(call.out_shape))


def _trace(
    model: nn.Module, input_shape: Sequence[int], channels_last: bool, backward: bool
) -> list[ConvCall]:
    # A copy that shares the parameters and buffers (nothing is copied; an eval-mode forward
    # writes none of them, and no backward runs), so that the model's own train/eval flags stay
    # as they are.
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    shadow = copy.deepcopy(model, shared).eval()
    names = {m: n for n, m in shadow.named_modules()}
    # A shift wrapping a conv is probed as one call (its recompute path never calls the conv).
    shifted = {m.net for m in shadow.modules() if isinstance(m, TemporalShift)}
    calls: dict[ConvCall, None] = {}

    def record(module: nn.Module, args: tuple, y: torch.Tensor) -> None:
        x = args[0]
        if hasattr(module, "bf16_route"):  # routed by an earlier guard: already probed right
            return
        if module not in shifted and _suspect(module, tuple(x.shape)):
            calls[ConvCall(names[module], tuple(x.shape), tuple(x.stride()), tuple(y.shape))] = None

    handles = [
        m.register_forward_hook(record)
        for m in shadow.modules()
        if isinstance(m, (RegionConv3d, TemporalShift, nn.Conv2d, nn.Conv3d))
    ]
    x = torch.zeros(tuple(input_shape))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    try:
        with torch.set_grad_enabled(backward), torch.autocast("cpu", torch.bfloat16):
            shadow(x)
    finally:
        for h in handles:
            h.remove()
    return list(calls)


# --------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------


def _cpu_flags() -> tuple[str, ...]:
    """The CPU's vector and matrix extensions (Linux /proc/cpuinfo; else torch's capability)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return tuple(sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))))
    except OSError:
        pass
    return (torch.backends.cpu.get_cpu_capability(),)


def _environment() -> tuple:
    """What else selects the kernels: torch version, CPU, the ISA limits of oneDNN and ATen
    (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``), threads."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    return (
        torch.__version__,
        _cpu_flags(),
        isa,
        torch.backends.cpu.get_cpu_capability(),
        torch.get_num_threads(),
        torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
    )


def _layer_key(module: nn.Module) -> tuple:
    """What about a layer selects its kernels: its class, settings and parameter layouts."""
    params = tuple(
        (n, tuple(p.shape), tuple(p.stride()), p.dtype, p.requires_grad)
        for n, p in module.named_parameters()
    )
    if isinstance(module, TemporalShift):
        conv = module.net
        settings = (module.n_segment, module.fold_div, module.recompute, _conv_settings(conv))
    elif isinstance(module, RegionConv3d):
        settings = (module.impl, module.kernel_size, module.groups, module.cpu_channels_last)
    else:
        settings = _conv_settings(module)
    cls = type(module)
    return (f"{cls.__module__}.{cls.__qualname__}", settings, params)


def _conv_settings(conv: nn.Module) -> tuple:
    return (conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode)


@dataclass
class Verdict:
    """The probe's result for one call: the largest error of each compared tensor in bf16, and
    the route chosen (None: the bf16 kernel is right) with what each candidate measured."""

    errors: dict[str, float]
    route: str | None = None
    candidates: dict | None = None

    @property
    def faulty(self) -> bool:
        return not max(self.errors.values()) <= TOLERANCE


_VERDICTS: dict[tuple, Verdict] = {}


def _rel_err(x: torch.Tensor | None, ref: torch.Tensor | None) -> float:
    """max |x - ref| / max |ref| (inf when x is missing or not finite)."""
    if ref is None:
        return 0.0 if x is None else math.inf
    if x is None:
        return math.inf
    ref = ref.detach().float()
    err = float((x.detach().float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    return math.inf if math.isnan(err) else err


def _bf16_values(shape: tuple, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator).bfloat16().float()


class _Probe:
    """One call, ready to run on a copy of the layer: the copy with bf16-representable weights,
    the input (same shape and strides as in the model) and the output gradient."""

    def __init__(self, module: nn.Module, call: ConvCall, backward: bool) -> None:
        self.module = copy.deepcopy(module).cpu()
        self.backward = backward
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.module.parameters():
                p.copy_(p.bfloat16().float())
            self.x = torch.empty_strided(call.shape, call.stride).copy_(
                _bf16_values(call.shape, generator)
            )
        self.grad = _bf16_values(call.out_shape, generator)

    def run(self, amp: bool) -> dict[str, torch.Tensor | None]:
        """Output, input gradient and parameter gradients (forward only: the output)."""
        module = self.module
        module.zero_grad(set_to_none=True)
        x = self.x.detach().clone().requires_grad_(self.backward)
        with torch.set_grad_enabled(self.backward), torch.autocast("cpu", torch.bfloat16, amp):
            y = module(x)
        out = {"y": y.detach().float()}
        if self.backward:
            y.backward(torch.empty_like(y).copy_(self.grad))
            out["grad_x"] = x.grad
            for n, p in module.named_parameters():
                if p.requires_grad:
                    out[f"grad_{n}"] = p.grad
        return out

    def errors(self, ref: dict) -> dict[str, float]:
        got = self.run(amp=True)
        return {k: _rel_err(got.get(k), v) for k, v in ref.items()}

    def seconds(self, repeats: int = 3) -> float:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.run(amp=True)
            best = min(best, time.perf_counter() - t0)
        return best


def _cheapest(seconds: dict[str, float]) -> str | None:
    """The route to take among the right ones: float32 unless the other memory format is
    clearly cheaper (``MARGIN``), so that timing noise does not pick a different route in the
    next process (a resumed run) when the two cost about the same."""
    if FP32 in seconds and all(t * MARGIN >= seconds[FP32] for t in seconds.values()):
        return FP32
    return min(seconds, key=seconds.get) if seconds else None


def probe(module: nn.Module, call: ConvCall, backward: bool = True) -> Verdict:
    """The verdict for ``module`` (the model's layer, left untouched) called as ``call``: bf16
    against float32, and when bf16 is wrong the cheapest right route (cached per process)."""
    key = (_layer_key(module), call.shape, call.stride, backward, _environment())
    if key in _VERDICTS:
        return _VERDICTS[key]
    trial = _Probe(module, call, backward)
    ref = trial.run(amp=False)
    verdict = Verdict(trial.errors(ref))
    if verdict.faulty:
        verdict.candidates = {}
        routes = [_other_format(module, call.stride, call.shape), FP32]
        for route in filter(None, routes):
            routed = _Probe(module, call, backward)
            apply_route(routed.module, route)
            errors = routed.errors(ref)
            right = max(errors.values()) <= TOLERANCE
            row = {"error": max(errors.values()), "right": right}
            if right:
                row["seconds"] = routed.seconds()
            verdict.candidates[route] = row
        verdict.route = _cheapest(
            {r: c["seconds"] for r, c in verdict.candidates.items() if c["right"]}
        )
    _VERDICTS[key] = verdict
    return verdict


def clear_cache() -> None:
    """Forget every verdict (tests; after changing the process's threads or kernels)."""
    _VERDICTS.clear()


# --------------------------------------------------------------------------------------------
# The entry point of main.py and test_models.py
# --------------------------------------------------------------------------------------------


def clip_shape(model: nn.Module, clips: int, size: int | None = None) -> tuple[int, int, int, int]:
    """The input ``[clips, T*C, size, size]`` of a TSN (``size``: its input size by default)."""
    channels = (3 if model.modality == "RGB" else 2) * model.new_length
    size = size or model.input_size
    return (clips, model.num_segments * channels, size, size)


def guard_bf16(
    model: nn.Module,
    input_shape: Sequence[int],
    device: torch.device | str,
    amp: str,
    channels_last: bool = False,
    warn: bool = True,
    *,
    backward: bool = True,
) -> dict[str, str]:
    """Before ``--amp bf16`` on a CPU: probe the convolutions ``model`` runs on an input of
    ``input_shape`` (training: forward and gradients; ``backward=False`` for testing) and route
    the layers whose bf16 kernel is wrong (see the module docstring). Returns the routed layers'
    names and routes (empty: nothing changed); logs one warning naming them (``warn``). Raises
    ValueError when a layer has no right route."""
    if amp != "bf16" or torch.device(device).type != "cpu":
        return {}
    t0 = time.perf_counter()
    modules = dict(model.named_modules())
    verdicts = {}
    with _kept_rng():
        calls = trace_calls(model, input_shape, channels_last, backward)
        for call in calls:
            verdicts[call] = probe(modules[call.name], call, backward)
    faulty: dict[str, list[Verdict]] = {}
    for call, verdict in verdicts.items():
        if verdict.faulty:
            faulty.setdefault(call.name, []).append(verdict)
    routed: dict[str, str] = {}
    unroutable = []
    for name, found in faulty.items():
        if len(found) == 1 and found[0].route is not None:
            routed[name] = found[0].route
        elif len(found) > 1 and all(v.candidates[FP32]["right"] for v in found):
            routed[name] = FP32  # a layer called at several faulty shapes: one route for all
        else:
            unroutable.append(name)
    if unroutable:
        raise ValueError(
            f"bf16 on this CPU: torch {torch.__version__}'s bf16 convolution is wrong for "
            f"{', '.join(unroutable)} and no other way of running it is right: use --amp off "
            f"(see {DOC})"
        )
    for name, route in routed.items():
        apply_route(modules[name], route)
    seconds = time.perf_counter() - t0
    logger.debug(
        "bf16 guard: %d call(s) probed, %d routed, %.2f s", len(calls), len(routed), seconds
    )
    if routed and warn:
        worst = {n: max(max(v.errors.values()) for v in found) for n, found in faulty.items()}
        logger.warning(
            "bf16 on this CPU: torch %s's bf16 convolution kernels are wrong for %d layer(s) at "
            "this run's shapes (largest error vs fp32 in brackets); they now run another way: %s "
            "(see %s)",
            torch.__version__,
            len(routed),
            ", ".join(f"{n} [{worst[n]:.3g}] -> {r}" for n, r in routed.items()),
            DOC,
        )
    return routed


@contextlib.contextmanager
def _kept_rng():
    """The global CPU random state as it was, whatever runs inside (belt and braces: the probe
    draws from its own generator)."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)
