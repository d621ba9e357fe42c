"""Self-attention: mask building, GQA/MQA via jax.nn.dot_product_attention, KV-cache writes.

A query may attend a key iff: key index <= query index (causal, by index in the row) AND the key
is valid (padding mask) AND segment ids are equal (when given) AND mask_BTS[b, t, s] (when
given). A fully-masked query row (padding) yields zeros from attention, never NaN, and never
information from keys it may not see.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from almol_jax.model.config import ModelConfig
from almol_jax.model.lora import Linear, LoraConfig
from almol_jax.model.rope import apply_rope, inv_frequencies


def build_mask(
    key_valid_BS: jax.Array,
    q_start: jax.Array | int,
    num_queries: int,
    *,
    segment_ids_BT: jax.Array | None = None,
    mask_BTS: jax.Array | None = None,
) -> jax.Array:
    """Boolean [B, T, S] attention mask; queries sit at key indices q_start .. q_start+T-1."""
    s = key_valid_BS.shape[1]
    q_idx_T = q_start + jnp.arange(num_queries)
    causal_TS = jnp.arange(s)[None, :] <= q_idx_T[:, None]
    allowed_BTS = causal_TS[None] & key_valid_BS[:, None, :].astype(bool)
    if segment_ids_BT is not None:
        if s != num_queries:
            raise ValueError("segment_ids_BT cannot be combined with a KV cache")
        allowed_BTS &= segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
    if mask_BTS is not None:
        allowed_BTS &= mask_BTS.astype(bool)
    return allowed_BTS


class Attention(nnx.Module):
    """LLaMA attention with q/k/v/o projections (optionally biased, optionally LoRA-adapted)."""

    def __init__(self, config: ModelConfig, *, lora: LoraConfig | None, rngs: nnx.Rngs):
        d, n, k, h = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        common = dict(
            use_bias=config.attention_bias,
            dtype=config.compute_dtype,
            param_dtype=config.storage_dtype,
            init_std=config.initializer_range,
            rngs=rngs,
            lora=lora,
        )
        self.q_proj = Linear(d, n * h, axes=("embed", "heads"), name="q_proj", **common)
        self.k_proj = Linear(d, k * h, axes=("embed", "kv_heads"), name="k_proj", **common)
        self.v_proj = Linear(d, k * h, axes=("embed", "kv_heads"), name="v_proj", **common)
        self.o_proj = Linear(n * h, d, axes=("heads", "embed"), name="o_proj", **common)
        self.num_heads, self.num_kv_heads, self.head_dim = n, k, h
        self.inv_freq = tuple(float(f) for f in inv_frequencies(config))
        self.attention_impl = config.attention_impl

    def __call__(
        self,
        x_BTD: jax.Array,
        positions_BT: jax.Array,
        mask_BTS: jax.Array,
        kv_LBSKH: tuple[jax.Array, jax.Array] | None = None,
        end_index: jax.Array | None = None,
        layer: int = 0,
    ):
        """Returns (out_BTD, kv): kv is (k_LBSKH, v_LBSKH), the WHOLE stacked cache with this
        layer's T new keys/values written at [layer, :, end_index] (an in-place update inside a
        compiled decode loop: no copy of the other layers), or None without a cache."""
        b, t, _ = x_BTD.shape
        q_BTNH = self.q_proj(x_BTD).reshape(b, t, self.num_heads, self.head_dim)
        k_BTKH = self.k_proj(x_BTD).reshape(b, t, self.num_kv_heads, self.head_dim)
        v_BTKH = self.v_proj(x_BTD).reshape(b, t, self.num_kv_heads, self.head_dim)
        q_BTNH = apply_rope(q_BTNH, positions_BT, self.inv_freq)
        k_BTKH = apply_rope(k_BTKH, positions_BT, self.inv_freq)
        if kv_LBSKH is not None:
            k_LBSKH, v_LBSKH = kv_LBSKH
            start = (layer, 0, end_index, 0, 0)
            k_LBSKH = jax.lax.dynamic_update_slice(
                k_LBSKH, k_BTKH[None].astype(k_LBSKH.dtype), start
            )
            v_LBSKH = jax.lax.dynamic_update_slice(
                v_LBSKH, v_BTKH[None].astype(v_LBSKH.dtype), start
            )
            k_BSKH, v_BSKH = k_LBSKH[layer], v_LBSKH[layer]
            kv_LBSKH = (k_LBSKH, v_LBSKH)
        else:
            k_BSKH, v_BSKH = k_BTKH, v_BTKH
        out_BTNH = jax.nn.dot_product_attention(
            q_BTNH,
            k_BSKH.astype(q_BTNH.dtype),
            v_BSKH.astype(q_BTNH.dtype),
            mask=mask_BTS[:, None, :, :],
            implementation=self.attention_impl,
        )
        # a query with no visible key (padding) gets zeros, not a uniform mix of hidden keys
        has_key_BT11 = jnp.any(mask_BTS, axis=-1)[:, :, None, None]
        out_BTNH = jnp.where(has_key_BT11, out_BTNH, jnp.zeros_like(out_BTNH))
        out_BTD = self.o_proj(out_BTNH.reshape(b, t, self.num_heads * self.head_dim))
        return out_BTD, kv_LBSKH
