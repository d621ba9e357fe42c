"""LoRA: LoraConfig, the LoRAParam variable type and the LoRA-aware Linear used by every block.

Adapters are a variable type, not a code path: `LoRAParam` subclasses `nnx.Variable` (NOT
`nnx.Param`), so `nnx.state(model, LoRAParam)` / `nnx.split(model, LoRAParam, ...)` selects
exactly the adapters for the optimizer and checkpoints while the base stays frozen (and may be
stored in bf16 while the adapters stay fp32). Kernels are [in, out]; A is [in, R] (PEFT's
kaiming-uniform init with a=sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))), B is [R, out] (zeros),
and y = x @ W + scale * dropout(x) @ A @ B (+ bias), PEFT's LoRA Linear (computed as
x @ W + (scale * (dropout(x) @ A)) @ B: equal up to float rounding, exact for a power-of-two
scale).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from almol_jax.model.config import dtype_of
from almol_jax.model.merged_lora import merged_project

PEFT_LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRAParam(nnx.Variable):
    """A LoRA adapter matrix (A or B). Deliberately not an nnx.Param."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the block projections (PEFT semantics)."""

    r: int = 8  # rank R
    alpha: float = 16.0  # scale = alpha / r (or alpha / sqrt(r) with use_rslora)
    dropout: float = 0.0  # dropout on the adapter input, as PEFT's lora_dropout
    target_modules: tuple[str, ...] | str = "all-linear"  # PEFT names or "all-linear"
    use_rslora: bool = False
    param_dtype: str = "float32"  # adapters' storage dtype (independent of the base)

    def __post_init__(self):
        tm = self.target_modules
        if isinstance(tm, str) and tm != "all-linear":
            tm = (tm,)
        if not isinstance(tm, str):
            tm = tuple(tm)
            bad = [m for m in tm if m not in PEFT_LINEAR_NAMES]
            if bad:
                raise ValueError(
                    f"target_modules has unknown names {bad}; expected {PEFT_LINEAR_NAMES} "
                    "or 'all-linear' (lm_head is never adapted)"
                )
        object.__setattr__(self, "target_modules", tm)
        if self.r < 1:
            raise ValueError(f"LoRA rank r={self.r} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout={self.dropout} must be in [0, 1)")
        dtype_of(self.param_dtype)

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def targets(self, module_name: str) -> bool:
        """Whether the projection called `module_name` (a PEFT name) gets an adapter."""
        if self.target_modules == "all-linear":
            return module_name in PEFT_LINEAR_NAMES
        return module_name in self.target_modules


@jax.custom_vjp
def adapter_down(x_NI: jax.Array, a_IR: jax.Array) -> jax.Array:
    """x @ A for rows x [N, I] and an adapter A [I, R], with a hand-written backward.

    Autodiff's dA = x^T g is a product whose [I, R] result has R (the rank) as its minor
    dimension; XLA:CPU runs that contraction over N at ~45 GFLOP/s. dA^T = g^T x [R, I] is the
    same numbers computed at ~130 GFLOP/s, and its [R, I] -> [I, R] transpose is small (the
    optimization barrier keeps XLA from folding the transpose back into the product).
    """
    return x_NI @ a_IR


def _adapter_down_fwd(x_NI, a_IR):
    return x_NI @ a_IR, (x_NI, a_IR)


def _adapter_down_bwd(residuals, g_NR):
    x_NI, a_IR = residuals
    da_RI = jax.lax.dot_general(g_NR, x_NI, (((0,), (0,)), ((), ())))
    return g_NR @ a_IR.T, jax.lax.optimization_barrier(da_RI).T


