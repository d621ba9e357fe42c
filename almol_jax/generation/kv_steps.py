"""The KV-cache steps every decoder shares: split the model, prefill, one-token step, EOS bookkeeping.

Greedy / sampling decoding (`decode.py`) and beam search (`beam.py`) both run the same prompt
prefill into a fresh cache, the same one-token cached step, and read the same EOS / pad ids;
they live here once so neither decoder imports the other for them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def split_model(model: nnx.Module, *, adapters: bool = True) -> tuple[Any, tuple[Any, ...]]:
    """Splits an inference view of a model for the jitted decoders: (graphdef, states).

    The view is deterministic (dropout off). With `adapters=False` the view also skips every LoRA
    adapter (`lora_enabled=False`), which is the base model; no weight is copied either way.
    """
    view_args = {"deterministic": True}
    if not adapters:
        view_args["lora_enabled"] = False
    model = nnx.view(model, raise_if_not_found=False, **view_args)
    graphdef, state = nnx.split(model)
    return graphdef, (state,)


def eos_ids_of(config: Any) -> tuple[int, ...]:
    """The EOS id(s) of a ModelConfig (an int or a list in HF configs) as a tuple."""
    eos = config.eos_token_id
    if eos is None:
        raise ValueError("model config has eos_token_id=None; decoding needs an EOS id")
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))


def pad_id_of(config: Any) -> int:
    """The id written after a row's EOS: pad_token_id, else the first EOS id."""
    pad = config.pad_token_id
    return int(pad) if pad is not None else eos_ids_of(config)[0]


def prompt_positions(attention_mask_BP: jax.Array) -> jax.Array:
    """Positions of left-padded prompts: cumsum(mask) - 1, clipped at 0."""
    return jnp.maximum(jnp.cumsum(attention_mask_BP.astype(jnp.int32), axis=-1) - 1, 0)


def prefill(model, input_ids_BP, attention_mask_BP, max_length: int):
    """Runs the prompt through the model into a fresh cache of `max_length` slots.

    The prompt attends only to itself (a cache of exactly P slots, padded to `max_length`
    afterwards); the last layer's queries, its MLP and the logits are computed at the last
    position only.
    Returns (last-position logits `[B, V]`, cache, prompt lengths `[B]`).
    """
    from almol_jax.model.kv_cache import init_cache

    batch, prompt_len = input_ids_BP.shape
    cache = init_cache(model.config, batch, prompt_len, jnp.dtype(model.config.dtype))
    h_B1D, cache = model.hidden_states(
        input_ids_BP,
        attention_mask_BP,
        positions_BT=prompt_positions(attention_mask_BP),
        cache=cache,
        output_index_BL=jnp.full((batch, 1), prompt_len - 1, jnp.int32),
    )
    logits_BV = model.lm_head_logits(h_B1D[:, 0, :])[:, : model.config.vocab_size]
    cache = pad_cache(cache, max_length)
    lengths_B = jnp.sum(attention_mask_BP.astype(jnp.int32), axis=-1)
    return logits_BV.astype(jnp.float32), cache, lengths_B


def pad_cache(cache, max_length: int):
    """The cache with empty slots appended up to `max_length` (end_index unchanged)."""
    extra = max_length - cache.max_length
    if extra < 0:
        raise ValueError(f"cache holds {cache.max_length} slots, more than {max_length=}")
    if extra == 0:
        return cache
    pad_kv = ((0, 0), (0, 0), (0, extra), (0, 0))
    return cache.replace(
        k=tuple(jnp.pad(k, pad_kv) for k in cache.k),
        v=tuple(jnp.pad(v, pad_kv) for v in cache.v),
        key_valid_BS=jnp.pad(cache.key_valid_BS, ((0, 0), (0, extra))),
    )


def step(model, token_B, position_B, cache):
    """One decode step: feeds one token per row, returns (logits `[B, V]`, cache)."""
    logits_B1V, cache = model(
        token_B[:, None],
        attention_mask_BT=jnp.ones_like(token_B)[:, None],
        positions_BT=position_B[:, None],
        cache=cache,
    )
    return logits_B1V[:, 0, :].astype(jnp.float32), cache


def first_eos_lengths(tokens_BN: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
    """Generated length per row: index of the first EOS + 1, or N when there is none."""
    is_eos_BN = jnp.isin(tokens_BN, jnp.asarray(eos_ids, dtype=tokens_BN.dtype))
    n = tokens_BN.shape[1]
    return jnp.where(jnp.any(is_eos_BN, axis=1), jnp.argmax(is_eos_BN, axis=1) + 1, n).astype(
        jnp.int32
    )
