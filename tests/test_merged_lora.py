"""LoRA through merged kernels (cpu/merged_lora.py) against autodiff of the separate formula, and
the cpu kernel table's choice of it (cpu/lora.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from almol_jax.cpu import lora as cpu_lora
from almol_jax.cpu.merged_lora import merged_project
from almol_jax.model import kernels
from almol_jax.model.lora import Linear, LoRAParam
from almol_jax.model.lora_config import LoraConfig
from almol_jax.ops.lora_products import Adapters


def _separate(x, kernels, a, bs, scales):
    """x @ W_i + s_i (x @ A_i) @ B_i, differentiated by JAX's autodiff (the reference)."""
    outs, start = [], 0
    for w, b, s in zip(kernels, bs, scales, strict=True):
        r = b.shape[0]
        outs.append(x @ w + s * ((x @ a[:, start : start + r]) @ b))
        start += r
    return outs


@pytest.mark.parametrize("ranks", [(8,), (4, 4, 4), (16, 16)])
def test_values_and_gradients_match_autodiff(ranks):
    rng = np.random.default_rng(len(ranks))
    n, i = 96, 24
    outs = [40, 16, 16][: len(ranks)]
    x = jnp.asarray(rng.normal(size=(n, i)), jnp.float32)
    kernels = tuple(jnp.asarray(rng.normal(size=(i, o)) * 0.2, jnp.float32) for o in outs)
    a = jnp.asarray(rng.normal(size=(i, sum(ranks))) * 0.3, jnp.float32)
    bs = tuple(
        jnp.asarray(rng.normal(size=(r, o)) * 0.3, jnp.float32)
        for r, o in zip(ranks, outs, strict=True)
    )
    scales = tuple(2.0 / (k + 1) + 0.37 for k in range(len(ranks)))  # not powers of two
    ws = [jnp.asarray(rng.normal(size=(n, o)), jnp.float32) for o in outs]

    def loss(f, x, a, bs):
        return sum(jnp.sum(y * w) for y, w in zip(f(x, kernels, a, bs, scales), ws, strict=True))

    for got, want in zip(
        merged_project(x, kernels, a, bs, scales), _separate(x, kernels, a, bs, scales), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    g_merged = jax.grad(lambda *z: loss(merged_project, *z), argnums=(0, 1, 2))(x, a, bs)
    g_ref = jax.grad(lambda *z: loss(_separate, *z), argnums=(0, 1, 2))(x, a, bs)
    for got, want in zip(jax.tree.leaves(g_merged), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def _linear():
    lo = LoraConfig(r=4, alpha=8.0, target_modules=("q_proj",))
    m = Linear(
        16,
        12,
        axes=("embed", "heads"),
        use_bias=True,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        init_std=0.2,
        rngs=nnx.Rngs(0),
        kernels=kernels.CPU,
        lora=lo,
        name="q_proj",
    )
    m.lora_b[...] = 0.3 * jax.random.normal(jax.random.key(1), m.lora_b.shape)
    m.bias[...] = jnp.arange(12, dtype=jnp.float32) * 0.01
    return m


def test_linear_takes_the_merged_path_only_where_it_pays(monkeypatch):
    m = _linear()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 40, 16)), jnp.float32)
    w = m.kernel[...]
    adapters = Adapters(a_IR=m.lora_a[...], bs=(m.lora_b[...],), scales=(m.lora_scale,))
    assert cpu_lora.mergeable(x, (w,), adapters)  # 80 rows >= 8 x rank 4
    assert not cpu_lora.mergeable(x[:1, :16], (w,), adapters)  # 16 rows
    assert not cpu_lora.mergeable(x, (w.astype(jnp.bfloat16),), adapters)
    dropped = Adapters(a_IR=m.lora_a[...], bs=(m.lora_b[...],), scales=(2.0,), x_BTI=0.5 * x)
    assert not cpu_lora.mergeable(x, (w,), dropped)
    assert not cpu_lora.mergeable(x, (w,), None)

    def loss(model, x):
        return jnp.sum(jnp.sin(model(x)))

    def run(x):
        value, grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, LoRAParam))(m, x)
        return value, jax.tree.leaves(grads)

    merged = run(x)
    monkeypatch.setattr(cpu_lora, "MERGE_MIN_ROWS_PER_RANK", 10**9)  # force the separate path
    separate = run(x)
    np.testing.assert_allclose(merged[0], separate[0], rtol=1e-6)
    # The two paths add the 80 rows' float32 contributions in different orders; an entry whose
    # sum cancels (0.235 out of terms as large as the array's largest, ~26) carries an error of
    # the terms' size (5.9e-6 seen on CI's CPU), so the absolute tolerance scales with the array.
    for got, want in zip(merged[1], separate[1], strict=True):
        scale = float(np.max(np.abs(want)))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6 * scale)
