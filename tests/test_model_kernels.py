"""The model's own computations against independent implementations.

cached_attention (plain jnp over the [B, K, S, H] cache) vs jax.nn.dot_product_attention;
lora.project (fused adapter products, through either kernel table) vs the unfused Linear calls;
rope_tables vs the on-device float32 computation Hugging Face uses. (The CPU wing's hand-written
backward passes: test_custom_vjp.py; the two kernel tables against each other:
test_kernel_tables.py.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from almol_jax.model import kernels
from almol_jax.model.attention import cached_attention
from almol_jax.model.lora import Linear, project
from almol_jax.model.lora_config import LoraConfig
from almol_jax.model.rope import rope_tables


def test_cached_attention_matches_the_reference_over_a_cache_layout():
    b, t, s, n, k, h = 2, 3, 10, 4, 2, 8
    r = np.random.default_rng(5)
    q = jnp.asarray(r.normal(size=(b, t, n, h)), jnp.float32)
    k_BSKH = jnp.asarray(r.normal(size=(b, s, k, h)), jnp.float32)
    v_BSKH = jnp.asarray(r.normal(size=(b, s, k, h)), jnp.float32)
    mask = jnp.asarray(r.random((b, t, s)) < 0.6).at[:, :, 0].set(True)
    mask = mask.at[1, 2].set(False)  # a query with no visible key: zeros
    got = cached_attention(q, k_BSKH.transpose(0, 2, 1, 3), v_BSKH.transpose(0, 2, 1, 3), mask)
    want = jax.nn.dot_product_attention(q, k_BSKH, v_BSKH, mask=mask[:, None])
    want = jnp.where(jnp.any(mask, -1)[:, :, None, None], want, 0.0)
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("table", ["portable", "cpu"])
def test_fused_adapter_products_equal_separate_linears(table):
    lora = LoraConfig(r=4, alpha=8.0)
    rngs = nnx.Rngs(0)
    common = dict(use_bias=True, dtype=jnp.float32, param_dtype=jnp.float32, init_std=0.1)
    common["kernels"] = kernels.CPU if table == "cpu" else kernels.PORTABLE["xla"]
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
