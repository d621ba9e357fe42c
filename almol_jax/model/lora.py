"""LoRA: the LoRAParam variable type and the LoRA-aware Linear used by every block (LoraConfig:
model/lora_config.py).

Adapters are a variable type, not a code path: `LoRAParam` subclasses `nnx.Variable` (NOT
`nnx.Param`), so `nnx.state(model, LoRAParam)` / `nnx.split(model, LoRAParam, ...)` selects
exactly the adapters for the optimizer and checkpoints while the base stays frozen (and may be
stored in bf16 while the adapters stay fp32). Kernels are [in, out]; A is [in, R] (PEFT's
kaiming-uniform init with a=sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))), B is [R, out] (zeros);
``lora.init: a_zero`` swaps which factor starts at zero (A = 0, B ~ U(+-1/sqrt(R))),
and y = x @ W + scale * dropout(x) @ A @ B (+ bias), PEFT's LoRA Linear (computed as
x @ W + (scale * (dropout(x) @ A)) @ B: equal up to float rounding, exact for a power-of-two
scale).
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
from flax import nnx

from almol_jax.model.config import dtype_of
from almol_jax.model.kernels import Kernels
from almol_jax.model.lora_config import LoraConfig
from almol_jax.ops.lora_products import Adapters


class LoRAParam(nnx.Variable):
    """A LoRA adapter matrix (A or B). Deliberately not an nnx.Param."""


def _adapter_init(
    lora: LoraConfig, in_features: int, out_features: int, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(A [in, R], B [R, out]) in fp32: b_zero = PEFT's (A ~ U(+-1/sqrt(in)), B = 0); a_zero =
    A = 0, B ~ U(+-1/sqrt(R)) (kaiming-uniform with fan-in R). A @ B = 0 either way."""
    if lora.init == "a_zero":
        bound = 1.0 / math.sqrt(lora.r)
        b = jax.random.uniform(key, (lora.r, out_features), minval=-bound, maxval=bound)
        return jnp.zeros((in_features, lora.r)), b
    bound = 1.0 / math.sqrt(in_features)
    a = jax.random.uniform(key, (in_features, lora.r), minval=-bound, maxval=bound)
    return a, jnp.zeros((lora.r, out_features))


