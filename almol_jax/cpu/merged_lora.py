"""LoRA projections computed through their merged kernels (float32 compute, no adapter dropout).

`merged_project(x_NI, kernels, a_IR, bs, scales)` returns `[x @ W_i + s_i (x @ A_i) @ B_i]` for
projections that share the input x, with `a_IR` the adapters' A concatenated along the rank
axis. It computes each output as one product `x @ (W_i + s_i A_i B_i)`, and the input gradient
as one `dY_i @ (W_i + s_i A_i B_i)^T`: the rank-R terms fold into the kernels, whose [I, O]
update costs I*O*R multiply-adds against the N*I*O of the product (N rows). The separate
path (ops/lora_products.py) pays, per projection, a thin [N, R] @ [R, O] product in the forward
and a thin [N, R] @ [R, I] in the backward, each writing a full [N, O] or [N, I] tensor that an
add then reads again; on the CPU those thin products run at a third of the matmul peak (issue 8).

The adapter gradients are the exact formulas: dB_i = s_i (x A_i)^T dY_i and
dA_i^T = s_i (dY_i B_i^T)^T x (the fast transposed form of ops/custom_vjp.adapter_down). The merged
kernels are recomputed in the backward pass rather than saved (a transient copy of one
kernel, never a per-layer residual). Results equal the separate path up to float32 rounding.

Only for float32 compute: merging a small update into bfloat16 kernels would round it away.
The base kernels' gradient is autodiff's x^T dY (a LoRA step, whose base is frozen, never
computes it: XLA removes it as dead code).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _splits(bs) -> list[int]:
    starts, start = [], 0
    for b_RO in bs:
        starts.append(start)
        start += b_RO.shape[0]
    return starts


def _merged_kernels(kernels, a_IR, bs, scales):
    return [
        w_IO + s * (a_IR[:, start : start + b_RO.shape[0]] @ b_RO)
        for w_IO, b_RO, s, start in zip(kernels, bs, scales, _splits(bs), strict=True)
    ]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def merged_project(x_NI, kernels, a_IR, bs, scales):
    """[x @ W_i + s_i (x @ A_i) @ B_i for each projection i]; see the module docstring."""
    return [x_NI @ w for w in _merged_kernels(kernels, a_IR, bs, scales)]


def _fwd(x_NI, kernels, a_IR, bs, scales):
    return merged_project(x_NI, kernels, a_IR, bs, scales), (x_NI, kernels, a_IR, bs)


def _bwd(scales, residuals, dys):
    x_NI, kernels, a_IR, bs = residuals
    merged = _merged_kernels(kernels, a_IR, bs, scales)
    dx_NI = sum(dy_NO @ w_IO.T for dy_NO, w_IO in zip(dys, merged, strict=True))
    xa_NR = x_NI @ a_IR
    dbs, gs = [], []
    for dy_NO, b_RO, s, start in zip(dys, bs, scales, _splits(bs), strict=True):
        xa_i = s * xa_NR[:, start : start + b_RO.shape[0]]
        dbs.append(jax.lax.dot_general(xa_i, dy_NO, (((0,), (0,)), ((), ()))))
        gs.append(s * (dy_NO @ b_RO.T))
    g_NR = gs[0] if len(gs) == 1 else jnp.concatenate(gs, axis=1)
    da_RI = jax.lax.dot_general(g_NR, x_NI, (((0,), (0,)), ((), ())))
    # dW_i = x^T dY_i: the base kernels' gradient (a LoRA step does not use it, and XLA drops it)
    dws = tuple(jax.lax.dot_general(x_NI, dy_NO, (((0,), (0,)), ((), ()))) for dy_NO in dys)
    return dx_NI, dws, jax.lax.optimization_barrier(da_RI).T, tuple(dbs)


merged_project.defvjp(_fwd, _bwd)
