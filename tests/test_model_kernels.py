"""The hand-written kernels of the model (issue 8) against independent implementations.

softmax_attention (custom backward) vs jax.nn.dot_product_attention differentiated by JAX;
cached_attention vs the same; rms_norm / swiglu (custom backward) vs autodiff of the plain
formulas; lora.project (fused adapter products) vs the unfused Linear calls; rope_tables vs the
on-device float32 computation Hugging Face uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from almol_jax.model.elementwise import rms_norm, swiglu
from almol_jax.model.lora import Linear, project
from almol_jax.model.lora_config import LoraConfig
from almol_jax.model.rope import rope_tables
from almol_jax.model.softmax_attention import cached_attention, mask_to_bias, softmax_attention


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


def test_cached_attention_matches_the_reference_over_a_cache_layout():
    b, t, s, n, k, h = 2, 3, 10, 4, 2, 8
    r = np.random.default_rng(5)
    q = jnp.asarray(r.normal(size=(b, t, n, h)), jnp.float32)
    k_BSKH = jnp.asarray(r.normal(size=(b, s, k, h)), jnp.float32)
    v_BSKH = jnp.asarray(r.normal(size=(b, s, k, h)), jnp.float32)
    mask = jnp.asarray(r.random((b, t, s)) < 0.6).at[:, :, 0].set(True)
    got = cached_attention(
        q, k_BSKH.transpose(0, 2, 1, 3), v_BSKH.transpose(0, 2, 1, 3), mask_to_bias(mask)
    )
    want = jax.nn.dot_product_attention(q, k_BSKH, v_BSKH, mask=mask[:, None])
    np.testing.assert_allclose(got, want, atol=2e-6)


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


def test_fused_adapter_products_equal_separate_linears():
    lora = LoraConfig(r=4, alpha=8.0)
    rngs = nnx.Rngs(0)
    common = dict(use_bias=True, dtype=jnp.float32, param_dtype=jnp.float32, init_std=0.1)
    linears = tuple(
        Linear(16, o, axes=("embed", "mlp"), rngs=rngs, lora=lora, name="gate_proj", **common)
        for o in (24, 8)
    )
    for m in linears:  # non-zero B and bias so every term contributes
        m.lora_b[...] = jax.random.normal(jax.random.key(1), m.lora_b.shape)
        m.bias[...] = jax.random.normal(jax.random.key(2), m.bias.shape)
    x = jax.random.normal(jax.random.key(3), (2, 5, 16))
    for got, m in zip(project(linears, x), linears, strict=True):
        np.testing.assert_allclose(got, m(x), atol=1e-6)

    def loss(ls, fused):
        outs = project(ls, x) if fused else [m(x) for m in ls]
        return sum(jnp.sum(jnp.sin(o)) for o in outs)

    g_fused = nnx.grad(lambda ls: loss(ls, True))(linears)
    g_plain = nnx.grad(lambda ls: loss(ls, False))(linears)
    for a, b in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_rope_tables_match_the_float32_device_computation_and_flag_bad_positions():
    inv = 1.0 / (10000.0 ** (np.arange(0, 64, 2, dtype=np.float64) / 64))
    positions = jnp.asarray([[0, 1, 2, 500], [7, 3, 1023, 0]], jnp.int32)
    cos, sin = rope_tables(positions, inv, 1024)
    angle = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv, jnp.float32)
    want = jnp.concatenate([angle, angle], axis=-1)
    np.testing.assert_allclose(cos, jnp.cos(want), atol=2e-6)
    np.testing.assert_allclose(sin, jnp.sin(want), atol=2e-6)
    cos_bad, _ = rope_tables(positions, inv, 1000)  # 1023 is outside a 1000-position table
    assert np.isnan(np.asarray(cos_bad)[1, 2]).all() and np.isfinite(np.asarray(cos_bad)[0]).all()
