"""The C++ CPU attention kernel (cpu/attention_kernel.py) against independent attention code.

References: jax.nn.dot_product_attention (JAX's own implementation, autodiff backward) and
cpu/softmax_attention.py (XLA, hand-written backward). Masks cover what training and
evaluation build: causal, prefix-shared rows (rejected never sees chosen), padding keys and
rows with no visible key, the last layer's label-position queries (T != S), random masks
(tiles partly visible), sizes that are not multiples of the 64-key tile, and grouped heads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from almol_jax.cpu import attention_kernel
from almol_jax.cpu.softmax_attention import softmax_attention
from almol_jax.model import ModelConfig
from almol_jax.model import kernels as kernels_lib
from almol_jax.ops.attention import mask_to_bias

pytestmark = pytest.mark.skipif(
    not attention_kernel.available(),
    reason=f"CPU attention kernel unavailable: {attention_kernel.unavailable_reason()}",
)


def _reference(q, k, v, mask):
    """jax.nn's XLA attention, with rows that see no key zeroed (what the kernel table returns)."""
    g = q.shape[2] // k.shape[2]
    out = jax.nn.dot_product_attention(
        q, jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2), mask=mask[:, None]
    )
    return jnp.where(jnp.any(mask, -1)[:, :, None, None], out, 0.0)


def _prefix_shared_mask(b, prompt, chosen, rejected, pad=0):
    t = prompt + chosen + rejected + pad
    m = np.tril(np.ones((t, t), bool))
    m[prompt + chosen :, prompt : prompt + chosen] = False  # rejected never sees chosen
    m[:, t - pad :] = False
    m[t - pad :, :] = False  # padding rows see nothing
    return np.repeat(m[None], b, 0)


def _case(name, rng):
    if name == "causal_mha":
        b, t, s, n, k = 2, 128, 128, 4, 4
        mask = np.repeat(np.tril(np.ones((t, s), bool))[None], b, 0)
    elif name == "prefix_shared_padded":
        b, n, k = 3, 4, 4
        mask = _prefix_shared_mask(b, 70, 30, 25, pad=11)  # 136 rows: a partial last tile
        t = s = mask.shape[1]
    elif name == "gqa_random":
        b, t, s, n, k = 2, 100, 100, 8, 2
        mask = rng.random((b, t, s)) < 0.3
        mask[0, 5] = False  # a row with no visible key
    elif name == "label_queries":  # the last layer: T label positions over all S keys
        b, n, k = 2, 4, 2
        full = _prefix_shared_mask(b, 90, 40, 40)
        rows = np.concatenate([np.arange(89, 129), np.arange(129, 169)])
        mask = full[:, rows]
        t, s = mask.shape[1:]
    else:
        raise ValueError(name)
    h = 24 if name == "label_queries" else 32  # 24: column tails narrower than one vector
    q = rng.normal(size=(b, t, n, h)).astype(np.float32)
    kk = rng.normal(size=(b, s, k, h)).astype(np.float32)
    v = rng.normal(size=(b, s, k, h)).astype(np.float32)
    return q, kk, v, mask


CASES = ["causal_mha", "prefix_shared_padded", "gqa_random", "label_queries"]


@pytest.mark.parametrize("name", CASES)
def test_forward_and_gradients_match_references(name):
    rng = np.random.default_rng(CASES.index(name))
    q, k, v, mask = _case(name, rng)
    w = rng.normal(size=q.shape).astype(np.float32)
    mask = jnp.asarray(mask)

    def xla_path(q, k, v):
        out = softmax_attention(q, k, v, mask_to_bias(mask))
        return jnp.where(jnp.any(mask, -1)[:, :, None, None], out, 0.0)

    impls = {
        "kernel": lambda q, k, v: attention_kernel.cpu_attention(q, k, v, mask),
        "jax.nn": lambda q, k, v: _reference(q, k, v, mask),
        "xla_path": xla_path,
    }
    outs, grads = {}, {}
    for key, f in impls.items():
        outs[key] = np.asarray(jax.jit(f)(q, k, v))
        loss = lambda q, k, v, f=f: jnp.sum(f(q, k, v) * w)  # noqa: E731
        grads[key] = [np.asarray(g) for g in jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)]
    for ref in ("jax.nn", "xla_path"):
        np.testing.assert_allclose(outs["kernel"], outs[ref], rtol=1e-5, atol=2e-6)
        for got, want in zip(grads["kernel"], grads[ref], strict=True):
            scale = np.max(np.abs(want))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6 * scale)
    empty = ~np.asarray(mask).any(-1)  # rows with no visible key: zero output, zero dq
    assert np.all(outs["kernel"][empty] == 0.0)
    assert np.all(grads["kernel"][0][empty] == 0.0)


def test_tile_states_golden():
    mask = np.zeros((1, 3, 130), bool)
    mask[0, 0, :64] = True  # row 0: tile 0 all, tiles 1 and 2 none
    mask[0, 1, 10] = True  # row 1: tile 0 some
    mask[0, 1, 64:130] = True  # row 1: tiles 1 and 2 (2 real keys) all
    mask[0, 2, 128] = True  # row 2: tile 2 some (1 of its 2 real keys)
    got = np.asarray(attention_kernel.tile_states(jnp.asarray(mask)))
    np.testing.assert_array_equal(got[0], [[2, 0, 0], [1, 2, 2], [0, 0, 1]])


