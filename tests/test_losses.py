"""Objectives checked against hand computations, TRL's own cpo_loss, and exact accumulation."""

import math
import types

import jax.numpy as jnp
import numpy as np
import pytest

from almol_jax.config.sections import ObjectiveSection
from almol_jax.train.losses import METRIC_NAMES, get_loss_fn, loss_fn, pair_losses

# Two real pairs and one padding pair (whose numbers must not matter).
CHOSEN = np.array([-10.0, -20.0, -99.0], np.float32)
REJECTED = np.array([-12.0, -15.0, 7.0], np.float32)
NTOK_W = np.array([5.0, 8.0, 0.0], np.float32)
NTOK_L = np.array([4.0, 10.0, 0.0], np.float32)
MASK = np.array([1.0, 1.0, 0.0], np.float32)
NLL_SUM, NLL_COUNT = 30.0, 13.0  # chosen response tokens of the real pairs: 5 + 8


def run(name, ref=None, **kw):
    cfg = ObjectiveSection(name=name, **kw)
    refs = (None, None) if ref is None else ref
    loss, metrics = loss_fn(CHOSEN, REJECTED, NTOK_W, NTOK_L, NLL_SUM, NLL_COUNT, MASK, cfg, *refs)
    assert set(metrics) == set(METRIC_NAMES)
    np.testing.assert_allclose(float(loss), float(metrics["loss"]), rtol=0, atol=0)
    return {k: float(v) for k, v in metrics.items()}


def softplus(x):
    return math.log1p(math.exp(x))


def test_cpo_sigmoid_golden_numbers():
    m = run("cpo", beta=0.1, cpo_alpha=1.0)
    # d = [2, -5]: -log sigmoid(0.2) = log(1 + e^-0.2), -log sigmoid(-0.5) = log(1 + e^0.5)
    pref = (0.5981388693 + 0.9740769842) / 2
    nll = 30.0 / 13.0
    np.testing.assert_allclose(m["loss"], pref + nll, rtol=1e-6, atol=0)
    np.testing.assert_allclose(m["nll_loss"], nll, rtol=1e-6, atol=0)
    np.testing.assert_allclose(m["rewards/chosen"], 0.1 * (-10 - 20) / 2, rtol=1e-6, atol=0)
    np.testing.assert_allclose(m["rewards/rejected"], 0.1 * (-12 - 15) / 2, rtol=1e-6, atol=0)
    np.testing.assert_allclose(m["rewards/margins"], 0.1 * (2 - 5) / 2, rtol=1e-6, atol=0)
    np.testing.assert_allclose(m["rewards/accuracies"], 0.5, rtol=0, atol=0)
    np.testing.assert_allclose(m["logps/chosen"], -15.0, rtol=1e-6, atol=0)  # SUMMED
    np.testing.assert_allclose(m["logps/rejected"], -13.5, rtol=1e-6, atol=0)


def test_cpo_alpha_weights_only_the_nll_term():
    base = run("cpo", cpo_alpha=0.0)
    half = run("cpo", cpo_alpha=0.5)
    np.testing.assert_allclose(half["loss"] - base["loss"], 0.5 * 30 / 13, rtol=1e-5, atol=0)
    np.testing.assert_allclose(base["nll_loss"], 30 / 13, rtol=1e-6, atol=0)


def test_label_smoothing():
    m = run("cpo", beta=0.1, cpo_alpha=0.0, label_smoothing=0.2)
    want = np.mean(
        [0.8 * softplus(-0.2) + 0.2 * softplus(0.2), 0.8 * softplus(0.5) + 0.2 * softplus(-0.5)]
    )
    np.testing.assert_allclose(m["loss"], want, rtol=1e-6, atol=0)


def test_hinge_uses_summed_logps():
    m = run("hinge", beta=0.1, cpo_alpha=0.0)
    np.testing.assert_allclose(m["loss"], (0.8 + 1.5) / 2, rtol=1e-6, atol=0)
    np.testing.assert_allclose(m["logps/chosen"], -15.0, rtol=1e-6, atol=0)


