"""Self-attention: mask building, the attention layer (its uncached attention from the kernel
table, model/kernels.py) and the cached (decode) attention over a KV cache.

A query may attend a key iff: key index <= query index (causal, by index in the row) AND the key
is valid (padding mask) AND segment ids are equal (when given) AND the key's role is the prompt's
or the query's own (when role ids are given: data.prefix_sharing.role_mask_BTS) AND
mask_BTS[b, t, s] (when given). Without a cache and an arbitrary mask_BTS the mask also carries
its per-token codes (ops.attention.Mask) for the flash kernels. A fully-masked query row (padding) yields zeros from attention, never NaN, and never
information from keys it may not see.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from almol_jax.data.prefix_sharing import role_mask_BTS
from almol_jax.model.config import ModelConfig
from almol_jax.model.kernels import Kernels
from almol_jax.model.lora import Linear, project
from almol_jax.model.lora_config import LoraConfig
from almol_jax.model.rope import apply_rope
from almol_jax.ops.attention import (
    INVALID_KEY,
    Mask,
    bias_B1MS,
    mask_to_bias,
    probabilities,
    queries_BKMH,
    rows_BTNH,
    zero_keyless_rows,
)
from almol_jax.sharding import NO_CONSTRAINTS, ActivationSharding


def build_mask(
    key_valid_BS: jax.Array,
    q_start: jax.Array | int,
    num_queries: int,
    *,
    segment_ids_BT: jax.Array | None = None,
    role_ids_BT: jax.Array | None = None,
    mask_BTS: jax.Array | None = None,
    with_codes: bool = False,
) -> Mask:
    """The attention Mask (bool [B, T, S], and its codes when `with_codes` and no mask_BTS);
    queries sit at key indices q_start .. q_start+T-1."""
    b, s = key_valid_BS.shape
    q_idx_T = q_start + jnp.arange(num_queries)
    causal_TS = jnp.arange(s)[None, :] <= q_idx_T[:, None]
    allowed_BTS = causal_TS[None] & key_valid_BS[:, None, :].astype(bool)
    if (segment_ids_BT is not None or role_ids_BT is not None) and s != num_queries:
        raise ValueError("segment_ids_BT and role_ids_BT cannot be combined with a KV cache")
    if segment_ids_BT is not None:
        allowed_BTS &= segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
    if role_ids_BT is not None:
        allowed_BTS &= role_mask_BTS(role_ids_BT)
    if mask_BTS is not None:
        allowed_BTS &= mask_BTS.astype(bool)
    if not with_codes or mask_BTS is not None or s != num_queries:
        return Mask(allowed_BTS)
    zeros_BT = jnp.zeros((b, s), jnp.int32)
    segment_BT = zeros_BT if segment_ids_BT is None else segment_ids_BT.astype(jnp.int32)
    role_BT = zeros_BT if role_ids_BT is None else role_ids_BT.astype(jnp.int32)
    code_BT = (segment_BT << 2) | role_BT
    k_code_BS = jnp.where(key_valid_BS.astype(bool), code_BT, INVALID_KEY)
    q_pos_BT = jnp.broadcast_to(q_idx_T.astype(jnp.int32), (b, num_queries))
    return Mask(allowed_BTS, code_BT, k_code_BS, q_pos_BT)


def take_queries(mask: Mask, index_BL: jax.Array) -> Mask:
    """The mask of the queries at `index_BL` only (rows of the dense mask and of the codes)."""
    if mask.q_code_BT is None:
        return Mask(take_rows(mask.dense_BTS, index_BL))
    return Mask(
        take_rows(mask.dense_BTS, index_BL),
        take_rows(mask.q_code_BT, index_BL),
        mask.k_code_BS,
        take_rows(mask.q_pos_BT, index_BL),
    )


def cached_attention(
    q_BTNH: jax.Array, k_BKSH: jax.Array, v_BKSH: jax.Array, mask_BTS: jax.Array
) -> jax.Array:
    """Attention over one layer of a KV cache laid out [B, K, S, H] -> [B, T, N, H], keyless rows
    0 (inference only: plain jnp in the grouped layout of ops/attention.py, never differentiated)."""
    b, t, n, h = q_BTNH.shape
    num_kv = k_BKSH.shape[1]
    q_BKMH = queries_BKMH(q_BTNH.astype(k_BKSH.dtype), num_kv)
    bias = bias_B1MS(mask_to_bias(mask_BTS), n // num_kv)
    p_BKMS = probabilities(q_BKMH, k_BKSH, bias, h**-0.5)
    o_BKMH = jnp.einsum("bkms,bksh->bkmh", p_BKMS, v_BKSH)
    return zero_keyless_rows(rows_BTNH(o_BKMH, t).astype(q_BTNH.dtype), mask_BTS)


def take_rows(x_BT_: jax.Array, index_BL: jax.Array) -> jax.Array:
    """x[b, index[b, l], ...] -> [B, L, ...] (rows of each batch element, any trailing dims)."""
    index = index_BL.reshape(index_BL.shape + (1,) * (x_BT_.ndim - 2))
    return jnp.take_along_axis(x_BT_, index, axis=1)


class Attention(nnx.Module):
    """LLaMA attention with q/k/v/o projections (optionally biased, optionally LoRA-adapted)."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        lora: LoraConfig | None,
        kernels: Kernels,
        rngs: nnx.Rngs,
        activations: ActivationSharding = NO_CONSTRAINTS,
    ):
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
            kernels=kernels,
            lora=lora,
        )
        self.q_proj = Linear(d, n * h, axes=("embed", "heads"), name="q_proj", **common)
        self.k_proj = Linear(d, k * h, axes=("embed", "kv_heads"), name="k_proj", **common)
        self.v_proj = Linear(d, k * h, axes=("embed", "kv_heads"), name="v_proj", **common)
        self.o_proj = Linear(n * h, d, axes=("heads", "embed"), name="o_proj", **common)
        self.num_heads, self.num_kv_heads, self.head_dim = n, k, h
        self.kernels = kernels
        self.activations = activations

    def __call__(
        self,
        x_BTD: jax.Array,
        rope: tuple[jax.Array, jax.Array],
        mask: Mask,
        kv_BKSH: tuple[jax.Array, jax.Array] | None = None,
        end_index: jax.Array | None = None,
        query_index_BL: jax.Array | None = None,
    ):
        """Returns (out_BTD, kv): kv is this layer's cache (k_BKSH, v_BKSH) with the T new
        keys/values written at [:, :, end_index] (an in-place update inside a compiled decode
        loop), or None without a cache.

        With `query_index_BL` only the rows at those indices query: keys and values come from
        (and are cached for) all T rows, the output is [B, L, D] (the last layer of a training
        step or a prefill, whose other rows' outputs nothing reads)."""
        b, t, _ = x_BTD.shape
        if query_index_BL is None:
            q_BTO, k_BTO, v_BTO = project((self.q_proj, self.k_proj, self.v_proj), x_BTD)
            rope_q = rope
        else:
            k_BTO, v_BTO = project((self.k_proj, self.v_proj), x_BTD)
            q_BTO = self.q_proj(take_rows(x_BTD, query_index_BL))
            rope_q = tuple(take_rows(table, query_index_BL) for table in rope)
            mask = take_queries(mask, query_index_BL)
        q_BTNH = apply_rope(q_BTO.reshape(b, -1, self.num_heads, self.head_dim), rope_q)
        k_BTKH = apply_rope(k_BTO.reshape(b, t, self.num_kv_heads, self.head_dim), rope)
        v_BTKH = v_BTO.reshape(b, t, self.num_kv_heads, self.head_dim)
        if kv_BKSH is None:
            heads = self.activations.constrain
            q_BTNH = heads(q_BTNH, ("batch", "length", "heads", None))
            k_BTKH = heads(k_BTKH, ("batch", "length", "kv_heads", None))
            v_BTKH = heads(v_BTKH, ("batch", "length", "kv_heads", None))
            q_names = ("batch", "length", "heads", None)
            kv_names = ("batch", "length", "kv_heads", None)
            attend = self.activations.per_shard(
                self.kernels.attention, (q_names, kv_names, kv_names, ("batch",)), q_names
            )
            out_BTNH = heads(attend(q_BTNH, k_BTKH, v_BTKH, mask), q_names)
        else:
            # the cache is [B, K, S, H]: heads before slots, so that the decode-step products
            # read it without a transposed copy
            start = (0, 0, end_index, 0)
            k_BKSH, v_BKSH = (
                jax.lax.dynamic_update_slice(c, new.transpose(0, 2, 1, 3).astype(c.dtype), start)
                for c, new in zip(kv_BKSH, (k_BTKH, v_BTKH), strict=True)
            )
            kv_BKSH = (k_BKSH, v_BKSH)
            out_BTNH = cached_attention(q_BTNH, k_BKSH, v_BKSH, mask.dense_BTS)
        out_BTD = self.o_proj(out_BTNH.reshape(b, -1, self.num_heads * self.head_dim))
        return out_BTD, kv_BKSH
