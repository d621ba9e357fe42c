"""Prefix-shared preference rows (issue 8): layout, attention rule, and equality with plain rows.

The equality tests compare two different computations of the same CPO quantities: the plain
layout (two rows per pair, full logits; the oracle of tests/plain_oracle.py) and the indexed
layout the train step takes (one row per pair, prefix-shared or unshared, role mask,
response-position logits, almol_jax.train.chunked_logprobs), plus an independent oracle that
runs every prompt+response alone through the model without masks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from plain_oracle import plain_loss_metrics_grads

from almol_jax.config.sections import ObjectiveSection
from almol_jax.data.prefix_sharing import (
    ROLE_CHOSEN,
    ROLE_PROMPT,
    ROLE_REJECTED,
    plain_batch,
    plain_to_indexed,
    role_mask_BTS,
    use_prefix_sharing,
)
from almol_jax.model.attention import build_mask
from almol_jax.model.build import build_model
from almol_jax.model.config import ModelConfig
from almol_jax.model.lora import LoRAParam
from almol_jax.model.lora_config import LoraConfig
from almol_jax.train.chunked_logprobs import response_logprobs
from almol_jax.train.optimizer import make_optimizer
from almol_jax.train.step import (
    StepSettings,
    global_normalisers,
    init_train_state,
    objective_terms,
    train_step,
)

VOCAB = 300


def random_triplets(seed: int, n: int, max_prompt: int = 9, max_resp: int = 6):
    rng = np.random.default_rng(seed)
    ids = lambda k: rng.integers(3, VOCAB, size=k).tolist()  # noqa: E731
    return [
        (
            [1] + ids(rng.integers(1, max_prompt)),
            ids(rng.integers(0, max_resp)) + [2],
            ids(rng.integers(0, max_resp)) + [2],
        )
        for _ in range(n)
    ]


def tiny_model(seed: int = 0, *, tie: bool = False, vocab: int = VOCAB):
    """A 2-layer GQA LLaMA with LoRA whose adapters (B too) are random, so gradients are nonzero."""
    cfg = ModelConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.3,  # large enough that attention patterns matter
        tie_word_embeddings=tie,
    )
    model = build_model(cfg, lora=LoraConfig(r=4, alpha=8.0), rngs=seed)
    graphdef, lora, rest = nnx.split(model, LoRAParam, ...)
    leaves, treedef = jax.tree.flatten(lora)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [
        0.2 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)
    ]
    return graphdef, jax.tree.unflatten(treedef, leaves), rest


def settings(grad_accum: int = 1, objective: str = "cpo") -> StepSettings:
    schedule = optax.constant_schedule(1e-3)
    return StepSettings(
        objective=ObjectiveSection(name=objective, beta=0.1, cpo_alpha=1.0),
        grad_accum=grad_accum,
        tx=make_optimizer(schedule, max_grad_norm=1.0),
        schedule=schedule,
    )


def loss_metrics_grads(graphdef, lora, rest, batch, objective="cpo"):
    """(loss, metrics, gradients) of an indexed batch through the train step's objective."""
    st = settings(objective=objective)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}

    def f(trainable):
        return objective_terms(graphdef, trainable, rest, batch, st, global_normalisers(batch))

    (loss, metrics), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(lora)
    return loss, metrics, grads


def plain_loss_metrics_grads_of(graphdef, lora, rest, plain, objective="cpo"):
    """The same of a plain batch, through the plain-layout oracle."""
    return plain_loss_metrics_grads(graphdef, lora, rest, plain, settings(objective=objective))