def test_ipo_uses_averaged_logps():
    m = run("ipo", beta=0.1, cpo_alpha=0.0)
    # averaged: chosen [-2, -2.5], rejected [-3, -1.5]; d = [1, -1]; (d - 5)^2 = [16, 36]
    np.testing.assert_allclose(m["loss"], 26.0, rtol=1e-6, atol=0)
    np.testing.assert_allclose(m["logps/chosen"], -2.25, rtol=1e-6, atol=0)
    np.testing.assert_allclose(m["logps/rejected"], -2.25, rtol=1e-6, atol=0)
    np.testing.assert_allclose(m["rewards/chosen"], -0.225, rtol=1e-5, atol=0)
    np.testing.assert_allclose(m["rewards/accuracies"], 0.5, rtol=0, atol=0)


def test_simpo_uses_averaged_logps_and_gamma():
    m = run("simpo", beta=2.0, simpo_gamma=0.5, cpo_alpha=1.0)
    # d = [1, -1]; -log sigmoid(2 d - 0.5) = softplus(-(2 d - 0.5))
    want = (softplus(-1.5) + softplus(2.5)) / 2 + 30 / 13
    np.testing.assert_allclose(m["loss"], want, rtol=1e-6, atol=0)


def test_dpo_with_reference_logps():
    ref_w = np.array([-11.0, -18.0, 0.0], np.float32)
    ref_l = np.array([-11.0, -16.0, 0.0], np.float32)
    m = run("dpo", ref=(ref_w, ref_l), beta=0.5, cpo_alpha=0.0)
    # logratios: chosen [1, -2], rejected [-1, 1]; d = [2, -3]
    np.testing.assert_allclose(m["loss"], (softplus(-1.0) + softplus(1.5)) / 2, rtol=1e-6, atol=0)
    np.testing.assert_allclose(m["rewards/chosen"], 0.5 * (1 - 2) / 2, rtol=1e-6, atol=0)
    np.testing.assert_allclose(m["rewards/rejected"], 0.5 * (-1 + 1) / 2, rtol=1e-6, atol=0)
    np.testing.assert_allclose(m["rewards/accuracies"], 0.5, rtol=0, atol=0)
    np.testing.assert_allclose(m["logps/chosen"], -15.0, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="ref_chosen"):
        run("dpo")


def test_sft_is_the_token_mean_nll():
    m = run("sft", cpo_alpha=0.0)
    np.testing.assert_allclose(m["loss"], 30 / 13, rtol=1e-6, atol=0)


def test_unknown_objective_names_it():
    with pytest.raises(ValueError, match="'orpo'"):
        pair_losses("orpo", jnp.zeros(2), jnp.zeros(2), beta=0.1)
    with pytest.raises(ValueError, match="'orpo'"):
        get_loss_fn(types.SimpleNamespace(name="orpo"))


@pytest.mark.parametrize("name", ["cpo", "hinge", "ipo", "simpo", "dpo", "sft"])
def test_micro_batch_sums_equal_the_full_batch(name):
    """Gradient accumulation contract: global normalisers make every output additive."""
    rng = np.random.default_rng(0)
    b = 8
    cw, cl = -rng.uniform(1, 40, b), -rng.uniform(1, 40, b)
    nw, nl = rng.integers(1, 20, b).astype(np.float64), rng.integers(1, 20, b).astype(np.float64)
    rw, rl = -rng.uniform(1, 40, b), -rng.uniform(1, 40, b)
    mask = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
    nll_tok = rng.uniform(0.5, 3.0, b) * nw  # per-pair NLL sums
    cfg = ObjectiveSection(name=name, beta=0.3, cpo_alpha=0.7, label_smoothing=0.1)

    def call(sl, **kw):
        return loss_fn(
            cw[sl],
            cl[sl],
            nw[sl],
            nl[sl],
            np.sum(nll_tok[sl] * mask[sl]),
            np.sum(nw[sl] * mask[sl]),
            mask[sl],
            cfg,
            rw[sl],
            rl[sl],
            **kw,
        )

    full_loss, full = call(slice(0, b))
    total_pairs, total_tok = mask.sum(), np.sum(nw * mask)
    parts = [
        call(slice(i, i + 2), num_pairs=total_pairs, nll_denominator=total_tok)
        for i in range(0, b, 2)
    ]
    np.testing.assert_allclose(
        sum(float(p[0]) for p in parts), float(full_loss), rtol=1e-5, atol=1e-6
    )
    for key in METRIC_NAMES:
        got = sum(float(p[1][key]) for p in parts)
        np.testing.assert_allclose(got, float(full[key]), rtol=1e-5, atol=1e-6, err_msg=key)


