"""Next-token selection from logits: greedy, temperature, top-k and top-p (nucleus) filtering.

Pure functions of float32 logits `[B, V]` over the true vocabulary (the model slices padded
vocabulary columns off, so they can never be chosen). The filters follow transformers'
logits warpers in the same order (temperature, then top-k, then top-p), and keep at least one token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from almol_jax.generation.settings import DecodeSettings

NEG_INF = -jnp.inf


def top_k_filter(logits_BV: jax.Array, k: int) -> jax.Array:
    """Sets every logit below the k-th largest of its row to -inf (ties with it are kept)."""
    if k <= 0 or k >= logits_BV.shape[-1]:
        return logits_BV
    kth_B1 = jax.lax.top_k(logits_BV, k)[0][..., -1:]
    return jnp.where(logits_BV < kth_B1, NEG_INF, logits_BV)


def top_p_filter(logits_BV: jax.Array, p: float) -> jax.Array:
    """Nucleus filter: keeps the most likely tokens until their probability mass reaches p.

    Same rule as transformers' TopPLogitsWarper: in ascending order, a token is dropped when the
    cumulative probability up to and including it is <= 1 - p; the most likely token always stays.
    """
    if p >= 1.0:
        return logits_BV
    sorted_BV = jnp.sort(logits_BV, axis=-1)  # ascending
    cum_probs_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
    drop_sorted_BV = cum_probs_BV <= (1.0 - p)
    drop_sorted_BV = drop_sorted_BV.at[..., -1].set(False)
    # The threshold is the smallest kept logit of each row; everything below it goes.
    kept_min_B1 = jnp.min(jnp.where(drop_sorted_BV, jnp.inf, sorted_BV), axis=-1, keepdims=True)
    return jnp.where(logits_BV < kept_min_B1, NEG_INF, logits_BV)


def filter_logits(logits_BV: jax.Array, settings: DecodeSettings) -> jax.Array:
    """Temperature, then top-k, then top-p, as transformers applies them when sampling."""
    logits_BV = logits_BV.astype(jnp.float32)
    if settings.temperature != 1.0:
        logits_BV = logits_BV / settings.temperature
    logits_BV = top_k_filter(logits_BV, settings.top_k)
    return top_p_filter(logits_BV, settings.top_p)


def select_next_token(
    logits_BV: jax.Array, key: jax.Array | None, settings: DecodeSettings
) -> jax.Array:
    """Returns int32 token ids `[B]`: argmax for greedy (key unused, may be None), a
    categorical draw for sampling."""
    if settings.method == "greedy":
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    if settings.method == "sample":
        filtered_BV = filter_logits(logits_BV, settings)
        return jax.random.categorical(key, filtered_BV, axis=-1).astype(jnp.int32)
    raise ValueError(f"select_next_token does not handle method={settings.method!r}")
