"""The Pallas TPU flash attention (almol_jax/tpu/flash_attention.py) in Pallas's interpret mode on
the CPU against jax.nn.dot_product_attention over the same mask: values and gradients at fp32.

The mask is the training rows' (model/attention.build_mask): causal, per segment (two pairs packed
in one row), prompt shared and the chosen and rejected responses apart, with padding keys and
queries; lengths not a multiple of the 128-token tile (the kernel pads); grouped kv heads; and the
last layer's gathered label queries (take_queries).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from almol_jax.data.prefix_sharing import ROLE_CHOSEN, ROLE_PROMPT, ROLE_REJECTED
from almol_jax.model.attention import build_mask, take_queries
from almol_jax.ops.attention import zero_keyless_rows
from almol_jax.tpu import flash_attention

T = 160  # two key tiles after padding to 256


def _rows():
    """Row 0: two packed prefix-shared groups; row 1: one group, then padding."""
    seg = np.zeros((2, T), np.int32)
    role = np.zeros((2, T), np.int32)
    valid = np.ones((2, T), bool)
    spans = [(0, [(0, 40, ROLE_PROMPT), (40, 70, ROLE_CHOSEN), (70, 90, ROLE_REJECTED)])]
    spans += [(1, [(90, 120, ROLE_PROMPT), (120, 140, ROLE_CHOSEN), (140, T, ROLE_REJECTED)])]
    for s, parts in spans:
        for a, b, r in parts:
            seg[0, a:b], role[0, a:b] = s, r
    for a, b, r in [(0, 70, ROLE_PROMPT), (70, 110, ROLE_CHOSEN), (110, 131, ROLE_REJECTED)]:
        role[1, a:b] = r
    valid[1, 131:] = False
    seg[1, 131:] = 7  # padding of its own segment: no visible key (keyless rows give zeros)
    return jnp.asarray(seg), jnp.asarray(role), jnp.asarray(valid)


def _qkv(rng, t, n=4, k=2, h=32):
    q = jnp.asarray(rng.normal(size=(2, t, n, h)), jnp.float32)
    kv = [jnp.asarray(rng.normal(size=(2, T, k, h)), jnp.float32) for _ in range(2)]
    return q, kv[0], kv[1]


def _oracle(q, k, v, dense_BTS):
    n, groups = q.shape[2], q.shape[2] // k.shape[2]
    k, v = (jnp.repeat(x, groups, axis=2) for x in (k, v))
    assert k.shape[2] == n
    out = jax.nn.dot_product_attention(q, k, v, mask=dense_BTS[:, None])
    return zero_keyless_rows(out, dense_BTS)


def _mask(gather):
    seg, role, valid = _rows()
    mask = build_mask(valid, 0, T, segment_ids_BT=seg, role_ids_BT=role, with_codes=True)
    assert mask.q_code_BT is not None
    if gather:
        index = jnp.asarray(np.stack([np.arange(39, 129, 2), np.arange(69, 159, 2)]), jnp.int32)
        mask = take_queries(mask, index)
    return mask


def test_mask_rule_is_the_prefix_shared_one():
    dense = np.asarray(_mask(False).dense_BTS)
    assert dense[0, 75, 40:70].sum() == 0 and dense[0, 75, :40].all()  # rejected: not chosen
    assert dense[0, 60, 40:61].all() and not dense[0, 60, 70:].any()  # chosen sees itself
    assert not dense[0, 100, :90].any()  # the second pair sees nothing of the first
    assert not dense[1, 140].any()  # padding query: no key


@pytest.mark.parametrize("gather", [False, True], ids=["all_queries", "label_queries"])
def test_flash_matches_jax_nn_values_and_gradients(gather):
    mask = _mask(gather)
    t = mask.dense_BTS.shape[1]
    q, k, v = _qkv(np.random.default_rng(0), t)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

    def flash_loss(q, k, v):
        out = flash_attention.attention(q, k, v, mask, interpret=True)
        return jnp.sum(out * weights), out

    def oracle_loss(q, k, v):
        out = _oracle(q, k, v, mask.dense_BTS)
        return jnp.sum(out * weights), out

    (_, got), grads = jax.value_and_grad(flash_loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    (_, want), ref = jax.value_and_grad(oracle_loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    assert np.abs(np.asarray(want)).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for name, g, r in zip("qkv", grads, ref, strict=True):
        assert np.abs(np.asarray(r)).max() > 1e-2, name
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5, err_msg=f"d{name}")


def test_a_mask_without_codes_runs_xla_attention():
    mask = _mask(False)
    q, k, v = _qkv(np.random.default_rng(2), T)
    dense_only = type(mask)(mask.dense_BTS)
    got = flash_attention.attention(q, k, v, dense_only, interpret=True)
    np.testing.assert_allclose(got, _oracle(q, k, v, mask.dense_BTS), rtol=1e-5, atol=1e-5)
