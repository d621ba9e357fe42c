"""The kernel table: the model's one door to backend-specific code, chosen once from its config.

A `Kernels` table holds the four computations whose fastest form depends on the backend:
`rms_norm(x_BTD, w_D, eps, dtype)`, `swiglu(g, u)`, `attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS)`
(uncached training/prefill attention over a bool mask; a query with no visible key gets zeros)
and `lora_project(x_BTI, kernels, adapters)` (projections sharing an input,
ops/lora_products.py). `ModelConfig.kernels` names the set:

- "portable": plain jnp / jax.nn differentiated by JAX (ops/), no custom VJP and no custom call,
  for any backend; attention is `jax.nn.dot_product_attention` with `ModelConfig.attention_impl`
  ("xla" or "cudnn").
- "cpu": the CPU wing (almol_jax/cpu/): the threaded C++ attention kernel (XLA's hand-written
  backward attention where the kernel could not be built), LoRA through merged kernels where
  they pay, hand-written backward passes for RMSNorm, SwiGLU and the adapters' down-projection.
  Float32 compute on the CPU backend only; asking for it elsewhere is an error.
- "auto" (the default): "cpu" on a one-device float32 CPU run with attention_impl "xla" (a
  warning, once, when the C++ kernel cannot be built), "portable" elsewhere.

`choose(config)` resolves the name once per process (the model calls it when it is built and
hands the table to its modules); this is the only file of the model that asks which backend it
runs on.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp

from almol_jax.cpu import attention as cpu_attention
from almol_jax.cpu import attention_kernel
from almol_jax.cpu import elementwise as cpu_elementwise
from almol_jax.cpu import lora as cpu_lora
from almol_jax.ops import attention, elementwise, lora_products

KERNEL_SETS = ("auto", "portable", "cpu")
ATTENTION_IMPLS = ("xla", "cudnn")  # jax.nn.dot_product_attention's, for the portable kernels


@dataclasses.dataclass(frozen=True)
class Kernels:
    """One kernel set (see the module docstring for each function's contract)."""

    name: str
    rms_norm: Callable
    swiglu: Callable
    attention: Callable
    lora_project: Callable

    def __repr__(self) -> str:
        return f"Kernels({self.name!r})"


def _portable(implementation: str) -> Kernels:
    return Kernels(
        name="portable",
        rms_norm=elementwise.rms_norm,
        swiglu=elementwise.swiglu,
        attention=functools.partial(attention.attention, implementation=implementation),
        lora_project=lora_products.separate,
    )


PORTABLE = {impl: _portable(impl) for impl in ATTENTION_IMPLS}
CPU = Kernels(
    name="cpu",
    rms_norm=cpu_elementwise.rms_norm,
    swiglu=cpu_elementwise.swiglu,
    attention=cpu_attention.attention,
    lora_project=cpu_lora.project,
)


def choose(config) -> Kernels:
    """The table that `config.kernels` (a validated ModelConfig's) names on this process's
    backend (see the module)."""
    return _choose(config.kernels, jnp.dtype(config.compute_dtype).name, config.attention_impl)


@functools.cache
def _choose(kernels: str, dtype: str, attention_impl: str) -> Kernels:
    backend = jax.default_backend()
    if kernels == "cpu":
        if backend != "cpu":
            raise ValueError(f"kernels='cpu' runs on the CPU backend only, not {backend!r}")
        if dtype != "float32":
            raise ValueError(f"kernels='cpu' computes in float32, not {dtype}")
        attention_kernel.require()
        return CPU
    if kernels == "portable":
        return PORTABLE[attention_impl]
    one_device_cpu = backend == "cpu" and jax.device_count() == 1
    if not (one_device_cpu and dtype == "float32" and attention_impl == "xla"):
        return PORTABLE[attention_impl]
    if not attention_kernel.available():
        warnings.warn(
            f"the CPU attention kernel is unavailable ({attention_kernel.unavailable_reason()}); "
            "the cpu kernels use the XLA attention",
            RuntimeWarning,
            stacklevel=3,
        )
    return CPU
