"""Logical axis rules and mesh helpers: the one place where logical names meet mesh axes.

Parameters carry logical axis names (e.g. ("embed", "heads")) in their `out_sharding` metadata;
a rules table maps each logical name to a mesh axis ("data", "fsdp", "tensor"), a tuple of mesh
axes, or None (replicated). No mesh sizes appear in model code.

Activations are declared the same way: the model constrains its activations by logical names
(`ActivationSharding.constrain(x, ("batch", "length", "embed"))`: the embedding output, every
block's output, q/k/v and the attention output ("heads"), the MLP's hidden ("mlp")), resolved by
the same rules. A mesh axis is used once per array, so with the default rules an activation is
split by rows over data x fsdp and its "embed" axis stays whole (the rule "embed" -> fsdp is the
weights'): FSDP then gathers each layer's weights and keeps the rows local, instead of letting
XLA follow the weights and split the residual stream by the model dimension (which all-reduced
[rows, T, F] activations on every chip, issue 16).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from almol_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, Any], ...]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
    ("lora_rank", None),
    ("length", None),
)


def make_mesh(mesh_config: Any = None, *, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a ("data", "fsdp", "tensor") mesh.

    `mesh_config` is anything with integer attributes (or dict keys) data, fsdp, tensor; one of
    them may be -1 to take the remaining devices. None means all devices on "fsdp".
    """
    devices = list(jax.devices() if devices is None else devices)
    if mesh_config is None:
        sizes = {"data": 1, "fsdp": -1, "tensor": 1}
    elif isinstance(mesh_config, dict):
        sizes = {a: int(mesh_config.get(a, 1)) for a in MESH_AXES}
    else:
        sizes = {a: int(getattr(mesh_config, a, 1)) for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ConfigError(f"mesh sizes {sizes} have more than one -1")
    known = int(np.prod([s for s in sizes.values() if s != -1]))
    if free:
        if len(devices) % known:
            raise ConfigError(f"{len(devices)} devices are not divisible by mesh sizes {sizes}")
        sizes[free[0]] = len(devices) // known
    total = int(np.prod(list(sizes.values())))
    if total != len(devices):
        raise ConfigError(f"mesh sizes {sizes} need {total} devices but {len(devices)} are given")
    shape = tuple(sizes[a] for a in MESH_AXES)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def data_parallel_mesh() -> Mesh | None:
    """A mesh of every device on the "data" axis (weights replicated, batches split: decoding
    data-parallel), or None with a single device."""
    if len(jax.devices()) < 2:
        return None
    return make_mesh({"data": -1, "fsdp": 1, "tensor": 1})


def logical_to_spec(names: Sequence[str | None], rules: Rules | None = None) -> PartitionSpec:
    """PartitionSpec for logical axis names; a mesh axis is used at most once (later uses drop)."""
    table = dict(DEFAULT_RULES if rules is None else rules)
    used: set[str] = set()
    spec = []
    for name in names:
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no rule; rules cover {sorted(table)}")
        target = table[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def logical_sharding(names: Sequence[str | None], mesh: Mesh, rules: Rules | None = None):
    """NamedSharding on `mesh` for an array whose axes carry logical `names`."""
    return NamedSharding(mesh, logical_to_spec(names, rules))


def variable_names(variable: nnx.Variable) -> tuple[str | None, ...]:
    """The logical axis names recorded on an NNX variable (empty tuple when it has none)."""
    meta = variable.get_metadata()
    return tuple(meta.get("out_sharding") or ())


def check_divisible(path: str, shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> None:
    """ValueError naming the parameter when a dimension does not split evenly over its mesh axes."""
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=False):
        if axes is None:
            continue
        axes = (axes,) if isinstance(axes, str) else axes
        size = int(np.prod([mesh.shape[a] for a in axes]))
        if dim % size:
            raise ValueError(
                f"parameter {path} with shape {tuple(shape)} cannot be sharded as {spec}: "
                f"dimension {dim} is not divisible by mesh axes {axes} of size {size}"
            )


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules | None = None) -> nnx.State:
    """A tree like `state` (of nnx.Variables) holding each leaf's NamedSharding.

    Leaves without logical names (e.g. RNG counters) are replicated.
    """

    def one(path, var):
        names = variable_names(var) if isinstance(var, nnx.Variable) else ()
        shape = getattr(var, "shape", ())
        if len(names) != len(shape):
            names = (None,) * len(shape)
        spec = logical_to_spec(names, rules)
        check_divisible(".".join(map(str, path)), shape, spec, mesh)
        return NamedSharding(mesh, spec)

    return jax.tree.map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def freeze_rules(rules: Any) -> Rules | None:
    """Rules as nested tuples (hashable: they sit in static program arguments), None kept."""
    if rules is None:
        return None
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rules)


