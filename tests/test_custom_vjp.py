"""Hand-written backward passes (issue 8) against independent implementations.

cpu/softmax_attention.py (custom backward) vs jax.nn.dot_product_attention differentiated by JAX;
ops/custom_vjp.py's rms_norm / swiglu (custom backward) vs float64 formulas and autodiff of the
plain formulas; its adapter_down vs float64 products.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from almol_jax.cpu.softmax_attention import softmax_attention
from almol_jax.ops.attention import mask_to_bias
from almol_jax.ops.custom_vjp import adapter_down, rms_norm, swiglu


def _qkv(b, t, n, k, h, seed=0, dtype=jnp.float32):
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.normal(size=(b, t, n, h)), dtype)
    kk = jnp.asarray(r.normal(size=(b, t, k, h)), dtype)
    v = jnp.asarray(r.normal(size=(b, t, k, h)), dtype)
    return q, kk, v


def _mask(b, t, seed=0):
    """Causal, with left padding on row 0 (a fully masked query row) and a prefix rule."""
    r = np.random.default_rng(seed)
    causal = np.tril(np.ones((t, t), bool))
    m = np.broadcast_to(causal, (b, t, t)).copy()
    m[0, :, :3] = False  # keys 0-2 of row 0 are padding: query rows 0-2 see nothing
    m[1] &= r.random((t, t)) < 0.7
    m[1] |= np.eye(t, dtype=bool)
    return jnp.asarray(m)


def _reference(q, k, v, mask):
    out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="xla")
    has_key = jnp.any(mask, axis=-1)[:, :, None, None]
    return jnp.where(has_key, out, 0.0)


def _ours(q, k, v, mask):
    out = softmax_attention(q, k, v, mask_to_bias(mask))
    has_key = jnp.any(mask, axis=-1)[:, :, None, None]
    return jnp.where(has_key, out, 0.0)


@pytest.mark.parametrize("n,k", [(4, 4), (8, 2), (4, 1)])  # MHA, GQA, MQA
def test_softmax_attention_values_and_grads_match_jax(n, k):
    b, t, h = 3, 12, 16
    q, kk, v = _qkv(b, t, n, k, h)
    mask = _mask(b, t)
    np.testing.assert_allclose(_ours(q, kk, v, mask), _reference(q, kk, v, mask), atol=2e-6)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(b, t, n, h)), jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, mask) * w)

    ours = jax.grad(loss(_ours), argnums=(0, 1, 2))(q, kk, v)
    ref = jax.grad(loss(_reference), argnums=(0, 1, 2))(q, kk, v)
    for a, r in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, r, atol=2e-5, rtol=1e-5)


def test_softmax_attention_bfloat16_close_to_float32_and_finite():
    b, t, n, k, h = 2, 16, 4, 2, 32
    q, kk, v = _qkv(b, t, n, k, h, seed=3)
    mask = _mask(b, t, seed=3)
    f32 = _ours(q, kk, v, mask)
    bf = _ours(q.astype(jnp.bfloat16), kk.astype(jnp.bfloat16), v.astype(jnp.bfloat16), mask)
    assert bf.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf, np.float32), f32, atol=0.05)
    grads = jax.grad(
        lambda q: jnp.sum(_ours(q, kk.astype(q.dtype), v.astype(q.dtype), mask).astype(jnp.float32))
    )(q.astype(jnp.bfloat16))
    assert np.isfinite(np.asarray(grads, np.float32)).all()


def _rms_reference(x, w, eps):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return w.astype(x.dtype) * y.astype(x.dtype)


def test_rms_norm_and_swiglu_match_autodiff_of_the_formulas():
    r = np.random.default_rng(7)
    x = jnp.asarray(r.normal(size=(3, 5, 32)), jnp.float32)
    w = jnp.asarray(r.normal(size=(32,)), jnp.float32)
    ct = jnp.asarray(r.normal(size=(3, 5, 32)), jnp.float32)
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    want = w64 * x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(rms_norm(x, w, 1e-5, jnp.float32), want, rtol=1e-5, atol=1e-6)
    ours = jax.grad(lambda x, w: jnp.sum(rms_norm(x, w, 1e-5, jnp.float32) * ct), (0, 1))(x, w)
    ref = jax.grad(lambda x, w: jnp.sum(_rms_reference(x, w, 1e-5) * ct), (0, 1))(x, w)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)

    g, u = (jnp.asarray(r.normal(size=(4, 48)) * 3, jnp.float32) for _ in range(2))
    ct2 = jnp.asarray(r.normal(size=(4, 48)), jnp.float32)
    g64, u64 = np.asarray(g, np.float64), np.asarray(u, np.float64)
    np.testing.assert_allclose(swiglu(g, u), g64 / (1.0 + np.exp(-g64)) * u64, rtol=1e-5, atol=1e-6)
    ours = jax.grad(lambda g, u: jnp.sum(swiglu(g, u) * ct2), (0, 1))(g, u)
    ref = jax.grad(lambda g, u: jnp.sum(jax.nn.silu(g) * u * ct2), (0, 1))(g, u)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("rows", "din", "rank"), [(64, 48, 4), (300, 20, 12)])
def test_adapter_down_gradients_equal_float64_products(rows, din, rank):
    """The hand-written backward of x @ A gives dx = g A^T and dA = x^T g (float64 reference)."""
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, din)).astype(np.float32)
    a = rng.normal(size=(din, rank)).astype(np.float32)
    g = rng.normal(size=(rows, rank)).astype(np.float32)
    y, vjp = jax.vjp(adapter_down, jnp.asarray(x), jnp.asarray(a))
    dx, da = jax.jit(vjp)(jnp.asarray(g))
    x64, a64, g64 = (v.astype(np.float64) for v in (x, a, g))
    np.testing.assert_allclose(y, x64 @ a64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, g64 @ a64.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(da, x64.T @ g64, rtol=1e-5, atol=1e-4)
    assert da.shape == (din, rank)
