"""The pure, jitted train and eval steps: module-level functions of (graphdef, state, frozen, batch).

`train_step` runs chosen and rejected rows in one forward pass, accumulates gradients over
`grad_accum` micro-batches with `lax.scan`, applies optax AdamW to the trainable variables only
(LoRA adapters when LoRA is on, every nnx.Param otherwise) and returns the new state and float32
metrics. Losses and metrics are weighted sums over micro-batches with the GLOBAL normalisers
(number of real pairs, number of chosen response tokens), so accumulating 4 micro-batches of 2 pairs
equals one batch of 8 pairs (docs/DESIGN.md, losses contract).

Micro-batch m holds the pairs m, m+M, m+2M, ... (strided), so that when each micro-batch is
divisible by the data-parallel size, every device keeps its own rows (no resharding).

DPO's reference is the same network with the LoRAParam state replaced by zeros, under
stop_gradient; no base weights are copied.

Randomness (LoRA dropout) is a pure function of the step: every nnx.RngKey in the frozen state is
folded with (step, micro-batch index), so a resumed run draws the same masks as an uninterrupted
one without storing RNG counters. Evaluation runs a deterministic view of the model.

`build_train_step` / `build_eval_step` jit these once, with explicit in/out shardings, the train
state donated and (graphdef, settings) static by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from almol_jax.cpu import runtime
from almol_jax.train import chunked_logprobs as indexed
from almol_jax.train import losses
from almol_jax.train.logprobs import response_logprobs


@struct.dataclass
class TrainState:
    """Everything a train step updates: trainable variables, optimizer state, step counter."""

    trainable: Any  # nnx.State of the trainable variables (fp32)
    opt_state: Any  # optax state over `trainable`
    step: jax.Array  # int32 scalar: optimizer updates done so far


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Static (hashable) settings of the step: objective, accumulation, optimizer, schedule."""

    objective: Any  # config ObjectiveSection (frozen dataclass)
    grad_accum: int
    tx: optax.GradientTransformation
    schedule: Any  # optax schedule, for the lr metric


def _pair_mask(batch) -> jax.Array:
    if indexed.is_indexed_batch(batch):  # prefix-shared / packed layout (issue 8)
        return indexed.indexed_pair_mask(batch)
    num_pairs = batch["input_ids"].shape[0] // 2
    if "pair_mask" in batch:
        return batch["pair_mask"].astype(jnp.float32)
    return jnp.ones((num_pairs,), jnp.float32)


def global_normalisers(batch) -> tuple[jax.Array, jax.Array]:
    """(number of real pairs, number of chosen response tokens) of a whole (global) batch."""
    pairs = jnp.sum(_pair_mask(batch))
    if indexed.is_indexed_batch(batch):
        nll_tokens = indexed.indexed_nll_tokens(batch)
    else:
        num_pairs = batch["input_ids"].shape[0] // 2
        nll_tokens = jnp.sum(batch["loss_mask"][:num_pairs, 1:].astype(jnp.float32))
    return jnp.maximum(pairs, 1.0), jnp.maximum(nll_tokens, 1.0)


def split_micro_batches(batch, num_micro: int):
    """Global batch (2B rows) -> stacked micro-batches [M, 2B/M, ...]; micro m = pairs m::M."""
    if indexed.is_indexed_batch(batch):  # rows hold whole pairs: split rows m::M
        return indexed.split_indexed_micro_batches(batch, num_micro)
    num_pairs = batch["input_ids"].shape[0] // 2
    if num_pairs % num_micro:
        raise ValueError(
            f"{num_pairs=} pairs do not split into grad_accum={num_micro} micro-batches"
        )
    per = num_pairs // num_micro

    def rows(x):  # [B, ...] -> [M, B/M, ...] with micro m = rows m, m+M, ...
        return jnp.swapaxes(x.reshape((per, num_micro) + x.shape[1:]), 0, 1)

    out = {}
    for key, value in batch.items():
        if key == "pair_mask":
            out[key] = rows(value)
        else:
            out[key] = jnp.concatenate([rows(value[:num_pairs]), rows(value[num_pairs:])], axis=1)
    if "pair_mask" not in out:
        out["pair_mask"] = jnp.ones((num_micro, per), jnp.float32)
    return out


def fold_rng_keys(frozen, *data):
    """`frozen` with every nnx.RngKey folded with the integers `data` (step, micro index)."""

    def fold(var):
        if isinstance(var, nnx.RngKey):
            key = var.get_value()
            for d in data:
                key = jax.random.fold_in(key, d)
            return var.replace(value=key)
        return var

    return jax.tree.map(fold, frozen, is_leaf=lambda x: isinstance(x, nnx.Variable))


