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


# Above this many table entries (positions x H/2) the tables are computed on device instead.
MAX_TABLE_ENTRIES = 1 << 20


def rope_tables(
    positions_BT: jax.Array, inv_freq_h: np.ndarray, num_positions: int
) -> tuple[jax.Array, jax.Array]:
    """(cos, sin) float32 [B, T, H] at the positions, which must lie in [0, num_positions).

    The tables are host constants (numpy, computed when the function is traced) gathered by
    position: computed on device, XLA's CPU backend fuses cos/sin into every layer's rotation
    and re-evaluates them per head element (issue 8). The angle is the float32 product
    position * inv_freq, as Hugging Face computes it. A position outside the table gives NaN,
    never a silently wrong rotation. Very long tables (more than MAX_TABLE_ENTRIES entries) are
    computed on device instead.
    """
    inv32 = np.asarray(inv_freq_h, np.float32)
    if num_positions * inv32.size > MAX_TABLE_ENTRIES:
        freqs_BTh = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(inv32)
        cos_BTh, sin_BTh = jnp.cos(freqs_BTh), jnp.sin(freqs_BTh)
    else:
        angle_Ph = np.arange(num_positions, dtype=np.float32)[:, None] * inv32[None, :]
        tables = []
        for fn in (np.cos, np.sin):
            table_Ph = jnp.asarray(fn(angle_Ph.astype(np.float64)).astype(np.float32))
            tables.append(jnp.take(table_Ph, positions_BT, axis=0, mode="fill", fill_value=np.nan))
        cos_BTh, sin_BTh = tables
    return (
        jnp.concatenate([cos_BTh, cos_BTh], axis=-1),
        jnp.concatenate([sin_BTh, sin_BTh], axis=-1),
    )


def apply_rope(x_BTNH: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotates query/key heads by the (cos, sin) tables of `rope_tables`; float32 inside."""
    cos_BT1H, sin_BT1H = rope[0][:, :, None, :], rope[1][:, :, None, :]
    x = x_BTNH.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * cos_BT1H + rotated * sin_BT1H).astype(x_BTNH.dtype)
