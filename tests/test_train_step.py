"""The pure train step: log-probs against numpy, HF schedules, exact accumulation, LoRA-only
updates, DPO's adapters-off reference, and learning on fixed triplets.

The step takes the indexed layout; the fixed triplets are built in the plain layout and converted
(prefix-shared and unshared rows), the plain layout's full-logits path (tests/plain_oracle.py)
being the oracle."""

import jax
import numpy as np
import optax
import pytest
from plain_oracle import plain_loss_metrics_grads, plain_response_logprobs, to_indexed
from train_fixtures import settings, split, tiny_model, triplet_batch

from almol_jax.train import optimizer as opt_lib
from almol_jax.train import step as step_lib
from almol_jax.train.chunked_logprobs import response_logprobs

STEP = jax.jit(step_lib.train_step, static_argnames=("graphdef", "settings"))


def _log_softmax64(logits):
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def test_response_logprobs_match_numpy():
    model = tiny_model()
    batch = triplet_batch(3)
    logits = model(
        batch["input_ids"],
        attention_mask_BT=batch["attention_mask"],
        positions_BT=batch["positions"],
    )
    lp = _log_softmax64(logits)
    ids, mask = batch["input_ids"], batch["loss_mask"]
    want = np.zeros(6)
    for r in range(6):
        for t in range(1, ids.shape[1]):
            want[r] += mask[r, t] * lp[r, t - 1, ids[r, t]]
    got = {"plain oracle": jax.jit(plain_response_logprobs)(model, batch)}
    for share in (True, False):
        got[f"indexed {share=}"] = jax.jit(response_logprobs)(
            model, to_indexed(batch, share_prefix=share)
        )
    for name, (logps, ntok, nll_sum, nll_count) in got.items():
        np.testing.assert_allclose(np.asarray(logps), want, rtol=1e-5, atol=1e-4, err_msg=name)
        np.testing.assert_array_equal(np.asarray(ntok), mask[:, 1:].sum(1), err_msg=name)
        np.testing.assert_allclose(float(nll_sum), -want[:3].sum(), rtol=1e-5, err_msg=name)
        assert float(nll_count) == mask[:3, 1:].sum(), name


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_matches_transformers(kind):
    torch = pytest.importorskip("torch")
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    total, ratio, peak = 37, 0.1, 5e-5
    warmup = opt_lib.warmup_steps_for(total, ratio)
    assert warmup == 4  # ceil(3.7), as HF TrainingArguments.get_warmup_steps
    sched = opt_lib.make_schedule(peak_lr=peak, total_steps=total, warmup_steps=warmup, kind=kind)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    make = get_linear_schedule_with_warmup if kind == "linear" else get_cosine_schedule_with_warmup
    hf = make(opt, warmup, total)
    want = []
    for _ in range(total):
        want.append(opt.param_groups[0]["lr"])  # lr used by this update
        opt.step()
        hf.step()
    got = [float(sched(i)) for i in range(total)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)


def test_bad_schedule_names_value():
    with pytest.raises(ValueError, match="kind='cosine_x'"):
        opt_lib.make_schedule(peak_lr=1.0, total_steps=3, warmup_steps=0, kind="cosine_x")


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("name", ["cpo", "simpo"])
def test_grad_accum_4x2_equals_one_batch_of_8_and_the_plain_oracle(name, share_prefix):
    """SGD(lr=1) makes the parameter change equal to minus the gradient: compare gradients."""
    model = tiny_model()
    graphdef, trainable, frozen = split(model, lora=False)
    plain = triplet_batch(8, seed=1)
    plain["pair_mask"][5] = 0.0  # a padding pair: the global normalisers must skip it
    plain["loss_mask"][5] = 0.0
    plain["loss_mask"][8 + 5] = 0.0
    batch = to_indexed(plain, share_prefix=share_prefix)
    out = {}
    for accum in (1, 4):
        s = settings(name=name, grad_accum=accum, tx=optax.sgd(1.0))
        state = step_lib.init_train_state(trainable, s.tx)
        new, metrics = STEP(graphdef, state, frozen, batch, s)
        grads = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), trainable, new.trainable)
        out[accum] = (grads, {k: float(v) for k, v in metrics.items()})
    g1, m1 = out[1]
    g4, m4 = out[4]
    assert m1.keys() == m4.keys()
    for key in m1:
        np.testing.assert_allclose(m4[key], m1[key], rtol=1e-5, atol=1e-6, err_msg=key)
    flat1, flat4 = jax.tree.leaves(g1), jax.tree.leaves(g4)
    scale = max(np.abs(g).max() for g in flat1)
    assert scale > 0
    for a, b in zip(flat1, flat4, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * scale)
    # the plain layout (full logits, two rows per pair) gives the same step
    _, m_plain, g_plain = plain_loss_metrics_grads(
        graphdef, trainable, frozen, plain, settings(name=name)
    )
    for key, value in m_plain.items():
        np.testing.assert_allclose(m1[key], float(value), rtol=1e-5, atol=1e-6, err_msg=key)
    for a, b in zip(jax.tree.leaves(g_plain), flat1, strict=True):
        np.testing.assert_allclose(b, np.asarray(a), rtol=1e-4, atol=1e-6 * scale)