def test_parity_with_trl_cpo_loss():
    """Our per-pair losses and rewards equal TRL CPOTrainer.cpo_loss for its four loss types."""
    torch = pytest.importorskip(
        "torch", reason="torch is a test-only dependency (requirements-dev.txt), not installed here"
    )
    cpo = pytest.importorskip(
        "trl.experimental.cpo.cpo_trainer",
        reason="trl is a test-only dependency (requirements-dev.txt), not installed here",
    )
    rng = np.random.default_rng(1)
    w_B, l_B = (
        -rng.uniform(0, 30, 16).astype(np.float32),
        -rng.uniform(0, 30, 16).astype(np.float32),
    )
    ours_name = {"sigmoid": "cpo", "hinge": "hinge", "ipo": "ipo", "simpo": "simpo"}
    for loss_type, name in ours_name.items():
        fake = types.SimpleNamespace(
            alpha=0.0,
            beta=0.2,
            loss_type=loss_type,
            label_smoothing=0.1,
            simpo_gamma=0.7,
            accelerator=types.SimpleNamespace(device="cpu"),
        )
        want = cpo.CPOTrainer.cpo_loss(fake, torch.tensor(w_B), torch.tensor(l_B))
        got = pair_losses(name, w_B, l_B, beta=0.2, label_smoothing=0.1, simpo_gamma=0.7)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(
                np.asarray(a), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=loss_type
            )


def test_gradients_by_hand_and_padding_pairs_get_none():
    """d loss / d s_w = -beta sigmoid(-beta d) / N for CPO; padding pairs get exactly zero."""
    import jax

    cfg = ObjectiveSection(name="cpo", beta=0.1, cpo_alpha=1.0)

    def f(w, r):
        return loss_fn(w, r, NTOK_W, NTOK_L, NLL_SUM, NLL_COUNT, MASK, cfg)[0]

    g_w, g_l = jax.jit(jax.grad(f, argnums=(0, 1)))(CHOSEN, REJECTED)
    sig = lambda x: 1 / (1 + math.exp(-x))
    want_w = [-0.1 * sig(-0.2) / 2, -0.1 * sig(0.5) / 2, 0.0]
    np.testing.assert_allclose(np.asarray(g_w), want_w, rtol=1e-5, atol=0)
    np.testing.assert_allclose(np.asarray(g_l), [-x for x in want_w], rtol=1e-5, atol=0)


def test_jit_with_the_config_as_static_argument():
    import jax

    cfg = ObjectiveSection(name="simpo", beta=2.0)
    jitted = jax.jit(loss_fn, static_argnames=("cfg",))
    loss, metrics = jitted(CHOSEN, REJECTED, NTOK_W, NTOK_L, NLL_SUM, NLL_COUNT, MASK, cfg=cfg)
    want, _ = loss_fn(CHOSEN, REJECTED, NTOK_W, NTOK_L, NLL_SUM, NLL_COUNT, MASK, cfg)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6, atol=0)
    assert all(v.dtype == jnp.float32 for v in metrics.values())
