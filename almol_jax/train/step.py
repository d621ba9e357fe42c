"""The pure, jitted train and eval steps: module-level functions of (graphdef, state, frozen, batch).

Batches come in the indexed layout of almol_jax.data.prefix_sharing (one or more pairs per row;
prefix-shared, unshared or packed), scored by almol_jax.train.chunked_logprobs.response_logprobs.
`train_step` runs each row's chosen and rejected responses in one forward pass, accumulates
gradients over `grad_accum` micro-batches with `lax.scan`, applies optax AdamW to the trainable
variables only (LoRA adapters when LoRA is on, every nnx.Param otherwise) and returns the new
state and float32 metrics. Losses and metrics are weighted sums over micro-batches with the GLOBAL
normalisers (number of real pairs, number of chosen response tokens), so accumulating 4
micro-batches of 2 pairs equals one batch of 8 pairs (docs/DESIGN.md, losses contract).

Micro-batch m holds the rows m, m+M, m+2M, ... (strided; a row holds whole pairs), so that when
each micro-batch is divisible by the data-parallel size, every device keeps its own rows (no
resharding).

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
from almol_jax.data.prefix_sharing import ROLE_CHOSEN
from almol_jax.tpu import compiler_options as tpu_options
from almol_jax.train import losses
from almol_jax.train.chunked_logprobs import response_logprobs


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


def pair_mask(batch) -> jax.Array:
    """pair_mask [rows, slots] flattened to [P] (float32), in the order of logps_sum's halves."""
    return batch["pair_mask"].reshape(-1).astype(jnp.float32)


def global_normalisers(batch) -> tuple[jax.Array, jax.Array]:
    """(number of real pairs, number of chosen response tokens) of a whole (global) batch."""
    pairs = jnp.sum(pair_mask(batch))
    nll_tokens = jnp.sum((batch["label_role"] == ROLE_CHOSEN).astype(jnp.float32))
    return jnp.maximum(pairs, 1.0), jnp.maximum(nll_tokens, 1.0)


def split_micro_batches(batch, num_micro: int):
    """Global batch -> stacked micro-batches [M, rows/M, ...]; micro m = rows m, m+M, ...

    Rows hold whole pairs (label slots are row-local), so splitting rows needs no remapping.
    """
    rows = batch["input_ids"].shape[0]
    if rows % num_micro:
        raise ValueError(f"{rows=} rows do not split into grad_accum={num_micro} micro-batches")
    per = rows // num_micro
    return {
        k: jnp.swapaxes(v.reshape((per, num_micro) + v.shape[1:]), 0, 1) for k, v in batch.items()
    }


def fold_rng_keys(frozen, *data):
    """`frozen` with every nnx.RngKey folded with the integers `data` (step, micro index), and
    fresh RNG count variables: a model merged inside a nested trace (grad, scan, eval_shape)
    may then advance them (NNX refuses to mutate a variable made in an outer trace)."""

    def fold(var):
        if isinstance(var, nnx.RngKey):
            key = var.get_value()
            for d in data:
                key = jax.random.fold_in(key, d)
            return var.replace(value=key)
        if isinstance(var, nnx.RngCount):
            return var.replace(value=var.get_value())
        return var

    return jax.tree.map(fold, frozen, is_leaf=lambda x: isinstance(x, nnx.Variable))


def reference_model(graphdef, trainable, frozen):
    """DPO's reference: the same network with the trainable state zeroed (adapters off), a
    deterministic view, no gradient through the zeros."""
    ref_trainable = jax.tree.map(jnp.zeros_like, jax.lax.stop_gradient(trainable))
    ref_model = nnx.merge(graphdef, ref_trainable, frozen)
    return nnx.view(ref_model, deterministic=True, raise_if_not_found=False)


def pair_loss(
    logps_2P,
    ntok_2P,
    nll_sum,
    nll_count,
    pair_mask_P,
    settings: StepSettings,
    normalisers,
    ref=None,
):
    """(loss, metrics) of per-sequence sums [2P] (P chosen, then P rejected) and the NLL terms,
    means taken with the given global normalisers; `ref`: the reference's logps [2P] (DPO)."""
    num_pairs = logps_2P.shape[0] // 2
    args = (
        logps_2P[:num_pairs],
        logps_2P[num_pairs:],
        ntok_2P[:num_pairs],
        ntok_2P[num_pairs:],
        nll_sum,
        nll_count,
        pair_mask_P,
        settings.objective,
    )
    if ref is not None:
        args = args + (ref[:num_pairs], ref[num_pairs:])
    pairs, nll_tokens = normalisers
    loss, metrics = losses.get_loss_fn(settings.objective)(
        *args, num_pairs=pairs, nll_denominator=nll_tokens
    )
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    metrics["loss"] = jnp.asarray(loss, jnp.float32)
    return jnp.asarray(loss, jnp.float32), metrics


def objective_terms(
    graphdef, trainable, frozen, batch, settings: StepSettings, normalisers, deterministic=False
):
    """(loss, metrics) of one (micro-)batch, means taken with the given global normalisers."""
    model = nnx.merge(graphdef, trainable, frozen)
    if deterministic:
        model = nnx.view(model, deterministic=True, raise_if_not_found=False)
    logps_2P, ntok_2P, nll_sum, nll_count = response_logprobs(model, batch)
    ref = None
    if losses.needs_reference(settings.objective):
        ref_model = reference_model(graphdef, trainable, frozen)
        ref = jax.lax.stop_gradient(response_logprobs(ref_model, batch)[0])
    return pair_loss(
        logps_2P, ntok_2P, nll_sum, nll_count, pair_mask(batch), settings, normalisers, ref
    )


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
    metrics["num_pairs"] = jnp.sum(pair_mask(batch))
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


def _platform(sharding) -> str:
    """The platform of the devices a program is compiled for (its shardings' mesh)."""
    return next(iter(sharding.device_set)).platform


def _compiler_options(sharding) -> dict | None:
    """The "train_step" compiler options of the platform the step is compiled for: XLA:CPU's
    (cpu/compiler_options.py) or XLA:TPU's (tpu/compiler_options.py)."""
    platform = _platform(sharding)
    if platform == "tpu":
        return tpu_options.for_program("train_step", platform)
    return runtime.compiler_options("train_step", platform)


def build_train_step(*, state_sharding, frozen_sharding, batch_sharding, replicated):
    """jax.jit(train_step) with explicit shardings, the state donated, (graphdef, settings) static
    (and the "train_step" XLA:CPU options when the mesh's devices are CPUs)."""
    return jax.jit(
        train_step,
        static_argnames=("graphdef", "settings"),
        in_shardings=(state_sharding, frozen_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnames=("state",),
        compiler_options=_compiler_options(replicated),
    )


def build_eval_step(*, trainable_sharding, frozen_sharding, batch_sharding, replicated):
    """jax.jit(eval_step) with explicit shardings and (graphdef, settings) static (and
    the "train_step" XLA:CPU options when the mesh's devices are CPUs)."""
    return jax.jit(
        eval_step,
        static_argnames=("graphdef", "settings"),
        in_shardings=(trainable_sharding, frozen_sharding, batch_sharding),
        out_shardings=replicated,
        compiler_options=_compiler_options(replicated),
    )
