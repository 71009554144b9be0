"""--compile (ops/engine/compile.py): the compiled model computes what the eager one does, and a failed
compilation falls back to eager mode with one warning and without side effects."""

import logging
import shutil

import pytest
import torch
from torch import nn

from ops.engine.compile import CompiledWithFallback
from tests.test_fast_paths import _close, _model, _run

FAST = dict(rnl_fused=True, region_impl="depthwise", shift_recompute=True)


def _clip():
    torch.manual_seed(1)
    return torch.randn(2, 4 * 3, 64, 64)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ops.engine.compile"]


def _compare_compiled(backend: str, caplog, train: bool) -> CompiledWithFallback:
    clip = _clip()
    eager = _run(_model(**FAST), clip, train=train)
    model = _model(**FAST)
    wrapped = CompiledWithFallback(model, backend=backend)
    with caplog.at_level(logging.WARNING, logger="ops.engine.compile"):
        got = _run(wrapped, clip, train=train)
    assert len(got) == len(eager)
    for a, b in zip(got, eager):
        assert _close(a, b, 5e-4)  # output and every parameter gradient
    return wrapped


def test_wrapper_exposes_the_model_weights_once():
    model = _model(**FAST)
    wrapped = CompiledWithFallback(model, backend="aot_eager")
    assert list(wrapped.state_dict()) == ["module." + k for k in model.state_dict()]
    assert [id(p) for p in wrapped.parameters()] == [id(p) for p in model.parameters()]


def test_aot_eager_graph_matches_eager(caplog):
    # Dynamo's graph capture and AOTAutograd's forward/backward split, without code generation.
    wrapped = _compare_compiled("aot_eager", caplog, train=True)
    assert wrapped.compiled and not _warnings(caplog)


def test_inductor_matches_eager(caplog):
    # The default backend, with generated C++ kernels on CPU (the first call takes about a minute
    # on 2 cores). Without a C++ compiler inductor cannot run: then the wrapper must have fallen
    # back with its warning, and the results must still match. BN with running statistics: the
    # kernels sum in another order, and batch statistics of a 2-clip, 64-px batch turn that fp32
    # rounding into a few percent in early gradients (as they do between fp32 and fp64).
    wrapped = _compare_compiled("inductor", caplog, train=False)
    has_compiler = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
    if has_compiler:
        assert wrapped.compiled and not _warnings(caplog)
    else:
        assert not wrapped.compiled and "continuing in eager mode" in caplog.text


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no compiler here\nsecond line of the message")


def test_failed_compilation_warns_once_and_runs_eager(caplog):
    clip = _clip()
    eager = _run(_model(**FAST), clip)
    wrapped = CompiledWithFallback(_model(**FAST), backend=_failing_backend)
    with caplog.at_level(logging.WARNING, logger="ops.engine.compile"):
        first = _run(wrapped, clip)
        second = _run(wrapped, clip)
    assert not wrapped.compiled
    assert len(_warnings(caplog)) == 1
    message = _warnings(caplog)[0]
    assert "\n" not in message and "no compiler here" in message and "eager mode" in message
    for a, b, c in zip(first, second, eager):
        assert torch.equal(a, c) and torch.equal(b, c)  # the eager module, bit for bit


class _TwoHalves(nn.Module):
    """BN, a graph break, BN: Dynamo compiles two graphs, and runs the first before it compiles
    the second."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.BatchNorm1d(3)
        self.b = nn.BatchNorm1d(3)

    def forward(self, x):
        x = self.a(x)
        torch._dynamo.graph_break()
        return self.b(x * 2)


def test_failure_after_a_graph_break_does_not_update_statistics_twice():
    compiled_graphs = []

    def second_graph_fails(gm, example_inputs):
        compiled_graphs.append(gm)
        if len(compiled_graphs) > 1:
            raise RuntimeError("second graph does not compile")
        return gm.forward

    torch._dynamo.reset()
    torch.manual_seed(0)
    x = torch.randn(8, 3) * 3 + 1
    eager = _TwoHalves()
    wrapped = CompiledWithFallback(_TwoHalves(), backend=second_graph_fails)
    expected = eager(x)
    out = wrapped(x)
    assert len(compiled_graphs) == 2 and not wrapped.compiled
    # One momentum update of each layer's running statistics, as in the eager model; without the
    # restore, layer a would have been updated twice (compiled half, then the eager rerun).
    for name, buf in eager.state_dict().items():
        assert torch.equal(wrapped.module.state_dict()[name], buf), name
    assert torch.equal(out, expected)


# ---- issue 25: the fallback covers the backward's compilation too ---------------------------


def _backward_fails_to_compile():
    """An AOTAutograd backend whose forward compiles and whose backward compiler raises, as
    inductor's does where its backward kernels cannot be built. AOTAutograd compiles the
    backward lazily, at the first backward call: after the forward has run."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def forward_compiler(gm, example_inputs):
        return make_boxed_func(gm.forward)

    def backward_compiler(gm, example_inputs):
        raise RuntimeError("no backward kernel here\nsecond line")

    return aot_autograd(fw_compiler=forward_compiler, bw_compiler=backward_compiler)


@pytest.mark.parametrize("recompute", [False, True])
def test_a_backward_that_fails_to_compile_falls_back_before_the_loss_backward(caplog, recompute):
    # Before: the failure escaped from loss.backward() in the training loop while the wrapper's
    # `compiled` still read True.
    clip = _clip()
    eager_model = _model(**FAST, recompute=recompute)
    eager = _run(eager_model, clip)
    torch._dynamo.reset()
    model = _model(**FAST, recompute=recompute)
    wrapped = CompiledWithFallback(model, backend=_backward_fails_to_compile())
    with caplog.at_level(logging.WARNING, logger="ops.engine.compile"):
        first = _run(wrapped, clip)  # forward and loss.backward(), as the training loop does
        second = _run(wrapped, clip)
    assert not wrapped.compiled
    messages = _warnings(caplog)
    assert len(messages) == 1 and "no backward kernel here" in messages[0]
    assert "\n" not in messages[0]
    for a, b, c in zip(first, second, eager):
        assert torch.equal(a, c) and torch.equal(b, c)  # the eager module, bit for bit
    _run(eager_model, clip)  # the eager model's second call: its statistics after two calls
    eager_buffers = dict(eager_model.named_buffers())
    for name, buf in model.named_buffers():  # BN statistics updated once per call, as eager
        assert torch.equal(buf, eager_buffers[name]), name


def test_a_backward_that_compiles_keeps_the_compiled_path_and_its_gradients(caplog):
    clip = _clip()
    eager = _run(_model(**FAST, recompute=True), clip)
    torch._dynamo.reset()
    wrapped = CompiledWithFallback(_model(**FAST, recompute=True), backend="aot_eager")
    with caplog.at_level(logging.WARNING, logger="ops.engine.compile"):
        got = _run(wrapped, clip)
    assert wrapped.compiled and not _warnings(caplog)
    for a, b in zip(got, eager):
        assert _close(a, b, 5e-4)  # output and every gradient, accumulated once
