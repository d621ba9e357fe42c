"""Preference objectives (CPO and relatives, DPO, SFT) as pure functions of sequence log-probs.

Inputs per pair b (B pairs, padding pairs have pair_mask 0):
  chosen_logps_sum[B], rejected_logps_sum[B]  summed log p(token | prefix) over response tokens
  chosen_ntok[B], rejected_ntok[B]            number of response tokens (EOS included)
  nll_sum                                     sum of -log p over ALL chosen response tokens
  nll_count                                   number of those tokens
  pair_mask[B]                                1 for real pairs, 0 for padding pairs
  ref_chosen[B], ref_rejected[B]              DPO only: summed log-probs of the reference
                                              (the same network with the adapters off)

Conventions (TRL CPOTrainer / DPOTrainer, ALMOL.md), with d = s(y_w) - s(y_l):
  cpo    -log sigmoid(beta d) (1 - ls) - log sigmoid(-beta d) ls        s = SUMMED log-probs
  hinge  relu(1 - beta d)                                               s = summed
  ipo    (d - 1 / (2 beta))^2                                           s = AVERAGED log-probs
  simpo  -log sigmoid(beta d - gamma) (1 - ls) - log sigmoid(-(beta d - gamma)) ls   s = averaged
  dpo    cpo's formula with d = (s_w - ref_w) - (s_l - ref_l)           s = summed
  sft    no preference term (loss = NLL only)
  loss = sum_b pair_mask_b * pref_b / num_pairs + cpo_alpha * nll_sum / nll_denominator
  (sft: cpo_alpha is ignored and the NLL weight is 1.)
  rewards/chosen = beta * s(y_w) (dpo: beta * (s_w - ref_w)), rewards/rejected likewise,
  rewards/accuracies = mean[rewards/chosen > rewards/rejected], rewards/margins = mean difference,
  logps/chosen|rejected = mean s (summed or averaged as the objective uses), nll_loss = the NLL term.
  Like TRL, nll_loss is the token-level mean over every chosen response token of the batch; unlike
  TRL (which logs 0), nll_loss is reported even when cpo_alpha is 0.

Gradient accumulation (the train step's lax.scan over micro-batches): pass the GLOBAL normalisers
``num_pairs`` (real pairs in the optimizer step) and ``nll_denominator`` (chosen response tokens in
the optimizer step). Every returned value is then a sum of per-micro-batch parts, so summing the
(loss, metrics) of the micro-batches equals the full-batch result exactly, metrics included.
Without them, the micro-batch's own totals are used (a plain full-batch call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from almol_jax.objectives import OBJECTIVES

METRIC_NAMES = (
    "loss",
    "nll_loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)
AVERAGED = ("ipo", "simpo")  # objectives that use per-token averaged log-probs
NEEDS_REFERENCE = ("dpo",)


def _f32(x: Any) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.float32)


def _sigmoid_loss(logits_B: jax.Array, label_smoothing: float) -> jax.Array:
    """Conservative (label-smoothed) -log sigmoid, as TRL's sigmoid losses."""
    return (
        -jax.nn.log_sigmoid(logits_B) * (1.0 - label_smoothing)
        - jax.nn.log_sigmoid(-logits_B) * label_smoothing
    )


def sequence_logps(name: str, logps_sum_B: jax.Array, ntok_B: jax.Array) -> jax.Array:
    """The per-sequence score the objective uses: summed, or averaged for ipo/simpo."""
    logps_sum_B = _f32(logps_sum_B)
    if name in AVERAGED:
        return logps_sum_B / jnp.maximum(_f32(ntok_B), 1.0)
    return logps_sum_B


