"""The cpu kernel table's LoRA projection: merged kernels where they pay, else the fast products.

`project(x_BTI, kernels, adapters)` (the table entry, ops/lora_products.py's arguments) runs
projections that share their input through merged_lora.merged_project when `mergeable` (active
adapters without dropout, float32 compute: merging a small update into bfloat16 kernels would
round it away, and enough rows for the merge to pay), else through ops/lora_products.separate
with ops/custom_vjp.adapter_down as its x @ A product.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from almol_jax.cpu.merged_lora import merged_project
from almol_jax.ops.custom_vjp import adapter_down
from almol_jax.ops.lora_products import Adapters, separate

# merge only when the rows outnumber the rank this many times: merging costs I*O*R multiply-adds
# per kernel against the product's N*I*O, so a decode step (N = the batch) keeps the thin
# products, a training step or a prefill merges
MERGE_MIN_ROWS_PER_RANK = 8


def mergeable(x_BTI: jax.Array, kernels, adapters: Adapters | None) -> bool:
    """Whether these projections run through merged_project (see the module docstring)."""
    rows = math.prod(x_BTI.shape[:-1])
    return (
        adapters is not None
        and adapters.x_BTI is None
        and all(jnp.dtype(w_IO.dtype) == jnp.float32 for w_IO in kernels)
        and all(rows >= MERGE_MIN_ROWS_PER_RANK * b_RO.shape[0] for b_RO in adapters.bs)
    )


def project(x_BTI: jax.Array, kernels, adapters: Adapters | None) -> list[jax.Array]:
    """`[x @ W_i + s_i (x' @ A_i) @ B_i]` for projections sharing x (ops/lora_products.py)."""
    if not mergeable(x_BTI, kernels, adapters):
        return separate(x_BTI, kernels, adapters, down=adapter_down)
    ys = merged_project(
        x_BTI.reshape(-1, x_BTI.shape[-1]),
        tuple(kernels),
        adapters.a_IR,
        tuple(adapters.bs),
        tuple(float(s) for s in adapters.scales),
    )
    return [y_NO.reshape(*x_BTI.shape[:-1], y_NO.shape[-1]) for y_NO in ys]