def test_micro_batches_are_strided_and_keep_rows_whole():
    batch = {
        "input_ids": np.arange(16, dtype=np.int32).reshape(8, 2),
        "pair_mask": np.arange(8, dtype=np.float32)[:, None],
    }
    micro = step_lib.split_micro_batches(batch, 4)
    assert micro["input_ids"].shape == (4, 2, 2)
    # micro 1 holds rows 1 and 5 (each row holds whole pairs)
    np.testing.assert_array_equal(np.asarray(micro["input_ids"][1]), [[2, 3], [10, 11]])
    np.testing.assert_array_equal(np.asarray(micro["pair_mask"][1, :, 0]), [1, 5])
    with pytest.raises(ValueError, match="grad_accum=3"):
        step_lib.split_micro_batches(batch, 3)


def test_lora_updates_only_adapters_and_dpo_reference_is_adapters_off():
    model = tiny_model(lora=True)
    graphdef, trainable, frozen = split(model, lora=True)
    names = {"/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(trainable)[0]}
    assert names and all("lora_" in n for n in names)
    frozen_before = jax.tree.map(np.asarray, frozen)
    s = settings(name="dpo", lr=1e-2)
    state = step_lib.init_train_state(trainable, s.tx)
    batch = to_indexed(triplet_batch(4))
    state, m0 = STEP(graphdef, state, frozen, batch, s)
    # B = 0 at init: the policy IS the reference, so every DPO reward is 0 (up to the rounding
    # of two differently fused forward passes) and the preference loss is log 2.
    np.testing.assert_allclose(float(m0["rewards/chosen"]), 0.0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(float(m0["rewards/rejected"]), 0.0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(float(m0["loss"]) - float(m0["nll_loss"]), np.log(2), rtol=1e-5)
    for _ in range(3):
        state, m = STEP(graphdef, state, frozen, batch, s)
    assert float(m["rewards/margins"]) > 0.0
    jax.tree.map(np.testing.assert_array_equal, frozen_before, jax.tree.map(np.asarray, frozen))


def test_thirty_cpo_steps_learn_the_preference():
    """Measured (CPU): loss 6.25 -> 0.49, margin 0.025 -> 7.9, accuracy 0.875 -> 1.0."""
    model = tiny_model()
    graphdef, trainable, frozen = split(model, lora=False)
    s = settings(name="cpo", lr=3e-3, steps=30, grad_accum=2)
    state = step_lib.init_train_state(trainable, s.tx)
    batch = to_indexed(triplet_batch(8, seed=3))
    history = []
    for _ in range(30):
        state, metrics = STEP(graphdef, state, frozen, batch, s)
        history.append({k: float(v) for k, v in metrics.items()})
    first, last = history[0], history[-1]
    assert int(state.step) == 30
    assert first["loss"] > 6.0 and last["loss"] < 1.5
    assert abs(first["rewards/margins"]) < 0.2 and last["rewards/margins"] > 5.0
    assert first["rewards/accuracies"] < 1.0 and last["rewards/accuracies"] == 1.0


def test_remat_full_gives_the_same_step():
    batch = to_indexed(triplet_batch(4))
    out = []
    for remat in ("none", "full"):
        graphdef, trainable, frozen = split(tiny_model(lora=True, remat=remat), lora=True)
        s = settings(grad_accum=2, tx=optax.sgd(1.0))  # parameter change = -gradient
        new, metrics = STEP(graphdef, step_lib.init_train_state(trainable, s.tx), frozen, batch, s)
        grads = jax.tree.map(lambda a, b: np.asarray(b) - np.asarray(a), trainable, new.trainable)
        out.append((jax.tree.leaves(grads), float(metrics["loss"])))
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-6)
    scale = max(np.abs(g).max() for g in out[0][0])
    for a, b in zip(out[0][0], out[1][0], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * scale)
