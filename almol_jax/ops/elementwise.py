"""RMSNorm and SwiGLU as plain functions: the portable kernel table's, differentiated by JAX.

The values are Hugging Face's LLaMA exactly: float32 statistics for the norm, the result cast to
the compute dtype before the weight multiplies it; SwiGLU in the compute dtype. The CPU wing's
versions (ops/custom_vjp.py) compute these forward values with hand-written backward passes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalise(x_BTD: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
    """(x / rms(x), 1 / rms(x)) in float32: the normalised rows and their [B, T, 1] scale."""
    x = x_BTD.astype(jnp.float32)
    r_BT1 = jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return x * r_BT1, r_BT1


def rms_norm(x_BTD: jax.Array, w_D: jax.Array, eps: float, dtype) -> jax.Array:
    """HF LlamaRMSNorm: `w * (x / rms(x)).astype(dtype)` with float32 statistics."""
    xhat_BTD, _ = normalise(x_BTD, eps)
    return w_D.astype(dtype) * xhat_BTD.astype(dtype)


def swiglu(g: jax.Array, u: jax.Array) -> jax.Array:
    """`silu(g) * u` (SiLU = x * sigmoid(x)), in the inputs' dtype."""
    return jax.nn.silu(g) * u