@dataclasses.dataclass(frozen=True)
class ActivationSharding:
    """The model's activation placement: logical names resolved by `rules` on `mesh`; no mesh
    means no constraint (one device, or a model that runs wherever its inputs are)."""

    mesh: Mesh | None = None
    rules: Rules | None = None

    def constrain(self, x: jax.Array, names: Sequence[str | None]) -> jax.Array:
        """`x` constrained to the sharding of `names`; a dimension that does not divide evenly
        over its mesh axes (e.g. a decode batch of 1) is left unconstrained."""
        if self.mesh is None:
            return x
        spec = logical_to_spec(names, self.rules)
        fitted = []
        for dim, axes in zip(x.shape, tuple(spec) + (None,) * (x.ndim - len(spec)), strict=True):
            group = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            size = int(np.prod([self.mesh.shape[a] for a in group]))
            fitted.append(axes if dim % size == 0 else None)
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, PartitionSpec(*fitted)))

    def _divides(self, x, names) -> bool:
        spec = logical_to_spec(names, self.rules)
        for dim, axes in zip(x.shape, spec, strict=False):
            group = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            if dim % int(np.prod([self.mesh.shape[a] for a in group])):
                return False
        return True

    def per_shard(self, fn, in_names: tuple, out_names: Sequence[str | None]):
        """`fn` run on each device's shard (jax.shard_map): argument i split by the logical
        names in_names[i] (every array of a pytree argument alike, by its leading axes), the
        output by out_names. For computations independent across those axes (attention over
        rows and heads) and for kernels XLA cannot partition (Pallas). `fn` itself without a
        mesh or when a dimension does not divide over its mesh axes."""

        def run(*args):
            leaves = [
                (x, names)
                for arg, names in zip(args, in_names, strict=True)
                for x in jax.tree.leaves(arg)
            ]
            if self.mesh is None or not all(self._divides(x, n) for x, n in leaves):
                return fn(*args)
            specs = tuple(logical_to_spec(n, self.rules) for n in in_names)
            return jax.shard_map(
                fn,
                mesh=self.mesh,
                in_specs=specs,
                out_specs=logical_to_spec(out_names, self.rules),
                check_vma=False,
            )(*args)

        return run


NO_CONSTRAINTS = ActivationSharding()  # activations placed by XLA's propagation alone


def batch_sharding(mesh: Mesh, rules: Rules | None = None, ndim: int = 2) -> NamedSharding:
    """Sharding of a [B, T, ...] activation / batch array: batch by the "batch" rule, rest replicated."""
    return logical_sharding(("batch", "length") + (None,) * (ndim - 2), mesh, rules)


def batch_shard_count(mesh: Mesh, rules: Rules | None = None) -> int:
    """How many pieces the "batch" rule splits a batch axis into on `mesh` (1: not split)."""
    first = logical_to_spec(("batch",), rules)[0]
    axes = () if first is None else (first,) if isinstance(first, str) else tuple(first)
    return int(np.prod([mesh.shape[a] for a in axes]))
