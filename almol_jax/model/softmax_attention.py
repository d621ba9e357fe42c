"""Dot-product attention for the XLA path, with a hand-written backward pass.

`softmax_attention(q_BTNH, k_BSKH, v_BSKH, bias_BTS)` is softmax(q k^T * scale + bias) v with
grouped heads (GQA/MQA: query head n reads kv head n // (N / K), Hugging Face's grouping).

Why not autodiff through `jax.nn.dot_product_attention(implementation="xla")`: on the CPU, XLA
materialises a transposed copy of every [T, S] tensor that a batched product contracts over its
major dimension, and those copies (strided, ~2 ns per element) cost more than the products
(issue 8). Here every tensor is laid out once as [B, K, M, .] (M = G * T: the query heads that
share a kv head, stacked along the query axis, so all products are plain batched matrix
products over (B, K)), and the backward pass is written so that the [M, S] probabilities and
score gradients are only ever read in their stored layout: dV^T = dO^T P and dK^T = Q^T dS
transpose the small [M, H] operands instead. The softmax gradient uses the identity
sum_s dP[m, s] P[m, s] = dO[m] . O[m] (flash attention's "D" term): one pass over [M, S].

Numerics: float32 scores and softmax whatever the input dtype; the probabilities are stored (and
fed to the P @ V product) in the input dtype. The bias is additive (0 where a key is visible,
MASKED_BIAS where it is not) and is not differentiated. A query with no visible key gets the
mean of the values here; the caller zeroes those rows (attention.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

MASKED_BIAS = -1e30


def mask_to_bias(mask_BTS: jax.Array) -> jax.Array:
    """Boolean visibility mask -> float32 additive bias (0 visible, MASKED_BIAS hidden)."""
    return jnp.where(mask_BTS, 0.0, MASKED_BIAS).astype(jnp.float32)


def _queries_BKMH(q_BTNH: jax.Array, num_kv_heads: int) -> jax.Array:
    """[B, T, N, H] -> [B, K, G*T, H]: the G query heads of kv head k stacked along the rows."""
    b, t, n, h = q_BTNH.shape
    if n % num_kv_heads:
        raise ValueError(f"{n} query heads do not group over {num_kv_heads} kv heads")
    g = n // num_kv_heads
    return (
        q_BTNH.reshape(b, t, num_kv_heads, g, h)
        .transpose(0, 2, 3, 1, 4)
        .reshape(b, num_kv_heads, g * t, h)
    )


def _rows_BTNH(x_BKMH: jax.Array, t: int) -> jax.Array:
    """Inverse of `_queries_BKMH`: [B, K, G*T, H] -> [B, T, N, H]."""
    b, k, m, h = x_BKMH.shape
    g = m // t
    return x_BKMH.reshape(b, k, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, k * g, h)


def _bias_B1MS(bias_BTS: jax.Array, g: int) -> jax.Array:
    b, t, s = bias_BTS.shape
    if g == 1:
        return bias_BTS[:, None]
    return jnp.broadcast_to(bias_BTS[:, None, None], (b, 1, g, t, s)).reshape(b, 1, g * t, s)


def _probabilities(q_BKMH, k_BKSH, bias_B1MS, scale):
    s_BKMS = jnp.einsum("bkmh,bksh->bkms", q_BKMH, k_BKSH, preferred_element_type=jnp.float32)
    s_BKMS = s_BKMS * scale + bias_B1MS
    e_BKMS = jnp.exp(s_BKMS - jnp.max(s_BKMS, axis=-1, keepdims=True))
    return (e_BKMS * (1.0 / jnp.sum(e_BKMS, axis=-1, keepdims=True))).astype(q_BKMH.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q_BKMH, k_BKSH, v_BKSH, bias_B1MS, scale):
    p_BKMS = _probabilities(q_BKMH, k_BKSH, bias_B1MS, scale)
    return jnp.einsum("bkms,bksh->bkmh", p_BKMS, v_BKSH)


def _attention_fwd(q_BKMH, k_BKSH, v_BKSH, bias_B1MS, scale):
    p_BKMS = _probabilities(q_BKMH, k_BKSH, bias_B1MS, scale)
    o_BKMH = jnp.einsum("bkms,bksh->bkmh", p_BKMS, v_BKSH)
    return o_BKMH, (q_BKMH, k_BKSH, v_BKSH, p_BKMS, o_BKMH, bias_B1MS)


def _attention_bwd(scale, residuals, do_BKMH):
    q_BKMH, k_BKSH, v_BKSH, p_BKMS, o_BKMH, bias_B1MS = residuals
    f32 = jnp.float32
    do_BKMH = do_BKMH.astype(o_BKMH.dtype)
    # dV^T = dO^T P and dK^T = Q^T dS: [M, S] operands read as stored, [M, H] ones transposed
    dv_BKSH = jnp.einsum("bkmh,bkms->bkhs", do_BKMH, p_BKMS).transpose(0, 1, 3, 2)
    dp_BKMS = jnp.einsum("bkmh,bksh->bkms", do_BKMH, v_BKSH, preferred_element_type=f32)
    d_BKM1 = jnp.sum(do_BKMH.astype(f32) * o_BKMH.astype(f32), axis=-1, keepdims=True, dtype=f32)
    ds_BKMS = (p_BKMS.astype(f32) * (dp_BKMS - d_BKM1) * scale).astype(q_BKMH.dtype)
    dq_BKMH = jnp.einsum("bkms,bksh->bkmh", ds_BKMS, k_BKSH)
    dk_BKSH = jnp.einsum("bkmh,bkms->bkhs", q_BKMH, ds_BKMS).transpose(0, 1, 3, 2)
    return dq_BKMH, dk_BKSH, dv_BKSH, jnp.zeros_like(bias_B1MS)


_attention.defvjp(_attention_fwd, _attention_bwd)


def softmax_attention(
    q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, bias_BTS: jax.Array
) -> jax.Array:
    """softmax(q k^T / sqrt(H) + bias) v over grouped heads -> [B, T, N, H]."""
    b, t, n, h = q_BTNH.shape
    num_kv = k_BSKH.shape[2]
    out_BKMH = _attention(
        _queries_BKMH(q_BTNH, num_kv),
        k_BSKH.transpose(0, 2, 1, 3).astype(q_BTNH.dtype),
        v_BSKH.transpose(0, 2, 1, 3).astype(q_BTNH.dtype),
        _bias_B1MS(bias_BTS, n // num_kv),
        1.0 / float(h) ** 0.5,
    )
    return _rows_BTNH(out_BKMH, t)


def cached_attention(
    q_BTNH: jax.Array, k_BKSH: jax.Array, v_BKSH: jax.Array, bias_BTS: jax.Array
) -> jax.Array:
    """The same attention over one layer of a KV cache laid out [B, K, S, H] (inference only)."""
    b, t, n, h = q_BTNH.shape
    num_kv = k_BKSH.shape[1]
    q_BKMH = _queries_BKMH(q_BTNH.astype(k_BKSH.dtype), num_kv)
    p_BKMS = _probabilities(q_BKMH, k_BKSH, _bias_B1MS(bias_BTS, n // num_kv), h**-0.5)
    o_BKMH = jnp.einsum("bkms,bksh->bkmh", p_BKMS, v_BKSH)
    return _rows_BTNH(o_BKMH, t).astype(q_BTNH.dtype)
