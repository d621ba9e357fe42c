"""Packing several examples per row (issue 8): layout, isolation, and equality with plain rows.

The packed step (several triplets per row, segment ids, positions restarting, response-position
logits) must give the plain-layout oracle's losses, rewards and gradients (two rows per pair, full
logits; tests/plain_oracle.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from almol_jax.data.packing import pack_sft, pack_triplets, packing_efficiency, plan_rows
from almol_jax.data.prefix_sharing import Group, plain_batch
from almol_jax.train.chunked_logprobs import response_logprobs
from tests.test_prefix_sharing import (
    assert_trees_close,
    loss_metrics_grads,
    plain_loss_metrics_grads_of,
    random_triplets,
    tiny_model,
)


def test_packed_layout_golden():
    trip = [([1, 5], [6, 2], [7, 8, 2]), ([1, 9, 10], [11, 2], [2])]
    b, where = pack_triplets(trip, row_len=16, label_len=8, max_slots=2, rows=2)
    assert where == [(0, 0), (0, 1)]  # longest first (first-fit decreasing)
    row = b["input_ids"][0, :14]
    np.testing.assert_array_equal(row, [1, 5, 6, 2, 7, 8, 2, 1, 9, 10, 11, 2, 2, 0])
    pos = b["positions"][0, :13]
    np.testing.assert_array_equal(pos, [0, 1, 2, 3, 2, 3, 4, 0, 1, 2, 3, 4, 3])
    np.testing.assert_array_equal(b["segment_ids"][0, :14], [1] * 7 + [2] * 6 + [0])
    role = b["role_ids"][0, :13]
    np.testing.assert_array_equal(role, [0, 0, 1, 1, 2, 2, 2, 0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(b["label_src"][0], [1, 2, 1, 4, 5, 9, 10, 9])
    np.testing.assert_array_equal(b["label_slot"][0], [0, 0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(b["pair_mask"], [[1, 1], [0, 0]])
    assert packing_efficiency(b) == 13 / 32


def test_plan_rows_respects_limits_and_names_overflow():
    ex = [[Group((1,) * n, ((1, (2,)),))] for n in (5, 4, 3, 2)]
    assert plan_rows(ex, row_len=8, label_len=8, max_slots=4) == [[0], [1, 3], [2]]
    assert plan_rows(ex, row_len=100, label_len=8, max_slots=2) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="example 0 needs 6 tokens"):
        plan_rows(ex, row_len=5, label_len=8, max_slots=1)
    with pytest.raises(ValueError, match="need 2 rows; only rows=1"):
        pack_sft(
            [([1, 2, 3], [4, 2]), ([1, 5, 6], [7, 2])], row_len=6, label_len=4, max_slots=2, rows=1
        )


@pytest.mark.parametrize("share_prefix", [True, False])
def test_packed_equals_plain_losses_rewards_grads(share_prefix):
    graphdef, lora, rest = tiny_model(10)
    triplets = random_triplets(11, 6)
    packed, where = pack_triplets(
        triplets, row_len=64, label_len=32, max_slots=4, rows=3, share_prefix=share_prefix
    )
    assert packed["pair_mask"].sum() == 6 and packed["pair_mask"].shape == (3, 4)
    loss_p, met_p, g_p = plain_loss_metrics_grads_of(graphdef, lora, rest, plain_batch(triplets))
    loss_k, met_k, g_k = loss_metrics_grads(graphdef, lora, rest, packed)
    np.testing.assert_allclose(float(loss_k), float(loss_p), rtol=1e-5, atol=1e-7)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "nll_loss"):
        np.testing.assert_allclose(float(met_k[name]), float(met_p[name]), rtol=1e-5, atol=1e-6)
    assert float(met_k["rewards/accuracies"]) == float(met_p["rewards/accuracies"])
    gnorm = float(optax.global_norm(g_p))
    assert gnorm > 1e-3
    assert_trees_close(g_k, g_p, rtol=1e-5, atol=1e-5 * gnorm)


def test_packed_groups_are_isolated_and_per_pair_sums_land_in_their_slot():
    graphdef, lora, rest = tiny_model(12)
    model = nnx.merge(graphdef, lora, rest)
    trip = [([1, 5, 6], [7, 2], [8, 2]), ([1, 9], [10, 11, 2], [12, 2])]
    alone, _ = pack_triplets(trip[:1], row_len=24, label_len=12, max_slots=2, rows=1)
    both, where = pack_triplets(trip, row_len=24, label_len=12, max_slots=2, rows=1)
    fn = jax.jit(lambda b: response_logprobs(nnx.merge(graphdef, lora, rest), b))
    la = fn({k: jnp.asarray(v) for k, v in alone.items()})[0]
    lb = fn({k: jnp.asarray(v) for k, v in both.items()})[0]
    slots = 2
    # logps_sum = [chosen of pairs row*slots+slot ..., rejected ...]
    row, slot = where[0]
    p0 = row * slots + slot
    np.testing.assert_allclose(float(lb[p0]), float(la[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(lb[slots + p0]), float(la[slots]), rtol=1e-5, atol=1e-6)
    del model


def test_sft_packing_nll_equals_separate_rows():
    graphdef, lora, rest = tiny_model(13)
    pairs = [([1, 5, 6, 7], [8, 9, 2]), ([1, 3], [4, 2]), ([1, 10, 11], [12, 13, 14, 2])]
    packed, where = pack_sft(pairs, row_len=24, label_len=12, max_slots=3)
    assert packed["input_ids"].shape[0] == 1
    model = nnx.merge(graphdef, lora, rest)
    batch = {k: jnp.asarray(v) for k, v in packed.items()}
    _, ntok, nll_sum, nll_count = response_logprobs(model, batch)
    want = 0.0
    logp_fn = jax.jit(lambda seq: jax.nn.log_softmax(model(seq)[0], axis=-1))
    for p, r in pairs:
        seq = jnp.asarray([p + r])
        logp = logp_fn(seq)
        want -= sum(float(logp[t - 1, seq[0, t]]) for t in range(len(p), len(p) + len(r)))
    np.testing.assert_allclose(float(nll_sum), want, rtol=1e-5, atol=1e-5)
    assert float(nll_count) == 9.0
    np.testing.assert_array_equal(np.asarray(ntok)[[r * 3 + s for r, s in where]], [3, 2, 4])