def objective_terms(
    graphdef, trainable, frozen, batch, settings: StepSettings, normalisers, deterministic=False
):
    """(loss, metrics) of one (micro-)batch, means taken with the given global normalisers."""
    model = nnx.merge(graphdef, trainable, frozen)
    if deterministic:
        model = nnx.view(model, deterministic=True, raise_if_not_found=False)
    logps_B, ntok_B, nll_sum, nll_count = response_logprobs(model, batch)
    num_pairs = logps_B.shape[0] // 2  # plain: 2B rows; indexed: rows x pair slots
    args = (
        logps_B[:num_pairs],
        logps_B[num_pairs:],
        ntok_B[:num_pairs],
        ntok_B[num_pairs:],
        nll_sum,
        nll_count,
        _pair_mask(batch),
        settings.objective,
    )
    if losses.needs_reference(settings.objective):
        ref_trainable = jax.tree.map(jnp.zeros_like, jax.lax.stop_gradient(trainable))
        ref_model = nnx.merge(graphdef, ref_trainable, frozen)
        ref_model = nnx.view(ref_model, deterministic=True, raise_if_not_found=False)
        ref_logps_B = jax.lax.stop_gradient(response_logprobs(ref_model, batch)[0])
        args = args + (ref_logps_B[:num_pairs], ref_logps_B[num_pairs:])
    pairs, nll_tokens = normalisers
    loss, metrics = losses.get_loss_fn(settings.objective)(
        *args, num_pairs=pairs, nll_denominator=nll_tokens
    )
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    metrics["loss"] = jnp.asarray(loss, jnp.float32)
    return jnp.asarray(loss, jnp.float32), metrics


def _token_count(batch) -> jax.Array:
    return jnp.sum(batch["attention_mask"].astype(jnp.float32))


def train_step(graphdef, state: TrainState, frozen, batch, settings: StepSettings):
    """One optimizer update over the global batch; returns (new_state, metrics)."""
    normalisers = global_normalisers(batch)

    def loss_of(trainable, micro, index):
        frozen_m = fold_rng_keys(frozen, state.step, index)
        return objective_terms(graphdef, trainable, frozen_m, micro, settings, normalisers)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)
    if settings.grad_accum == 1:
        (_, metrics), grads = grad_fn(state.trainable, batch, 0)
    else:
        micro = split_micro_batches(batch, settings.grad_accum)
        first = jax.tree.map(lambda x: x[0], micro)
        metrics_shape = jax.eval_shape(lambda: loss_of(state.trainable, first, 0)[1])

        def body(carry, xs):
            grads_acc, metrics_acc = carry
            index, mb = xs
            (_, metrics_m), grads_m = grad_fn(state.trainable, mb, index)
            grads_acc = jax.tree.map(jnp.add, grads_acc, grads_m)
            metrics_acc = jax.tree.map(jnp.add, metrics_acc, metrics_m)
            return (grads_acc, metrics_acc), None

        init = (
            jax.tree.map(jnp.zeros_like, state.trainable),
            jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape),
        )
        indices = jnp.arange(settings.grad_accum, dtype=jnp.int32)
        (grads, metrics), _ = jax.lax.scan(body, init, (indices, micro))
    grad_norm = optax.global_norm(grads)
    updates, opt_state = settings.tx.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    metrics = dict(metrics)
    metrics["grad_norm"] = grad_norm.astype(jnp.float32)
    metrics["lr"] = jnp.asarray(settings.schedule(state.step), jnp.float32)
    metrics["num_tokens"] = _token_count(batch)
    new_state = TrainState(trainable=trainable, opt_state=opt_state, step=state.step + 1)
    return new_state, metrics


def eval_step(graphdef, trainable, frozen, batch, settings: StepSettings):
    """Loss and metrics of one validation batch (no update); metrics include num_pairs."""
    normalisers = global_normalisers(batch)
    _, metrics = objective_terms(
        graphdef, trainable, frozen, batch, settings, normalisers, deterministic=True
    )
    metrics["num_pairs"] = jnp.sum(_pair_mask(batch))
    return metrics


def init_train_state(trainable, tx: optax.GradientTransformation) -> TrainState:
    """A fresh TrainState (step 0) for the trainable variables (call under jit for sharding)."""
    return TrainState(
        trainable=trainable, opt_state=tx.init(trainable), step=jnp.zeros((), jnp.int32)
    )


def state_shardings(trainable_shardings, tx: optax.GradientTransformation, trainable, replicated):
    """Shardings of a TrainState: optimizer moments follow their parameter, the rest replicated."""
    abstract = jax.eval_shape(lambda t: init_train_state(t, tx), trainable)
    opt_shardings = optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        abstract.opt_state,
        trainable_shardings,
        transform_non_params=lambda _: replicated,
    )
    return TrainState(trainable=trainable_shardings, opt_state=opt_shardings, step=replicated)


def build_train_step(*, state_sharding, frozen_sharding, batch_sharding, replicated):
    """jax.jit(train_step) with explicit shardings, the state donated, (graphdef, settings) static
    (and the "train_step" XLA:CPU options on the CPU backend)."""
    return jax.jit(
        train_step,
        static_argnames=("graphdef", "settings"),
        in_shardings=(state_sharding, frozen_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnames=("state",),
        compiler_options=runtime.compiler_options("train_step"),
    )


def build_eval_step(*, trainable_sharding, frozen_sharding, batch_sharding, replicated):
    """jax.jit(eval_step) with explicit shardings and (graphdef, settings) static (and
    the "train_step" XLA:CPU options on the CPU backend)."""
    return jax.jit(
        eval_step,
        static_argnames=("graphdef", "settings"),
        in_shardings=(trainable_sharding, frozen_sharding, batch_sharding),
        out_shardings=replicated,
        compiler_options=runtime.compiler_options("train_step"),
    )
