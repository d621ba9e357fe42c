"""The kernel table: the model's one door to backend-specific code, chosen once from its config.

A `Kernels` table holds the four computations whose fastest form depends on the backend:
`rms_norm(x_BTD, w_D, eps, dtype)`, `swiglu(g, u)`, `attention(q_BTNH, k_BSKH, v_BSKH, mask)`
(uncached training/prefill attention over an ops.attention.Mask: the bool [B, T, S] mask and,
where the mask is causal + segment + role, its per-token codes; a query with no visible key gets
zeros) and `lora_project(x_BTI, kernels, adapters)` (projections sharing an input,
ops/lora_products.py). `ModelConfig.kernels` names the set:

- "portable": plain jnp / jax.nn differentiated by JAX (ops/), no custom VJP of ours, for any
  backend; attention by `ModelConfig.attention_impl`: "xla" / "cudnn" =
  `jax.nn.dot_product_attention` with that implementation (cuDNN's fused kernel takes the mask
  as a [B, 1, T, S] bias), "flash" = the Pallas TPU flash kernel (almol_jax/tpu/: per-token
  codes, no [T, S] array; Pallas's interpret mode off the TPU; a mask without codes falls back to
  "xla"), "auto" = flash on TPU, cudnn on a CUDA GPU in bf16/fp16 with head_dim a multiple of 8
  up to 128, xla elsewhere.
- "cpu": the CPU wing (almol_jax/cpu/): the threaded C++ attention kernel (XLA's hand-written
  backward attention where the kernel could not be built), LoRA through merged kernels where
  they pay, hand-written backward passes for RMSNorm, SwiGLU and the adapters' down-projection.
  Float32 compute on the CPU backend only; asking for it elsewhere is an error.
- "custom_vjp": the portable table's attention and LoRA products with the hand-written backward
  passes of RMSNorm, SwiGLU and the adapters' down-projection (ops/custom_vjp.py, pure JAX, any
  backend; the "cpu" table uses them too): what TPUs run. Nothing of the CPU wing.
- "auto" (the default): "cpu" on a one-device float32 CPU run with attention_impl "xla" (a
  warning, once, when the C++ kernel cannot be built), "custom_vjp" on TPU, "portable"
  elsewhere.

`choose(config, devices)` resolves the names for the devices the model will run on: the mesh's
devices (possibly compile-only TPU/GPU devices of an ahead-of-time compile on a CPU host,
bench/aot_compile.py), or this process's devices when no mesh is given. The model calls it when
it is built and hands the table to its modules; this is the only file of the model that asks
which platform it runs on, and it asks the devices, never the host's default backend.

Custom VJPs per backend (issue 16 asked to keep them where the compiler's figures justify it):
the CPU (they paid there, issue 8) and TPU, where the recipe's train step on v5e-8 compiles to a
peak of 8.68 GiB per chip with them against 12.26 without (docs/benchmarks.md; most likely
because the hand-written passes keep only their inputs where autodiff keeps float32
intermediates, not confirmed from a buffer dump). Not on GPU: on 8 x H200
they compile to the same 6.82 GiB per GPU as portable. Their speed on a real chip is unmeasured.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from almol_jax.cpu import attention as cpu_attention
from almol_jax.cpu import attention_kernel
from almol_jax.cpu import lora as cpu_lora
from almol_jax.ops import attention, custom_vjp, elementwise, lora_products
from almol_jax.tpu import flash_attention

KERNEL_SETS = ("auto", "portable", "cpu", "custom_vjp")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "flash")  # the portable kernels' attention
CUDNN_DTYPES = ("bfloat16", "float16")  # cuDNN's fused attention computes in these only
# where "auto" takes the custom_vjp table: the compiler's figures justify it (docs/tpu.md)
CUSTOM_VJP_PLATFORMS = ("tpu",)


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


def _dense(fn: Callable) -> Callable:
    """An attention over the bool mask only, as a table entry taking an ops.attention.Mask."""

    def entry(q_BTNH, k_BSKH, v_BSKH, mask: attention.Mask):
        return fn(q_BTNH, k_BSKH, v_BSKH, mask.dense_BTS)

    return entry


def _portable(implementation: str, *, interpret: bool = False) -> Kernels:
    if implementation == "flash":
        fn = functools.partial(flash_attention.attention, interpret=interpret)
    else:
        fn = _dense(functools.partial(attention.attention, implementation=implementation))
    return Kernels(
        name="portable",
        rms_norm=elementwise.rms_norm,
        swiglu=elementwise.swiglu,
        attention=fn,
        lora_project=lora_products.separate,
    )


PORTABLE = {impl: _portable(impl) for impl in ATTENTION_IMPLS if impl != "auto"}
FLASH_INTERPRET = _portable("flash", interpret=True)  # the Pallas kernel off the TPU (tests)
CPU = Kernels(
    name="cpu",
    rms_norm=custom_vjp.rms_norm,
    swiglu=custom_vjp.swiglu,
    attention=_dense(cpu_attention.attention),
    lora_project=cpu_lora.project,
)


def choose(config, devices: Sequence[jax.Device] | None = None) -> Kernels:
    """The table that `config.kernels` (a validated ModelConfig's) names for `devices` (the
    mesh's; None: this process's devices), see the module."""
    devices = list(jax.devices() if devices is None else devices)
    return _choose(
        config.kernels,
        jnp.dtype(config.compute_dtype).name,
        config.attention_impl,
        devices[0].platform,
        len(devices),
        config.head_dim,
    )


def _with_custom_vjps(table: Kernels) -> Kernels:
    return dataclasses.replace(
        table,
        name="custom_vjp",
        rms_norm=custom_vjp.rms_norm,
        swiglu=custom_vjp.swiglu,
        lora_project=functools.partial(lora_products.separate, down=custom_vjp.adapter_down),
    )


def auto_attention(platform: str, dtype: str, head_dim: int) -> str:
    """What attention_impl "auto" resolves to on `platform` (see the module)."""
    if platform == "tpu":
        return "flash"
    cudnn_shape = head_dim % 8 == 0 and head_dim <= 128
    if platform == "gpu" and dtype in CUDNN_DTYPES and cudnn_shape:
        return "cudnn"
    return "xla"


def _portable_for(attention_impl: str, platform: str) -> Kernels:
    if attention_impl == "flash" and platform != "tpu":
        return FLASH_INTERPRET
    return PORTABLE[attention_impl]


@functools.cache
def _choose(
    kernels: str, dtype: str, attention_impl: str, platform: str, count: int, head_dim: int
) -> Kernels:
    if kernels == "cpu":
        if platform != "cpu":
            raise ValueError(f"kernels='cpu' runs on the CPU backend only, not {platform!r}")
        if dtype != "float32":
            raise ValueError(f"kernels='cpu' computes in float32, not {dtype}")
        attention_kernel.require()
        return CPU
    impl = auto_attention(platform, dtype, head_dim) if attention_impl == "auto" else attention_impl
    if kernels == "portable":
        return _portable_for(impl, platform)
    if kernels == "custom_vjp" or platform in CUSTOM_VJP_PLATFORMS:
        return _with_custom_vjps(_portable_for(impl, platform))
    one_device_cpu = platform == "cpu" and count == 1
    if not (one_device_cpu and dtype == "float32" and impl == "xla"):
        return _portable_for(impl, platform)
    if not attention_kernel.available():
        warnings.warn(
            f"the CPU attention kernel is unavailable ({attention_kernel.unavailable_reason()}); "
            "the cpu kernels use the XLA attention",
            RuntimeWarning,
            stacklevel=3,
        )
    return CPU