class Linear(nnx.Module):
    """y = x @ kernel (+ bias) (+ LoRA); kernel [in, out] with logical axis names."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: tuple[str, str],
        use_bias: bool,
        dtype,
        param_dtype,
        init_std: float,
        rngs: nnx.Rngs,
        kernels: Kernels,
        lora: LoraConfig | None = None,
        name: str = "",
    ):
        self.dtype = dtype
        self.kernels = kernels
        kernel = init_std * jax.random.normal(rngs.params(), (in_features, out_features))
        self.kernel = nnx.Param(kernel.astype(param_dtype), out_sharding=axes, eager_sharding=False)
        self.bias = (
            nnx.Param(
                jnp.zeros((out_features,), param_dtype), out_sharding=axes[1:], eager_sharding=False
            )
            if use_bias
            else None
        )
        self.lora_enabled = True
        if lora is not None and lora.targets(name):
            a, b = _adapter_init(lora, in_features, out_features, rngs.lora())
            lora_dtype = dtype_of(lora.param_dtype)
            self.lora_a = LoRAParam(
                a.astype(lora_dtype), out_sharding=(axes[0], "lora_rank"), eager_sharding=False
            )
            self.lora_b = LoRAParam(
                b.astype(lora_dtype), out_sharding=("lora_rank", axes[1]), eager_sharding=False
            )
            self.lora_scale = lora.scale
            self.lora_dropout = nnx.Dropout(lora.dropout, rngs=rngs) if lora.dropout > 0 else None
        else:
            self.lora_a = self.lora_b = self.lora_dropout = None
            self.lora_scale = 0.0

    def set_view(self, lora_enabled: bool | None = None):
        """Used by `nnx.view(model, lora_enabled=False)`: run the base only."""
        if lora_enabled is not None:
            self.lora_enabled = lora_enabled

    @property
    def adapted(self) -> bool:
        """Whether this projection adds its adapter (it has one and it is switched on)."""
        return self.lora_a is not None and self.lora_enabled

    def __call__(self, x_BTI: jax.Array) -> jax.Array:
        return project((self,), x_BTI)[0]


def _shared_adapter_input(linears: tuple[Linear, ...]) -> bool:
    """Whether the adapters of `linears` read one input: all adapted without dropout (an
    independent mask per projection, as in PEFT), or none adapted."""
    if not any(m.adapted for m in linears):
        return True
    return all(m.adapted and m.lora_dropout is None for m in linears)


def project(linears: tuple[Linear, ...], x_BTI: jax.Array) -> list[jax.Array]:
    """`[linear(x) for linear in linears]` for projections that share their input (q/k/v,
    gate/up, or one projection), through the kernel table's `lora_project` (the adapters'
    down-projections fused into one product; ops/lora_products.py). Projections whose adapters
    cannot share an input (dropout, some switched off) run one by one."""
    if len(linears) > 1 and not _shared_adapter_input(linears):
        return [m(x_BTI) for m in linears]
    first = linears[0]
    adapters = None
    if first.adapted:
        dtype = first.dtype
        adapters = Adapters(
            a_IR=jnp.concatenate([m.lora_a[...].astype(dtype) for m in linears], axis=1),
            bs=tuple(m.lora_b[...].astype(dtype) for m in linears),
            scales=tuple(float(m.lora_scale) for m in linears),
            x_BTI=None if first.lora_dropout is None else first.lora_dropout(x_BTI),
        )
    kernels = tuple(m.kernel[...].astype(m.dtype) for m in linears)
    ys = first.kernels.lora_project(x_BTI, kernels, adapters)
    return [
        y_BTO if m.bias is None else y_BTO + m.bias[...].astype(m.dtype)
        for m, y_BTO in zip(linears, ys, strict=True)
    ]


def trainable_filter(lora_enabled: bool):
    """The NNX filter of the variables that are trained: adapters with LoRA, all Params without."""
    return LoRAParam if lora_enabled else nnx.Param


def lora_state(model: nnx.Module) -> nnx.State:
    """The adapter variables of `model` (what the optimizer trains and checkpoints hold)."""
    return nnx.state(model, LoRAParam)


def zeros_like_lora(state: nnx.State) -> nnx.State:
    """The same adapter tree with zeros: merge it into the graphdef to switch adapters off."""
    return jax.tree.map(jnp.zeros_like, state)


def without_adapters(model: nnx.Module) -> nnx.Module:
    """A view of `model` sharing all arrays that skips every adapter (no weights copied)."""
    if not any(True for _ in _lora_linears(model)):
        return model
    return nnx.view(model, lora_enabled=False)


@contextlib.contextmanager
def disable_adapters(model: nnx.Module):
    """Context in which `model` runs without its adapters; restores them on exit."""
    linears = [m for _, m in _lora_linears(model)]
    previous = [m.lora_enabled for m in linears]
    for m in linears:
        m.lora_enabled = False
    try:
        yield model
    finally:
        for m, p in zip(linears, previous, strict=True):
            m.lora_enabled = p


def _lora_linears(model: nnx.Module):
    for path, module in nnx.iter_modules(model):
        if isinstance(module, Linear) and module.lora_a is not None:
            yield path, module


def merge_lora(model: nnx.Module) -> dict[str, jax.Array]:
    """Merged kernels for export: {"path.to.kernel": W + scale * A @ B} in our [in, out] layout.

    Computed in float32 and cast back to the kernel's dtype. Only adapted projections appear;
    `model` is not modified.
    """
    merged = {}
    for path, m in _lora_linears(model):
        w = m.kernel[...]
        delta = m.lora_scale * (
            m.lora_a[...].astype(jnp.float32) @ m.lora_b[...].astype(jnp.float32)
        )
        key = ".".join(str(p) for p in (*path, "kernel"))
        merged[key] = (w.astype(jnp.float32) + delta).astype(w.dtype)
    return merged
