"""Softmax self-attention whose queries are its keys, with a backward that uses it (CPU, fp32).

The RNL block attends from the region features to themselves: ``y = softmax_rows(r r^T) v``
with ``r`` ``[N, P, C]`` (scale 1). Its affinity ``S = r r^T`` is symmetric, and the gradient
reaching ``r`` through it is ``dS r + dS^T r = (dS + dS^T) r``: one product where a general
attention backward (PyTorch's fused kernel, which cannot know that its queries are its keys)
makes two, ``dQ = dS k`` and ``dK = dS^T q``. The backward here works on pairs of tiles
``(i, j)``, ``i <= j``, of ``B`` positions each; one tile product ``S_ij = r_i r_j^T`` gives
both ``S_ij`` and ``S_ji = S_ij^T``, so a pair costs 7 tile products instead of a general
backward's 10:

* ``A_ij = exp(S_ij - lse_i)``, ``A_ji = exp(S_ij^T - lse_j)`` (``lse``: the rows' log-sum-exp
  that the fused forward returns, so no second pass over the rows is needed);
* ``dS_ij = A_ij * (dy_i v_j^T - D_i)`` and the same for ``(j, i)``, with
  ``D = rowsum(dy * y)`` (the softmax backward);
* ``dv_j += A_ij^T dy_i``, ``dv_i += A_ji^T dy_j``;
* ``G = dS_ij + dS_ji^T``; ``dr_i += G r_j``, ``dr_j += G^T r_i``.

In units of one ``P x P x C`` product, the backward is 3.5 (0.5 for the affinity, 1 each for
``dA``, ``dv`` and ``dr``) against the fused kernel's 5. The memory it needs beyond its inputs
and outputs is a few ``B x B`` tiles per batch element, never ``P x P``. The forward is
PyTorch's fused CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``, which returns the
``lse`` the backward uses); ``ops/recompute.py`` keeps its outputs for the backward as it does
for any fused attention call.

Used by ``ops/attention.py`` for softmax attention on CPU in float32 (no autocast) when the caller
passes the same tensor as queries and keys; anything else (CUDA, bf16, ``torch.compile``) takes
``F.scaled_dot_product_attention``. Results match it to float rounding (``tests/test_self_attention.py``
compares forward and gradients with the explicit computation).
"""

from __future__ import annotations

import torch

# Positions per tile: 784 (= 28 x 28, one frame of layer2) was the fastest of 392 ... 3136 at
# layer2's size (P = 6272, C = 256) on a 2-core AVX-512 EPYC; its tiles (2.4 MB each) stay in L3.
TILE = 784


def applies_to(
    queries_are_keys: bool, device_type: str, dtype: torch.dtype, q_width: int, v_width: int
) -> bool:
    """Whether an attention of this kind takes the symmetric backward in an eager training step:
    queries are keys, values as wide as they are (the fused CPU kernel's condition), CPU,
    float32. ``usable`` adds what only the call itself knows; the start-up report asks this."""
    return (
        queries_are_keys and v_width == q_width and device_type == "cpu" and dtype == torch.float32
    )


def usable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether ``attend`` applies: queries are keys, values as wide as they are (the fused CPU
    kernel's condition), CPU, float32 and no autocast (under ``--amp bf16`` the fused call runs
    in bf16; ``attend`` calls the kernel below autocast, so it would stay in fp32), and only when
    a backward will follow (gradients recorded, not while ``torch.jit.trace``, ``torch.compile``
    or ``torch.export`` trace the model: they take ``F.scaled_dot_product_attention``, the same
    kernel forward)."""
    return (
        applies_to(q is k, q.device.type, q.dtype, q.shape[-1], v.shape[-1])
        and torch.is_grad_enabled()
        and (q.requires_grad or v.requires_grad)
        and not torch.jit.is_tracing()
        and not torch.is_autocast_enabled(q.device.type)
        and not torch.compiler.is_compiling()
    )


def attend(r: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax_rows(r r^T) v`` for ``r`` ``[N, 1, P, C]`` and ``v`` ``[N, 1, P, Cv]``
    (contiguous, one head): ``[N, 1, P, Cv]``."""
    return _SelfAttention.apply(r, v)


class _SelfAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        y, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(r, r, v, scale=1.0)
        ctx.save_for_backward(r, v, y, lse)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r, v, y, lse = ctx.saved_tensors
        dr, dv = symmetric_backward(
            dy.squeeze(1), r.squeeze(1), v.squeeze(1), y.squeeze(1), lse.reshape(lse.shape[0], -1)
        )
        return dr.unsqueeze(1), dv.unsqueeze(1)


def symmetric_backward(
    dy: torch.Tensor,
    r: torch.Tensor,
    v: torch.Tensor,
    y: torch.Tensor,
    lse: torch.Tensor,
    tile: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(dr, dv)`` of ``y = softmax_rows(r r^T) v`` given ``dy``.

    Args:
        dy, y: ``[N, P, Cv]``; r: ``[N, P, C]``; v: ``[N, P, Cv]``;
        lse: ``[N, P]``, ``log(sum_m exp(r_n . r_m))`` per row ``n``.
        tile: positions per tile (default ``TILE``).
    """
    tile = tile or TILE
    dy = dy.contiguous()
    d = (dy * y).sum(-1)  # [N, P]: the softmax backward's row term
    dr, dv = torch.zeros_like(r), torch.zeros_like(v)
    p = r.shape[1]
    starts = range(0, p, tile)
    for b in range(r.shape[0]):
        rb, vb, dyb, drb, dvb = r[b], v[b], dy[b], dr[b], dv[b]
        rows, cols = lse[b, :, None], lse[b, None, :]  # a row's lse down a column, and across
        d_rows, d_cols = d[b, :, None], d[b, None, :]
        for i0 in starts:
            i = slice(i0, min(i0 + tile, p))
            for j0 in range(i0, p, tile):
                j = slice(j0, min(j0 + tile, p))
                s = torch.mm(rb[i], rb[j].t())  # S_ij; S_ji is its transpose
                if j0 == i0:
                    a = s.sub_(rows[i]).exp_()
                    ds = torch.mm(dyb[i], vb[i].t()).sub_(d_rows[i]).mul_(a)
                    dvb[i].addmm_(a.t(), dyb[i])
                    drb[i].addmm_(ds + ds.t(), rb[i])
                    continue
                # everything of the (j, i) tile is kept transposed, in the (i, j) tile's layout,
                # so that every element-wise pass reads both tiles in the same order
                a_ij = (s - rows[i]).exp_()
                a_ji_t = s.sub_(cols[:, j]).exp_()
                ds_ij = torch.mm(dyb[i], vb[j].t()).sub_(d_rows[i]).mul_(a_ij)
                ds_ji_t = torch.mm(vb[i], dyb[j].t()).sub_(d_cols[:, j]).mul_(a_ji_t)
                dvb[j].addmm_(a_ij.t(), dyb[i])
                dvb[i].addmm_(a_ji_t, dyb[j])
                g = ds_ij.add_(ds_ji_t)  # dS_ij + dS_ji^T
                drb[i].addmm_(g, rb[j])
                drb[j].addmm_(g.t(), rb[i])
    return dr, dv
