"""Dot-product attention through XLA with a hand-written backward pass (the CPU kernels' fallback).

`softmax_attention(q_BTNH, k_BSKH, v_BSKH, bias_BTS)` is softmax(q k^T * scale + bias) v with
grouped heads (GQA/MQA: query head n reads kv head n // (N / K), Hugging Face's grouping). The
cpu kernel table runs it when the C++ kernel (attention_kernel.py) could not be built.

Why not autodiff through `jax.nn.dot_product_attention(implementation="xla")` (the portable
table's attention): on the CPU, XLA materialises a transposed copy of every [T, S] tensor that a
batched product contracts over its major dimension, and those copies (strided, ~2 ns per
element) cost more than the products (issue 8). Here every tensor is laid out once as
[B, K, M, .] (ops/attention.py: M = G * T, the query heads that share a kv head, stacked
along the query axis, so all products are plain batched matrix products over (B, K)), and the
backward pass is written so that the [M, S] probabilities and score gradients are only ever read
in their stored layout: dV^T = dO^T P and dK^T = Q^T dS transpose the small [M, H] operands
instead. The softmax gradient uses the identity sum_s dP[m, s] P[m, s] = dO[m] . O[m] (flash
attention's "D" term): one pass over [M, S].

Numerics: float32 scores and softmax whatever the input dtype; the probabilities are stored (and
fed to the P @ V product) in the input dtype. The bias is additive (0 where a key is visible,
NEG_INF where it is not) and is not differentiated. A query with no visible key gets the mean of
the values here; the caller zeroes those rows (cpu/attention.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from almol_jax.ops.attention import bias_B1MS, probabilities, queries_BKMH, rows_BTNH


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q_BKMH, k_BKSH, v_BKSH, mask_bias, scale):
    p_BKMS = probabilities(q_BKMH, k_BKSH, mask_bias, scale)
    return jnp.einsum("bkms,bksh->bkmh", p_BKMS, v_BKSH)


def _attention_fwd(q_BKMH, k_BKSH, v_BKSH, mask_bias, scale):
    p_BKMS = probabilities(q_BKMH, k_BKSH, mask_bias, scale)
    o_BKMH = jnp.einsum("bkms,bksh->bkmh", p_BKMS, v_BKSH)
    return o_BKMH, (q_BKMH, k_BKSH, v_BKSH, p_BKMS, o_BKMH, mask_bias)


def _attention_bwd(scale, residuals, do_BKMH):
    q_BKMH, k_BKSH, v_BKSH, p_BKMS, o_BKMH, mask_bias = residuals
    f32 = jnp.float32
    do_BKMH = do_BKMH.astype(o_BKMH.dtype)
    # dV^T = dO^T P and dK^T = Q^T dS: [M, S] operands read as stored, [M, H] ones transposed
    dv_BKSH = jnp.einsum("bkmh,bkms->bkhs", do_BKMH, p_BKMS).transpose(0, 1, 3, 2)
    dp_BKMS = jnp.einsum("bkmh,bksh->bkms", do_BKMH, v_BKSH, preferred_element_type=f32)
    d_BKM1 = jnp.sum(do_BKMH.astype(f32) * o_BKMH.astype(f32), axis=-1, keepdims=True, dtype=f32)
    ds_BKMS = (p_BKMS.astype(f32) * (dp_BKMS - d_BKM1) * scale).astype(q_BKMH.dtype)
    dq_BKMH = jnp.einsum("bkms,bksh->bkmh", ds_BKMS, k_BKSH)
    dk_BKSH = jnp.einsum("bkmh,bkms->bkhs", q_BKMH, ds_BKMS).transpose(0, 1, 3, 2)
    return dq_BKMH, dk_BKSH, dv_BKSH, jnp.zeros_like(mask_bias)


_attention.defvjp(_attention_fwd, _attention_bwd)


def softmax_attention(
    q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, bias_BTS: jax.Array
) -> jax.Array:
    """softmax(q k^T / sqrt(H) + bias) v over grouped heads -> [B, T, N, H]."""
    b, t, n, h = q_BTNH.shape
    num_kv = k_BSKH.shape[2]
    out_BKMH = _attention(
        queries_BKMH(q_BTNH, num_kv),
        k_BSKH.transpose(0, 2, 1, 3).astype(q_BTNH.dtype),
        v_BSKH.transpose(0, 2, 1, 3).astype(q_BTNH.dtype),
        bias_B1MS(bias_BTS, n // num_kv),
        1.0 / float(h) ** 0.5,
    )
    return rows_BTNH(out_BKMH, t)
