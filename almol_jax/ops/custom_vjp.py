"""Hand-written backward passes, pure JAX for any backend: RMSNorm, SwiGLU and the adapters'
down-projection x @ A (the kernel tables "custom_vjp", which TPUs run, and "cpu").

Autodiff of `x * rsqrt(mean(x^2) + eps) * w` and of `silu(g) * u` leaves XLA several separate
elementwise passes (and saved intermediates) per layer; on the CPU those passes cost about as much
as the layer's matrix products (issue 8), and on a v5e the recipe's step needs 8.68 GiB per chip
with these passes against 12.26 with autodiff's (issue 16, docs/tpu.md). Here each backward is
one expression over the saved inputs, which XLA fuses into a single pass. The forward values are
ops/elementwise.py's (Hugging Face's LLaMA exactly); backward passes compute in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from almol_jax.ops import elementwise


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def rms_norm(x_BTD: jax.Array, w_D: jax.Array, eps: float, dtype) -> jax.Array:
    """HF LlamaRMSNorm: `w * (x / rms(x)).astype(dtype)` with float32 statistics."""
    return elementwise.rms_norm(x_BTD, w_D, eps, dtype)


def _rms_norm_fwd(x_BTD, w_D, eps, dtype):
    xhat_BTD, r_BT1 = elementwise.normalise(x_BTD, eps)
    y_BTD = w_D.astype(dtype) * xhat_BTD.astype(dtype)
    return y_BTD, (x_BTD, w_D, r_BT1)


def _rms_norm_bwd(eps, dtype, residuals, dy_BTD):
    del eps, dtype
    x_BTD, w_D, r_BT1 = residuals
    f32 = jnp.float32
    xhat_BTD = x_BTD.astype(f32) * r_BT1
    dy = dy_BTD.astype(f32)
    dxhat_BTD = dy * w_D.astype(f32)
    mean_BT1 = jnp.mean(dxhat_BTD * xhat_BTD, axis=-1, keepdims=True)
    dx_BTD = r_BT1 * (dxhat_BTD - xhat_BTD * mean_BT1)
    dw_D = jnp.sum((dy * xhat_BTD).reshape(-1, x_BTD.shape[-1]), axis=0)
    return dx_BTD.astype(x_BTD.dtype), dw_D.astype(w_D.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


@jax.custom_vjp
def swiglu(g: jax.Array, u: jax.Array) -> jax.Array:
    """`silu(g) * u` (SiLU = x * sigmoid(x)), in the inputs' dtype."""
    return elementwise.swiglu(g, u)


def _swiglu_fwd(g, u):
    return elementwise.swiglu(g, u), (g, u)


def _swiglu_bwd(residuals, dh):
    g, u = residuals
    f32 = jnp.float32
    g32, u32, dh32 = g.astype(f32), u.astype(f32), dh.astype(f32)
    sig = jax.nn.sigmoid(g32)
    silu = g32 * sig
    dg = dh32 * u32 * (sig * (1.0 + g32 * (1.0 - sig)))
    return dg.astype(g.dtype), (dh32 * silu).astype(u.dtype)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


@jax.custom_vjp
def adapter_down(x_NI: jax.Array, a_IR: jax.Array) -> jax.Array:
    """x @ A for rows x [N, I] and an adapter A [I, R], with a hand-written backward.

    Autodiff's dA = x^T g is a product whose [I, R] result has R (the rank) as its minor
    dimension; XLA:CPU runs that contraction over N at ~45 GFLOP/s. dA^T = g^T x [R, I] is the
    same numbers computed at ~130 GFLOP/s, and its [R, I] -> [I, R] transpose is small (the
    optimization barrier keeps XLA from folding the transpose back into the product). The same
    numbers on any backend.
    """
    return x_NI @ a_IR


def _adapter_down_fwd(x_NI, a_IR):
    return x_NI @ a_IR, (x_NI, a_IR)


def _adapter_down_bwd(residuals, g_NR):
    x_NI, a_IR = residuals
    da_RI = jax.lax.dot_general(g_NR, x_NI, (((0,), (0,)), ((), ())))
    return g_NR @ a_IR.T, jax.lax.optimization_barrier(da_RI).T


adapter_down.defvjp(_adapter_down_fwd, _adapter_down_bwd)