def pair_losses(
    name: str,
    chosen_B: jax.Array,
    rejected_B: jax.Array,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    ref_chosen_B: jax.Array | None = None,
    ref_rejected_B: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-pair preference loss and the chosen/rejected rewards, from per-sequence scores.

    ``chosen_B``/``rejected_B`` are already summed or averaged (see ``sequence_logps``).
    Returns (loss_B, chosen_rewards_B, rejected_rewards_B); sft's loss_B is zero.
    """
    chosen_B, rejected_B = _f32(chosen_B), _f32(rejected_B)
    if name in NEEDS_REFERENCE:
        if ref_chosen_B is None or ref_rejected_B is None:
            raise ValueError(f"objective {name!r} needs ref_chosen and ref_rejected log-probs")
        chosen_B = chosen_B - _f32(ref_chosen_B)
        rejected_B = rejected_B - _f32(ref_rejected_B)
    d_B = chosen_B - rejected_B
    if name in ("cpo", "dpo"):
        loss_B = _sigmoid_loss(beta * d_B, label_smoothing)
    elif name == "simpo":
        loss_B = _sigmoid_loss(beta * d_B - simpo_gamma, label_smoothing)
    elif name == "hinge":
        loss_B = jax.nn.relu(1.0 - beta * d_B)
    elif name == "ipo":
        loss_B = (d_B - 1.0 / (2.0 * beta)) ** 2
    elif name == "sft":
        loss_B = jnp.zeros_like(d_B)
    else:
        raise ValueError(f"unknown objective {name!r}; expected cpo, sft, dpo, ipo, simpo or hinge")
    return loss_B, beta * chosen_B, beta * rejected_B


def loss_fn(
    chosen_logps_sum: jax.Array,
    rejected_logps_sum: jax.Array,
    chosen_ntok: jax.Array,
    rejected_ntok: jax.Array,
    nll_sum: jax.Array,
    nll_count: jax.Array,
    pair_mask: jax.Array,
    cfg: Any,
    ref_chosen: jax.Array | None = None,
    ref_rejected: jax.Array | None = None,
    *,
    num_pairs: jax.Array | float | None = None,
    nll_denominator: jax.Array | float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of one batch for the objective ``cfg`` (an ObjectiveSection).

    ``cfg`` needs: name, beta, cpo_alpha, label_smoothing, simpo_gamma. See the module docstring
    for the formulas and for ``num_pairs`` / ``nll_denominator`` (gradient accumulation).
    """
    name = cfg.name
    mask_B = _f32(pair_mask)
    if num_pairs is None:
        num_pairs = jnp.sum(mask_B)
    if nll_denominator is None:
        nll_denominator = nll_count
    n_pairs = jnp.maximum(_f32(num_pairs), 1.0)
    n_tok = jnp.maximum(_f32(nll_denominator), 1.0)

    chosen_B = sequence_logps(name, chosen_logps_sum, chosen_ntok)
    rejected_B = sequence_logps(name, rejected_logps_sum, rejected_ntok)
    loss_B, reward_w_B, reward_l_B = pair_losses(
        name,
        chosen_B,
        rejected_B,
        beta=cfg.beta,
        label_smoothing=cfg.label_smoothing,
        simpo_gamma=cfg.simpo_gamma,
        ref_chosen_B=ref_chosen,
        ref_rejected_B=ref_rejected,
    )

    def mean(x_B: jax.Array) -> jax.Array:
        # where(), not a product, so a padding pair's inf/nan never leaks into the sum.
        return jnp.sum(jnp.where(mask_B > 0, x_B, 0.0) * mask_B) / n_pairs

    nll = _f32(nll_sum) / n_tok
    nll_weight = 1.0 if name == "sft" else cfg.cpo_alpha
    loss = mean(loss_B) + nll_weight * nll
    metrics = {
        "loss": loss,
        "nll_loss": nll,
        "rewards/chosen": mean(reward_w_B),
        "rewards/rejected": mean(reward_l_B),
        "rewards/accuracies": mean((reward_w_B > reward_l_B).astype(jnp.float32)),
        "rewards/margins": mean(reward_w_B - reward_l_B),
        "logps/chosen": mean(chosen_B),
        "logps/rejected": mean(rejected_B),
    }
    return loss, metrics


def needs_reference(cfg: Any) -> bool:
    """Whether the objective needs reference log-probs (adapters-off forward pass)."""
    return cfg.name in NEEDS_REFERENCE


def get_loss_fn(cfg: Any) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    """The loss function for ``cfg.name`` (all objectives share ``loss_fn``); checks the name."""
    if cfg.name not in OBJECTIVES:
        raise ValueError(f"unknown objective {cfg.name!r}; expected one of {OBJECTIVES}")
    return loss_fn