def assert_trees_close(a, b, *, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_layout_golden():
    plain = plain_batch([([1, 5, 6], [7, 2], [8, 9, 2])])
    b = plain_to_indexed(plain, row_buckets=(8,), label_buckets=(6,))
    np.testing.assert_array_equal(b["input_ids"][0], [1, 5, 6, 7, 2, 8, 9, 2])
    np.testing.assert_array_equal(b["positions"][0], [0, 1, 2, 3, 4, 3, 4, 5])
    np.testing.assert_array_equal(b["role_ids"][0], [0, 0, 0, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(b["attention_mask"][0], [1] * 8)
    np.testing.assert_array_equal(b["label_ids"][0], [7, 2, 8, 9, 2, 0])
    # the rejected response's first token is predicted from the prompt's last token (index 2)
    np.testing.assert_array_equal(b["label_src"][0], [2, 3, 2, 5, 6, 0])
    np.testing.assert_array_equal(b["label_role"][0], [1, 1, 2, 2, 2, 0])
    np.testing.assert_array_equal(b["pair_mask"], [[1.0]])
    # unshared: two groups (segments) in the row, the prompt twice, one pair slot
    u = plain_to_indexed(plain, share_prefix=False, row_buckets=(11,), label_buckets=(6,))
    np.testing.assert_array_equal(u["input_ids"][0], [1, 5, 6, 7, 2, 1, 5, 6, 8, 9, 2])
    np.testing.assert_array_equal(u["positions"][0], [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(u["segment_ids"][0], [1] * 5 + [2] * 6)
    np.testing.assert_array_equal(u["role_ids"][0], [0, 0, 0, 1, 1, 0, 0, 0, 2, 2, 2])
    np.testing.assert_array_equal(u["label_src"][0], [2, 3, 7, 8, 9, 0])
    np.testing.assert_array_equal(u["label_role"][0], [1, 1, 2, 2, 2, 0])
    np.testing.assert_array_equal(u["label_slot"][0], [0] * 6)
    np.testing.assert_array_equal(u["pair_mask"], [[1.0]])


def test_attention_rule_with_model_mask():
    role_BT = jnp.array([[ROLE_PROMPT] * 3 + [ROLE_CHOSEN] * 2 + [ROLE_REJECTED] * 3])
    seg_BT = jnp.ones_like(role_BT)
    allowed = np.asarray(
        build_mask(
            jnp.ones((1, 8), bool), 0, 8, segment_ids_BT=seg_BT, mask_BTS=role_mask_BTS(role_BT)
        ).dense_BTS
    )[0]
    # rejected token 5 sees the prompt and itself, never the chosen tokens 3, 4
    np.testing.assert_array_equal(allowed[5], [1, 1, 1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(allowed[7], [1, 1, 1, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(allowed[4], [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(allowed[1], [1, 1, 0, 0, 0, 0, 0, 0])


def test_logps_match_independent_per_sequence_oracle():
    graphdef, lora, rest = tiny_model(0)
    model = nnx.merge(graphdef, lora, rest)
    rng = np.random.default_rng(1)  # equal lengths: the oracle compiles two shapes only
    triplets = [
        (
            [1] + rng.integers(3, VOCAB, 5).tolist(),
            rng.integers(3, VOCAB, 3).tolist() + [2],
            rng.integers(3, VOCAB, 2).tolist() + [2],
        )
        for _ in range(4)
    ]
    logits_fn = jax.jit(lambda ids: model(ids))

    expect = []
    for role in (1, 2):
        for p, c, r in triplets:
            seq = p + (c if role == 1 else r)
            logits = np.asarray(logits_fn(jnp.asarray([seq])))[0].astype(np.float64)
            logp = (
                logits
                - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
                - logits.max(-1, keepdims=True)
            )
            expect.append(sum(logp[t - 1, seq[t]] for t in range(len(p), len(seq))))
    for share in (True, False):
        indexed = plain_to_indexed(plain_batch(triplets), share_prefix=share)
        batch = {k: jnp.asarray(v) for k, v in indexed.items()}
        logps, ntok, nll_sum, nll_count = response_logprobs(model, batch, vocab_chunk=128)
        np.testing.assert_allclose(np.asarray(logps), expect, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            np.asarray(ntok),
            [len(c) for _, c, _ in triplets] + [len(r) for *_, r in triplets],
            rtol=0,
            atol=0,
        )
        np.testing.assert_allclose(float(nll_sum), -sum(expect[:4]), rtol=1e-5, atol=1e-5)
        assert float(nll_count) == sum(len(c) for _, c, _ in triplets)


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("objective", ["cpo", "dpo", "simpo"])
def test_indexed_equals_plain_losses_rewards_grads(objective, share_prefix):
    graphdef, lora, rest = tiny_model(2)
    triplets = random_triplets(3, 5)
    plain = plain_batch(triplets)
    plain["pair_mask"] = np.array([1, 1, 1, 1, 0], np.float32)  # a padding pair (DESIGN.md):
    plain["loss_mask"][[4, 9]] = 0.0  # no loss tokens either
    shared = plain_to_indexed(plain, share_prefix=share_prefix)
    assert shared["pair_mask"][4, 0] == 0 and shared["label_role"][4].sum() == 0
    loss_p, met_p, g_p = plain_loss_metrics_grads_of(graphdef, lora, rest, plain, objective)
    loss_s, met_s, g_s = loss_metrics_grads(graphdef, lora, rest, shared, objective)
    np.testing.assert_allclose(float(loss_s), float(loss_p), rtol=1e-5, atol=1e-7)
    for name in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "nll_loss",
        "logps/chosen",
    ):
        np.testing.assert_allclose(float(met_s[name]), float(met_p[name]), rtol=1e-5, atol=1e-6)
    acc_s, acc_p = float(met_s["rewards/accuracies"]), float(met_p["rewards/accuracies"])
    # pair 0's chosen and rejected responses are both [EOS]: a margin of exactly 0 in the plain
    # rows (and in a shared row), a rounding-level one either way where the rejected response is
    # a second group of the row: that pair alone may count as accurate
    ties = sum(c == r for (_, c, r), m in zip(triplets, plain["pair_mask"], strict=True) if m)
    assert ties == 1
    assert acc_s == acc_p or (not share_prefix and abs(acc_s - acc_p) == ties / 4)
    gnorm = float(optax.global_norm(g_p))
    assert gnorm > 1e-3  # the comparison is not between zeros
    assert_trees_close(g_s, g_p, rtol=1e-5, atol=1e-5 * gnorm)


def test_rejected_tokens_do_not_change_chosen_logps():
    graphdef, lora, rest = tiny_model(4)
    model = nnx.merge(graphdef, lora, rest)
    trip = [([1, 5, 6, 7], [8, 9, 10, 2], [11, 12, 2]), ([1, 20], [21, 2], [22, 23, 24, 2])]
    a = plain_to_indexed(plain_batch(trip), row_buckets=(32,), label_buckets=(16,))
    other = [(p, c, [(t * 7 + 3) % VOCAB for t in r[:-1]] + [2]) for p, c, r in trip]
    b = plain_to_indexed(plain_batch(other), row_buckets=(32,), label_buckets=(16,))
    la = response_logprobs(model, {k: jnp.asarray(v) for k, v in a.items()})[0]
    lb = response_logprobs(model, {k: jnp.asarray(v) for k, v in b.items()})[0]
    np.testing.assert_allclose(np.asarray(la[:2]), np.asarray(lb[:2]), rtol=1e-6, atol=1e-6)
    assert np.all(np.abs(np.asarray(la[2:]) - np.asarray(lb[2:])) > 1e-3)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_train_step_grad_accum_on_indexed_layout(share_prefix):
    graphdef, lora, rest = tiny_model(6)
    batch = plain_to_indexed(plain_batch(random_triplets(7, 4)), share_prefix=share_prefix)
    step = jax.jit(train_step, static_argnames=("graphdef", "settings"))
    out = {}
    for m in (1, 2):
        st = settings(m)
        state = init_train_state(lora, st.tx)
        new_state, metrics = step(
            graphdef=graphdef, state=state, frozen=rest, batch=batch, settings=st
        )
        out[m] = (new_state.trainable, metrics)
    assert_trees_close(out[2][0], out[1][0], rtol=1e-5, atol=1e-7)
    for k in ("loss", "rewards/chosen", "nll_loss", "grad_norm"):
        np.testing.assert_allclose(float(out[2][1][k]), float(out[1][1][k]), rtol=1e-5, atol=1e-7)


def test_config_switch_resolution():
    assert use_prefix_sharing("auto", "cpo") and use_prefix_sharing("auto", "dpo")
    assert not use_prefix_sharing("auto", "sft")
    assert use_prefix_sharing("on", "sft") and not use_prefix_sharing("off", "cpo")
    with pytest.raises(ValueError, match="prefix_sharing='yes'"):
        use_prefix_sharing("yes", "cpo")


def test_plain_rows_with_different_prompts_are_rejected():
    plain = plain_batch([([1, 5], [6, 2], [7, 2])])
    plain["input_ids"][1, 1] = 9
    with pytest.raises(ValueError, match="pair 0"):
        plain_to_indexed(plain)
