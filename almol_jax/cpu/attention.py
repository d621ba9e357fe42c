"""The cpu kernel table's attention: the C++ kernel, or XLA's hand-written-backward fallback.

`attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS)` is the table entry (model/kernels.py): the threaded,
tile-skipping kernel of attention_kernel.py when it is built and registered in this process,
else softmax_attention.py (when the automatic choice found no working compiler; it warned
then). Both give zeros for a query with no visible key.
"""

from __future__ import annotations

import jax

from almol_jax.cpu import attention_kernel
from almol_jax.cpu.softmax_attention import softmax_attention
from almol_jax.ops.attention import mask_to_bias, zero_keyless_rows


def attention(
    q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, mask_BTS: jax.Array
) -> jax.Array:
    """softmax(q k^T / sqrt(H) masked) v over grouped heads -> [B, T, N, H], keyless rows 0."""
    if attention_kernel.available():
        return attention_kernel.cpu_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS)
    out_BTNH = softmax_attention(q_BTNH, k_BSKH, v_BSKH, mask_to_bias(mask_BTS))
    return zero_keyless_rows(out_BTNH, mask_BTS)
