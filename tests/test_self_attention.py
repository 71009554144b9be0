"""The self-attention with the symmetric backward (ops/self_attention.py) against an explicit
float64 computation by autograd, with tiles that do and do not divide the positions."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ops import attention, self_attention


def _explicit(r: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax over the sources of r r^T, times v, for [N, 1, P, C] inputs."""
    a = torch.softmax(r @ r.transpose(-1, -2), dim=-1)  # row = target, column = source
    return a @ v


def _inputs(p: int, c: int, spread: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(2, 1, p, c, generator=g) * spread
    v = torch.randn(2, 1, p, c, generator=g)
    dy = torch.randn(2, 1, p, c, generator=g)
    return r, v, dy


@pytest.mark.parametrize(
    "p, tile",
    [(50, 16), (48, 16), (7, 3), (20, 64), (33, 33)],
    ids=["partial-last-tile", "tiles-divide", "tiny-tiles", "one-tile", "tile-equals-p"],
)
@pytest.mark.parametrize("spread", [0.3, 3.0], ids=["mild", "large-logits"])
def test_forward_and_gradients_match_explicit_float64(p, tile, spread, monkeypatch):
    # spread 3.0 with 8 channels gives logits of several hundred: exp() without the row's
    # log-sum-exp would overflow in float32, so this also checks the lse is applied per row
    monkeypatch.setattr(self_attention, "TILE", tile)
    r, v, dy = _inputs(p, 8, spread)
    r32, v32 = r.clone().requires_grad_(), v.clone().requires_grad_()
    y32 = self_attention.attend(r32, v32)
    y32.backward(dy)
    r64, v64 = r.double().requires_grad_(), v.double().requires_grad_()
    y64 = _explicit(r64, v64)
    y64.backward(dy.double())
    for got, want in [(y32, y64), (r32.grad, r64.grad), (v32.grad, v64.grad)]:
        assert torch.isfinite(got).all()
        err = (got.double() - want).norm() / want.norm()
        assert err < 1e-5, err.item()


def test_symmetric_backward_takes_the_tile_argument():
    # the same gradients from any tiling (each tiling adds in a different order: float rounding)
    r, v, dy = (t.squeeze(1) for t in _inputs(40, 6, 1.0))
    y, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        r.unsqueeze(1), r.unsqueeze(1), v.unsqueeze(1), scale=1.0
    )
    y, lse = y.squeeze(1), lse.reshape(2, -1)
    want = self_attention.symmetric_backward(dy, r, v, y, lse, tile=40)
    for tile in (1, 7, 13, 39):
        got = self_attention.symmetric_backward(dy, r, v, y, lse, tile=tile)
        for a, b in zip(got, want):
            assert ((a - b).norm() / b.norm()).item() < 1e-5  # float rounding


class _LargestOutput(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_backward_never_materialises_the_positions_squared_matrix(monkeypatch):
    monkeypatch.setattr(self_attention, "TILE", 16)
    p, c = 200, 4  # P x P = 40000 elements per clip; a tile is 256, the inputs 800 per clip
    r, v, dy = _inputs(p, c, 0.5)
    r.requires_grad_()
    v.requires_grad_()
    y = self_attention.attend(r, v)
    with _LargestOutput() as mode:
        y.backward(dy)
    assert mode.largest <= 2 * p * c  # the gradients themselves; nothing of P x P size
    assert r.grad is not None and v.grad is not None


def test_used_only_where_it_applies():
    r = torch.randn(1, 1, 10, 4, requires_grad=True)
    v = torch.randn(1, 1, 10, 4, requires_grad=True)
    assert self_attention.usable(r, r, v)
    with torch.no_grad():  # no backward to make cheaper: the fused call as it is
        assert not self_attention.usable(r, r, v)
    assert not self_attention.usable(r.detach(), r.detach(), v.detach())
    assert not self_attention.usable(r, r.clone(), v)  # queries that are not the keys
    assert not self_attention.usable(r, r, v[..., :3])  # values of another width
    assert not self_attention.usable(r.double(), r.double(), v.double())
    assert not self_attention.usable(r.bfloat16(), r.bfloat16(), v.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 inputs, but the attention runs in bf16
        assert not self_attention.usable(r, r, v)


def test_bf16_autocast_keeps_the_fused_attention_in_bf16(monkeypatch):
    calls = []
    monkeypatch.setattr(self_attention, "attend", lambda r, v: calls.append(1))
    q = torch.randn(2, 8, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = attention.nonlocal_attention(q, q, torch.randn(2, 8, 20))
    assert calls == [] and y.dtype == torch.bfloat16


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")
def test_nonlocal_attention_routes_self_attention_only(monkeypatch):
    calls = []
    real = self_attention.attend
    monkeypatch.setattr(self_attention, "attend", lambda r, v: calls.append(1) or real(r, v))
    q = torch.randn(2, 4, 12, requires_grad=True)
    v = torch.randn(2, 4, 12)
    y_self, _ = attention.nonlocal_attention(q, q, v)
    assert calls == [1]
    y_other, _ = attention.nonlocal_attention(q, q.clone(), v)  # equal values, another tensor
    assert calls == [1]
    torch.testing.assert_close(y_self, y_other)
    attention.nonlocal_attention(q, q, v, scale=0.5)  # a scaled softmax takes the fused kernel
    assert calls == [1]
    traced = torch.jit.trace(lambda a, b: attention.nonlocal_attention(a, a, b)[0], (q, v))
    assert calls == [1]  # a traced model holds the fused call (tools/export.py)
    torch.testing.assert_close(traced(q, v), y_self)
