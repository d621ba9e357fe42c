"""LoRA projections as products: what a kernel table's `lora_project` takes, and the plain way.

Projections that share their input x (q/k/v, gate/up, or one projection alone) are computed
together: `separate(x_BTI, kernels, adapters)` returns `[x @ W_i + s_i (x' @ A_i) @ B_i]`, with x'
the adapters' input (x, or x after adapter dropout) and `adapters.a_IR` the adapters' A
concatenated along the rank axis, so that x' @ [A_1 | A_2 | ...] is one [rows, n*R] product
instead of n thin [rows, R] ones (on the CPU the thin products run at a fraction of the matmul
peak; issue 8). The base kernels stay separate products: concatenating them would regroup a
tensor-parallel "heads"/"mlp" sharding. The scale multiplies the thin [rows, R] factor, not the
[rows, O] output: the output's cotangent then reaches the base and the adapter as one tensor (with
the scale on the output XLA:CPU recomputed the whole upstream backward expression, e.g.
SwiGLU's, once per branch; issue 8). Products over the adapters run on 2-D rows (XLA's CPU
backward of the 3-D product is ~4x slower; issue 8).

`down` is the x' @ A product: a plain matmul here, the CPU wing passes its hand-written-backward
one (cpu/lora.py). The result equals PEFT's x @ W + s (x' @ A) @ B up to float rounding.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Adapters:
    """The LoRA terms of projections sharing an input: y_i += s_i (x' @ A_i) @ B_i."""

    a_IR: jax.Array  # the adapters' A [I, R_i], concatenated along the rank axis
    bs: tuple[jax.Array, ...]  # each projection's B [R_i, O_i]
    scales: tuple[float, ...]  # each projection's s_i
    x_BTI: jax.Array | None = None  # x' (after adapter dropout); None: the projections' x itself


def separate(x_BTI, kernels, adapters: Adapters | None, down=jnp.matmul) -> list[jax.Array]:
    """`[x @ W_i (+ s_i (x' @ A_i) @ B_i)]` for the kernels W_i [I, O_i] (see the module)."""
    ys = [jnp.einsum("...i,io->...o", x_BTI, w_IO) for w_IO in kernels]
    if adapters is None:
        return ys
    x_in = x_BTI if adapters.x_BTI is None else adapters.x_BTI
    xa_NR = down(x_in.reshape(-1, x_in.shape[-1]), adapters.a_IR)
    outs, start = [], 0
    for y_BTO, b_RO, s in zip(ys, adapters.bs, adapters.scales, strict=True):
        r = b_RO.shape[0]
        lora_NO = (s * xa_NR[:, start : start + r]) @ b_RO
        start += r
        outs.append(y_BTO + lora_NO.reshape(y_BTO.shape))
    return outs
