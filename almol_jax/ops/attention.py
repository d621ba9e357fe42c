"""Masked grouped-head attention arithmetic shared by every path: bias, layout, probabilities,
keyless rows, and the portable attention.

Every path computes softmax(q k^T / sqrt(H), hidden keys masked) v with grouped heads (GQA/MQA:
query head n reads kv head n // (N / K), Hugging Face's grouping), and a query with no visible
key gets zeros (`zero_keyless_rows`, the one place that rule is written).

- `attention`: the portable kernel table's training/prefill attention,
  `jax.nn.dot_product_attention` (implementation "xla" or "cudnn") differentiated by JAX.
- The grouped layout: every tensor laid out once as [B, K, M, .] (M = G * T: the query heads that
  share a kv head, stacked along the query axis), so all products are plain batched matrix
  products over (B, K), and `probabilities` in that layout: the model's cached (decode)
  attention (model/attention.py) and the CPU wing's hand-written-backward attention
  (cpu/softmax_attention.py) are built from them.

`Mask` is what the kernel table's attention receives: the bool [B, T, S] mask, and where that
mask is causal + segment + role (training rows, uncached prefill) the per-token codes from which
a flash kernel (almol_jax/tpu/flash_attention.py) builds it tile by tile.

Numerics of `probabilities`: float32 scores and softmax whatever the input dtype; the
probabilities are returned in the input dtype. Hidden keys get the additive bias NEG_INF.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # a hidden key's additive score bias, and the logit of a padded vocabulary row
INVALID_KEY = -(1 << 30)  # the code of a padding key: its segment (code >> 2) matches no query's


class Mask(NamedTuple):
    """An attention mask: `dense_BTS` (bool, True = visible) always; the codes when the mask is
    "key index <= q_pos AND same segment AND (key role == 0 (prompt) OR key role == query role)":
    q_code_BT = segment << 2 | role of each query, k_code_BS = the same for each valid key
    (INVALID_KEY for padding), q_pos_BT = each query's key index. Segments are >= 0."""

    dense_BTS: jax.Array
    q_code_BT: jax.Array | None = None
    k_code_BS: jax.Array | None = None
    q_pos_BT: jax.Array | None = None


def mask_to_bias(mask_BTS: jax.Array) -> jax.Array:
    """Boolean visibility mask -> float32 additive bias (0 visible, NEG_INF hidden)."""
    return jnp.where(mask_BTS, 0.0, NEG_INF).astype(jnp.float32)


def zero_keyless_rows(out_BTNH: jax.Array, mask_BTS: jax.Array) -> jax.Array:
    """Zeros for a query with no visible key (padding), not a uniform mix of hidden keys."""
    has_key_BT11 = jnp.any(mask_BTS, axis=-1)[:, :, None, None]
    return jnp.where(has_key_BT11, out_BTNH, jnp.zeros_like(out_BTNH))


def queries_BKMH(q_BTNH: jax.Array, num_kv_heads: int) -> jax.Array:
    """[B, T, N, H] -> [B, K, G*T, H]: the G query heads of kv head k stacked along the rows."""
    b, t, n, h = q_BTNH.shape
    if n % num_kv_heads:
        raise ValueError(f"{n} query heads do not group over {num_kv_heads} kv heads")
    g = n // num_kv_heads
    return (
        q_BTNH.reshape(b, t, num_kv_heads, g, h)
        .transpose(0, 2, 3, 1, 4)
        .reshape(b, num_kv_heads, g * t, h)
    )


def rows_BTNH(x_BKMH: jax.Array, t: int) -> jax.Array:
    """Inverse of `queries_BKMH`: [B, K, G*T, H] -> [B, T, N, H]."""
    b, k, m, h = x_BKMH.shape
    g = m // t
    return x_BKMH.reshape(b, k, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, k * g, h)


def bias_B1MS(bias_BTS: jax.Array, g: int) -> jax.Array:
    """[B, T, S] -> [B, 1, G*T, S]: the bias repeated for the G query heads of a kv head."""
    b, t, s = bias_BTS.shape
    if g == 1:
        return bias_BTS[:, None]
    return jnp.broadcast_to(bias_BTS[:, None, None], (b, 1, g, t, s)).reshape(b, 1, g * t, s)


def probabilities(q_BKMH, k_BKSH, bias_B1MS, scale):
    """softmax(q k^T * scale + bias) over the keys: float32 inside, the input dtype out."""
    s_BKMS = jnp.einsum("bkmh,bksh->bkms", q_BKMH, k_BKSH, preferred_element_type=jnp.float32)
    s_BKMS = s_BKMS * scale + bias_B1MS
    e_BKMS = jnp.exp(s_BKMS - jnp.max(s_BKMS, axis=-1, keepdims=True))
    return (e_BKMS * (1.0 / jnp.sum(e_BKMS, axis=-1, keepdims=True))).astype(q_BKMH.dtype)


def attention(
    q_BTNH: jax.Array,
    k_BSKH: jax.Array,
    v_BSKH: jax.Array,
    mask_BTS: jax.Array,
    *,
    implementation: str,
) -> jax.Array:
    """The portable attention: `jax.nn.dot_product_attention` -> [B, T, N, H], keyless rows 0."""
    out_BTNH = jax.nn.dot_product_attention(
        q_BTNH,
        k_BSKH.astype(q_BTNH.dtype),
        v_BSKH.astype(q_BTNH.dtype),
        mask=mask_BTS[:, None, :, :],
        implementation=implementation,
    )
    return zero_keyless_rows(out_BTNH, mask_BTS)
