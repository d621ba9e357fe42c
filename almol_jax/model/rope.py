"""Rotary position embeddings as Hugging Face's LLaMA applies them (rotate_half layout).

Supported rope types: default (theta only), linear (positions / factor) and llama3 (frequency-
dependent scaling with low/high frequency factors). All three keep attention_scaling = 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from almol_jax.model.config import ModelConfig


def inv_frequencies(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies [H/2] (float64 numpy, computed once at trace time)."""
    h = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, h, 2, dtype=np.float64) / h))
    rs = config.rope_scaling
    if rs is None:
        return inv_freq
    rope_type, factor = rs["rope_type"], float(rs["factor"])
    if rope_type == "linear":
        return inv_freq / factor
    if rope_type == "llama3":
        low, high = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old_len = float(rs["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled)
    raise ValueError(f"rope_type={rope_type!r} is not supported")


def apply_rope(x_BTNH: jax.Array, positions_BT: jax.Array, inv_freq_h: np.ndarray) -> jax.Array:
    """Rotates query/key heads by their positions; float32 inside, input dtype out."""
    inv = jnp.asarray(inv_freq_h, jnp.float32)
    freqs_BTh = positions_BT.astype(jnp.float32)[..., None] * inv
    emb_BTH = jnp.concatenate([freqs_BTh, freqs_BTh], axis=-1)
    cos_BT1H = jnp.cos(emb_BTH)[:, :, None, :]
    sin_BT1H = jnp.sin(emb_BTH)[:, :, None, :]
    x = x_BTNH.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * cos_BT1H + rotated * sin_BT1H).astype(x_BTNH.dtype)
