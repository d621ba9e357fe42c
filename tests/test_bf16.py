"""A bf16 base with fp32 adapters (the recipe's numerics) against the same model in fp32.

The bf16 model is the fp32 one with its base weights rounded to bf16 (same seeded draws), bf16
compute, and the same fp32 adapters (A and B both random, so every adapter gets a gradient).
Tolerances come from bf16's machine epsilon eps = 2^-7 (unit roundoff u = eps / 2): every stored
weight and every activation is rounded once per operation to within u relative; a value of the
tiny 2-layer model passes through about 16 such roundings (embedding, 2 x (norm, 4 projections
and attention, norm, 3 MLP products), final norm, head), so forward values (logits, loss,
log-probs) may differ by up to 16 u = 8 eps relative to their scale; gradients, which pass the
chain twice, by 16 eps in norm. After 5 AdamW steps the adapters' change (5 lr at most per
element) is compared as the test states (Adam's per-element normalisation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from plain_oracle import to_indexed
from train_fixtures import settings, split, tiny_model, triplet_batch

from almol_jax.generation.kv_steps import prefill, step
from almol_jax.model.lora import LoRAParam
from almol_jax.train import step as step_lib

EPS = 2.0**-7  # bf16 machine epsilon
FORWARD_TOL = 8 * EPS  # 16 roundings of u = eps / 2
GRAD_TOL = 16 * EPS
STEP = jax.jit(step_lib.train_step, static_argnames=("graphdef", "settings"))


def _pair():
    """(fp32 model, bf16-base model) with the same random fp32 adapters."""
    fp32 = tiny_model(lora=True, seed=0)
    bf16 = tiny_model(lora=True, seed=0, dtype="bfloat16", param_dtype="bfloat16")
    adapters = nnx.state(fp32, LoRAParam)
    leaves, treedef = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    fresh = [
        0.1 * jax.random.normal(k, x.shape, jnp.float32) for k, x in zip(keys, leaves, strict=True)
    ]
    for model in (fp32, bf16):
        nnx.update(model, jax.tree.unflatten(treedef, fresh))
    return fp32, bf16


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_bf16_model_is_the_rounded_fp32_model_with_fp32_adapters():
    fp32, bf16 = _pair()
    base32 = nnx.state(fp32, nnx.Param)
    base16 = nnx.state(bf16, nnx.Param)
    for a, b in zip(jax.tree.leaves(base32), jax.tree.leaves(base16), strict=True):
        assert b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a.astype(jnp.bfloat16)), np.asarray(b))
    for a, b in zip(
        jax.tree.leaves(nnx.state(fp32, LoRAParam)),
        jax.tree.leaves(nnx.state(bf16, LoRAParam)),
        strict=True,
    ):
        assert b.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_bf16_step_loss_grads_and_five_steps_against_fp32():
    fp32, bf16 = _pair()
    batch = to_indexed(triplet_batch(4, seed=2), share_prefix=True)
    grads, metrics, after = {}, {}, {}
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        graphdef, trainable, frozen = split(model, lora=True)
        sgd = settings(tx=optax.sgd(1.0))  # the change of one SGD(1) step = minus the gradient
        state = step_lib.init_train_state(trainable, sgd.tx)
        new, m = STEP(graphdef, state, frozen, batch, sgd)
        grads[name] = jax.tree.map(
            lambda a, b: np.asarray(a) - np.asarray(b), trainable, new.trainable
        )
        metrics[name] = {k: float(v) for k, v in m.items()}
        adam = settings(lr=1e-2, steps=5)
        state = step_lib.init_train_state(trainable, adam.tx)
        for _ in range(5):  # five steps of the loop's optimizer (AdamW, clipping)
            state, _ = STEP(graphdef, state, frozen, batch, adam)
        after[name] = jax.tree.map(np.asarray, state.trainable)
    m32, m16 = metrics["fp32"], metrics["bf16"]
    for key in ("loss", "nll_loss", "logps/chosen", "logps/rejected"):
        assert abs(m16[key] - m32[key]) <= FORWARD_TOL * abs(m32[key]), key
    g32, g16 = jax.tree.leaves(grads["fp32"]), jax.tree.leaves(grads["bf16"])
    assert all(g.dtype == np.float32 for g in g16)  # fp32 adapter gradients
    flat32, flat16 = (
        np.concatenate([g.ravel() for g in g32]),
        np.concatenate([g.ravel() for g in g16]),
    )
    assert np.linalg.norm(flat32) > 0
    assert _rel(flat16, flat32) <= GRAD_TOL
    start = jax.tree.leaves(split(fp32, lora=True)[1])
    moved32 = np.concatenate(
        [
            (a - np.asarray(s)).ravel()
            for a, s in zip(jax.tree.leaves(after["fp32"]), start, strict=True)
        ]
    )
    moved16 = np.concatenate(
        [
            (a - np.asarray(s)).ravel()
            for a, s in zip(jax.tree.leaves(after["bf16"]), start, strict=True)
        ]
    )
    assert np.abs(moved32).max() > 1e-2  # five steps of lr 1e-2 moved them
    # Adam divides each element's step by its own gradient scale, so the gradient noise above
    # (<= 16 eps) flips the step of elements whose gradient is that close to zero: the moves
    # differ by ~13% in norm here, but point the same way, and the adapters themselves (the
    # moves are about a third of their size) stay within 8 eps in norm.
    cos = moved16 @ moved32 / (np.linalg.norm(moved16) * np.linalg.norm(moved32))
    assert cos >= 1 - GRAD_TOL
    final32 = np.concatenate([a.ravel() for a in jax.tree.leaves(after["fp32"])])
    final16 = np.concatenate([a.ravel() for a in jax.tree.leaves(after["bf16"])])
    print(
        "BF16",
        _rel(flat16, flat32),
        _rel(moved16, moved32),
        cos,
        _rel(final16, final32),
        [abs(m16[k] - m32[k]) / abs(m32[k]) for k in ("loss", "nll_loss", "logps/chosen")],
    )
    assert _rel(final16, final32) <= FORWARD_TOL


def test_bf16_decoding_logits_against_fp32():
    """Prefill and three cached steps: bf16 logits within 8 eps of the fp32 logits' scale."""
    fp32, bf16 = _pair()
    ids = jnp.asarray(np.random.default_rng(0).integers(4, 260, (2, 12)), jnp.int32)
    mask = jnp.ones_like(ids)
    run = nnx.jit(_decode_logits)
    l32, l16 = np.asarray(run(fp32, ids, mask)), np.asarray(run(bf16, ids, mask))
    assert l16.dtype == np.float32 and l16.shape == l32.shape == (4, 2, 260)
    assert np.abs(l16 - l32).max() <= FORWARD_TOL * np.abs(l32).max()
    assert (l16.argmax(-1) == l32.argmax(-1)).mean() >= 0.75  # greedy mostly agrees


def _decode_logits(model, ids, mask):
    logits, cache, lengths = prefill(model, ids, mask, ids.shape[1] + 3)
    out = [logits]
    token = jnp.argmax(logits, -1).astype(jnp.int32)
    for i in range(3):
        logits, cache = step(model, token, lengths + i, cache)
        out.append(logits)
        token = jnp.argmax(logits, -1).astype(jnp.int32)
    return jnp.stack(out)