adapter_down.defvjp(_adapter_down_fwd, _adapter_down_bwd)


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
        lora: LoraConfig | None = None,
        name: str = "",
    ):
        self.dtype = dtype
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
            lora_dtype = dtype_of(lora.param_dtype)
            bound = 1.0 / math.sqrt(in_features)
            a = jax.random.uniform(rngs.lora(), (in_features, lora.r), minval=-bound, maxval=bound)
            self.lora_a = LoRAParam(
                a.astype(lora_dtype), out_sharding=(axes[0], "lora_rank"), eager_sharding=False
            )
            self.lora_b = LoRAParam(
                jnp.zeros((lora.r, out_features), lora_dtype),
                out_sharding=("lora_rank", axes[1]),
                eager_sharding=False,
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

    def __call__(self, x_BTI: jax.Array) -> jax.Array:
        if _mergeable((self,), _rows(x_BTI)):
            return _merged((self,), x_BTI)[0]
        y_BTO = jnp.einsum("...i,io->...o", x_BTI, self.kernel[...].astype(self.dtype))
        if self.lora_a is not None and self.lora_enabled:
            x_in = x_BTI if self.lora_dropout is None else self.lora_dropout(x_BTI)
            a_IR = self.lora_a[...].astype(self.dtype)
            b_RO = self.lora_b[...].astype(self.dtype)
            # on 2-D rows: XLA's CPU backward of the 3-D product is ~4x slower (issue 8)
            x_NI = x_in.reshape(-1, x_in.shape[-1])
            # the scale multiplies the thin [rows, R] factor, not the [rows, O] output: the
            # output's cotangent then reaches the base and the adapter as one tensor (with the
            # scale on the output XLA:CPU recomputed the whole upstream backward expression,
            # e.g. SwiGLU's, once per branch; issue 8)
            lora_NO = (self.lora_scale * adapter_down(x_NI, a_IR)) @ b_RO
            y_BTO = y_BTO + lora_NO.reshape(y_BTO.shape)
        if self.bias is not None:
            y_BTO = y_BTO + self.bias[...].astype(self.dtype)
        return y_BTO


# merge only when the rows outnumber the rank this many times: merging costs I*O*R multiply-adds
# per kernel against the product's N*I*O, so a decode step (N = the batch) keeps the thin
# products, a training step or a prefill merges
MERGE_MIN_ROWS_PER_RANK = 8


def _mergeable(linears: tuple[Linear, ...], rows: int) -> bool:
    """Whether these projections run through merged_lora.merged_project: active adapters
    without dropout, all computing in float32 (merging into bf16 kernels would round the
    update away), over enough rows for the merge to pay."""
    return all(
        m.lora_a is not None
        and m.lora_enabled
        and m.lora_dropout is None
        and jnp.dtype(m.dtype) == jnp.float32
        and rows >= MERGE_MIN_ROWS_PER_RANK * m.lora_a.shape[1]
        for m in linears
    )


def _rows(x_BTI: jax.Array) -> int:
    return math.prod(x_BTI.shape[:-1])


def _merged(linears: tuple[Linear, ...], x_BTI: jax.Array) -> list[jax.Array]:
    """The outputs of `linears` on x through merged_lora.merged_project (see `_mergeable`)."""
    dtype = linears[0].dtype
    ys = merged_project(
        x_BTI.reshape(-1, x_BTI.shape[-1]),
        tuple(m.kernel[...].astype(dtype) for m in linears),
        jnp.concatenate([m.lora_a[...].astype(dtype) for m in linears], axis=1),
        tuple(m.lora_b[...].astype(dtype) for m in linears),
        tuple(float(m.lora_scale) for m in linears),
    )
    outs = []
    for m, y_NO in zip(linears, ys, strict=True):
        y_BTO = y_NO.reshape(*x_BTI.shape[:-1], y_NO.shape[-1])
        if m.bias is not None:
            y_BTO = y_BTO + m.bias[...].astype(m.dtype)
        outs.append(y_BTO)
    return outs


def project(linears: tuple[Linear, ...], x_BTI: jax.Array) -> list[jax.Array]:
    """`[linear(x) for linear in linears]` for projections that share their input (q/k/v,
    gate/up), with the adapters' down-projections fused into one product.

    x @ [A_1 | A_2 | ...] is one [rows, n*R] product instead of n thin [rows, R] ones, and its
    gradient is one x^T @ [...] instead of n (on the CPU the thin products run at a fraction of
    the matmul peak; issue 8). The base kernels stay separate products: concatenating them would
    regroup a tensor-parallel "heads"/"mlp" sharding. The result equals the unfused computation
    up to float rounding; with adapter dropout (an independent mask per projection, as in PEFT)
    or adapters switched off it is exactly the unfused one.
    """
    if _mergeable(linears, _rows(x_BTI)):
        return _merged(linears, x_BTI)
    fusable = len(linears) > 1 and all(
        m.lora_a is not None and m.lora_enabled and m.lora_dropout is None for m in linears
    )
    if not fusable:
        return [m(x_BTI) for m in linears]
    dtype = linears[0].dtype
    a_IR = jnp.concatenate([m.lora_a[...].astype(dtype) for m in linears], axis=1)
    x_NI = x_BTI.reshape(-1, x_BTI.shape[-1])
    xa_NR = adapter_down(x_NI, a_IR)
    outs, start = [], 0
    for m in linears:
        r = m.lora_a.shape[1]
        lora_NO = (m.lora_scale * xa_NR[:, start : start + r]) @ m.lora_b[...].astype(dtype)
        start += r
        y_BTO = jnp.einsum("...i,io->...o", x_BTI, m.kernel[...].astype(m.dtype))
        y_BTO = y_BTO + lora_NO.reshape(y_BTO.shape)
        if m.bias is not None:
            y_BTO = y_BTO + m.bias[...].astype(m.dtype)
        outs.append(y_BTO)
    return outs


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