def test_kernel_is_deterministic_and_vmaps():
    """Two calls give bitwise the same result (each item is computed by one thread), and a vmap
    over a leading axis equals the per-slice calls."""
    rng = np.random.default_rng(5)
    q, k, v, mask = _case("gqa_random", rng)
    f = jax.jit(lambda q, k, v: attention_kernel.cpu_attention(q, k, v, jnp.asarray(mask)))
    np.testing.assert_array_equal(np.asarray(f(q, k, v)), np.asarray(f(q, k, v)))
    stacked = [jnp.stack([x, x[::-1]]) for x in (q, k, v)]
    mapped = jax.vmap(f)(*stacked)
    np.testing.assert_array_equal(np.asarray(mapped[0]), np.asarray(f(q, k, v)))
    np.testing.assert_array_equal(np.asarray(mapped[1]), np.asarray(f(q[::-1], k[::-1], v[::-1])))


def test_kernel_table_choice():
    def choose(**fields):
        return kernels_lib.choose(ModelConfig(**fields))

    assert choose(kernels="cpu") is kernels_lib.CPU
    assert choose(kernels="portable") is kernels_lib.PORTABLE["xla"]
    assert choose(kernels="portable", attention_impl="cudnn") is kernels_lib.PORTABLE["cudnn"]
    assert (choose() is kernels_lib.CPU) == (jax.device_count() == 1)  # auto, float32
    assert choose(dtype="bfloat16") is kernels_lib.PORTABLE["xla"]  # auto, bfloat16
    assert choose(attention_impl="cudnn") is kernels_lib.PORTABLE["cudnn"]
    with pytest.raises(ValueError, match="float32"):
        choose(kernels="cpu", dtype="bfloat16")
    with pytest.raises(ValueError, match="attention_impl='cudnn'"):
        choose(kernels="cpu", attention_impl="cudnn")


def test_failed_build_falls_back_with_a_warning(tmp_path):
    """No working compiler: `auto` keeps the cpu kernels with XLA's attention (a warning) and
    matches jax.nn, `cpu` is an error."""
    script = textwrap.dedent(
        """
        import warnings, jax, jax.numpy as jnp, numpy as np, pytest
        from almol_jax.cpu import attention_kernel
        from almol_jax.model import ModelConfig
        from almol_jax.model import kernels as kernels_lib
        from almol_jax.ops.attention import Mask
        assert not attention_kernel.available()
        assert "failed" in attention_kernel.unavailable_reason()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = kernels_lib.choose(ModelConfig())
        assert table is kernels_lib.CPU
        assert any("unavailable" in str(w.message) for w in caught)
        r = np.random.default_rng(0)
        q, k, v = (jnp.asarray(r.normal(size=(2, 9, 4, 8)), jnp.float32) for _ in range(3))
        mask = jnp.asarray(np.tril(np.ones((9, 9), bool))[None].repeat(2, 0)).at[0, 2].set(False)
        want = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])
        want = jnp.where(jnp.any(mask, -1)[:, :, None, None], want, 0.0)
        got = table.attention(q, k, v, Mask(mask))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
        with pytest.raises(RuntimeError, match="unavailable"):
            kernels_lib.choose(ModelConfig(kernels="cpu"))
        print("ok")
        """
    )
    env = dict(os.environ, CXX="false", ALMOL_JAX_KERNEL_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_build_is_cached(tmp_path):
    """The library is built once per (source, flags, jaxlib, CPU) and reused from the cache."""
    env = dict(os.environ, ALMOL_JAX_KERNEL_CACHE=str(tmp_path))
    code = "from almol_jax.cpu import attention_kernel as c; print(c.available())"
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.stdout.strip() == "True", done.stderr[-2000:]
    assert len(list(tmp_path.glob("cpu_attention-*.so"))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("march", ["x86-64-v2", "haswell"])
def test_narrower_vector_builds_match(tmp_path, march):
    """The 4-float (SSE; the NEON code path) and 8-float (AVX2) builds give the same results."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"-march={march} is an x86 target; this machine is {platform.machine()}")
    script = textwrap.dedent(
        """
        import sys, numpy as np, jax, jax.numpy as jnp
        sys.path.insert(0, sys.argv[1])
        from test_cpu_attention import _case, _reference
        from almol_jax.cpu import attention_kernel
        assert attention_kernel.available(), attention_kernel.unavailable_reason()
        for i, name in enumerate(["prefix_shared_padded", "label_queries", "gqa_random"]):
            q, k, v, mask = _case(name, np.random.default_rng(i))
            mask = jnp.asarray(mask)
            w = jnp.asarray(np.random.default_rng(9).normal(size=q.shape), jnp.float32)
            fk = lambda q, k, v: attention_kernel.cpu_attention(q, k, v, mask)
            fr = lambda q, k, v: _reference(q, k, v, mask)
            np.testing.assert_allclose(fk(q, k, v), fr(q, k, v), rtol=1e-5, atol=2e-6)
            for f_, r_ in zip(
                jax.grad(lambda *a: jnp.sum(fk(*a) * w), argnums=(0, 1, 2))(q, k, v),
                jax.grad(lambda *a: jnp.sum(fr(*a) * w), argnums=(0, 1, 2))(q, k, v),
            ):
                np.testing.assert_allclose(f_, r_, rtol=1e-5, atol=2e-6 * float(jnp.max(jnp.abs(r_))))
        print("ok")
        """
    )
    env = dict(
        os.environ, ALMOL_JAX_KERNEL_MARCH=march, ALMOL_JAX_KERNEL_CACHE=str(tmp_path / "cache")
    )
    tests_dir = os.path.dirname(__file__)
    done = subprocess.run(
        [sys.executable, "-c", script, tests_dir],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    assert len(list((tmp_path / "cache").glob("cpu_attention-*.so"))) == 1
