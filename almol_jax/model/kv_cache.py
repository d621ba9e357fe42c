"""KVCache pytree for incremental decoding, and init_cache.

k, v: tuples of L per-layer arrays [B, K, S, H] (heads before slots: a decode step's products read
them without a transposed copy; one buffer per layer: each layer updates its own in place, and no
layer slice of a stacked array is ever copied); end_index: int32 scalar (next write slot, the same for every row);
key_valid_BS: bool [B, S], True where a real (non-padding) token was written.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from almol_jax.model.config import ModelConfig, dtype_of


@struct.dataclass
class KVCache:
    k: tuple[jax.Array, ...]  # L x [B, K, S, H]
    v: tuple[jax.Array, ...]  # L x [B, K, S, H]
    end_index: jax.Array  # int32 scalar
    key_valid_BS: jax.Array  # bool [B, S]

    @property
    def max_length(self) -> int:
        return self.k[0].shape[2]


def init_cache(config: ModelConfig, batch_size: int, max_length: int, dtype=None) -> KVCache:
    """An empty cache for `batch_size` rows of up to `max_length` tokens (compute dtype default)."""
    if isinstance(dtype, str):
        dtype = dtype_of(dtype)
    dtype = config.compute_dtype if dtype is None else dtype
    shape = (batch_size, config.num_key_value_heads, max_length, config.head_dim)
    layers = range(config.num_hidden_layers)
    return KVCache(
        k=tuple(jnp.zeros(shape, dtype) for _ in layers),
        v=tuple(jnp.zeros(shape, dtype) for _ in layers),
        end_index=jnp.zeros((), jnp.int32),
        key_valid_BS=jnp.zeros((batch_size, max_length), bool),
    )
