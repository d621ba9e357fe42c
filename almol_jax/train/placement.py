"""Placement of a run on its mesh: the sharded train state, the host batches, the jitted steps.

`place_model` splits the model into (graphdef, trainable, frozen) and builds the train state under
jit with explicit shardings (optimizer moments follow their parameter). `build_steps` jits the
train and eval steps for those shardings and the batch shardings of an example batch, and places
host batches: every batch array is split on its leading (row) axis over the data-parallel devices.

Multi-process: each process passes the rows it reads (its contiguous block of the global batch,
almol_jax.data.prefix_sharing.PairRowIterator / packing.PackedIterator); `to_global` assembles the
global arrays as the processes' rows in process order, which is the single-process batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from almol_jax.model.lora import trainable_filter
from almol_jax.sharding import logical_sharding, state_shardings
from almol_jax.train import step as step_lib


def full_shardings(state: nnx.State, mesh, rules) -> nnx.State:
    """A tree with the structure of `state` (Variables kept) whose leaves are NamedShardings."""
    prefix = state_shardings(state, mesh, rules)
    return jax.tree.map(
        lambda sharding, var: var.replace(value=sharding),
        prefix,
        state,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )


def batch_shardings(batch: dict[str, Any], mesh, rules) -> dict[str, NamedSharding]:
    """Each batch array sharded on its leading (row) axis, the rest replicated."""
    return {
        k: logical_sharding(("batch",) + (None,) * (np.ndim(v) - 1), mesh, rules)
        for k, v in batch.items()
    }


def to_global(local_batch: dict[str, np.ndarray], shardings, num_processes: int):
    """Host-local rows -> global jax.Arrays: every array split by rows, the global batch being
    the processes' rows in process order."""
    if num_processes == 1:
        return {k: jax.device_put(v, shardings[k]) for k, v in local_batch.items()}
    return {
        k: jax.make_array_from_process_local_data(
            shardings[k], v, (v.shape[0] * num_processes,) + v.shape[1:]
        )
        for k, v in local_batch.items()
    }


def _finite_tree(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


@dataclasses.dataclass
class PlacedModel:
    """The model split for the jitted steps, with the train state placed on the mesh."""

    graphdef: Any
    state: step_lib.TrainState  # replaced after every step (and by a checkpoint restore)
    frozen: nnx.State
    state_sharding: Any
    trainable_sharding: Any
    frozen_sharding: Any
    replicated: NamedSharding


def place_model(model, *, lora: bool, tx, mesh, rules) -> PlacedModel:
    """Splits `model` (trainable: adapters when `lora`, else every nnx.Param) and builds a fresh
    TrainState sharded by the rules."""
    graphdef, trainable, frozen = nnx.split(model, trainable_filter(lora), ...)
    replicated = NamedSharding(mesh, PartitionSpec())
    trainable_sh = full_shardings(trainable, mesh, rules)
    frozen_sh = full_shardings(frozen, mesh, rules)
    state_sh = step_lib.state_shardings(trainable_sh, tx, trainable, replicated)
    state = jax.jit(lambda tr: step_lib.init_train_state(tr, tx), out_shardings=state_sh)(trainable)
    return PlacedModel(graphdef, state, frozen, state_sh, trainable_sh, frozen_sh, replicated)


@dataclasses.dataclass(frozen=True)
class Steps:
    """The jitted train and eval steps of a placed model, and the placement of host batches."""

    train: Callable  # (graphdef, state, frozen, batch, settings) -> (state, metrics)
    eval: Callable  # (graphdef, trainable, frozen, batch, settings) -> metrics
    finite: Callable  # tree -> bool scalar: every floating leaf finite
    batch_sharding: dict[str, NamedSharding]
    num_processes: int

    def place(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows -> the global batch on the mesh."""
        return to_global(host_batch, self.batch_sharding, self.num_processes)


def build_steps(placed: PlacedModel, example_batch, mesh, rules) -> Steps:
    """Jits the steps for the placed model's shardings and `example_batch`'s batch shardings."""
    batch_sh = batch_shardings(example_batch, mesh, rules)
    train_fn = step_lib.build_train_step(
        state_sharding=placed.state_sharding,
        frozen_sharding=placed.frozen_sharding,
        batch_sharding=batch_sh,
        replicated=placed.replicated,
    )
    eval_fn = step_lib.build_eval_step(
        trainable_sharding=placed.trainable_sharding,
        frozen_sharding=placed.frozen_sharding,
        batch_sharding=batch_sh,
        replicated=placed.replicated,
    )
    finite = jax.jit(_finite_tree, out_shardings=placed.replicated)
    return Steps(train_fn, eval_fn, finite, batch_sh, jax.process_count())
