"""Batched greedy / sampling decoding with the KV cache, as one compiled program per shape.

`decode_tokens(model, input_ids_BP, attention_mask_BP, settings=..., key=...)` takes LEFT-padded
prompts, runs one jitted prefill over the prompt bucket, then a `jax.lax.while_loop` of one-token
steps that stops as soon as every row has produced EOS (or after `max_new_tokens`). The model is
split once into (graphdef, state); the graphdef and the settings are static arguments, so a new
compile happens only for a new (batch, bucket, settings) triple. Adapters can be switched off by
passing zeros for the LoRAParam state (the same graphdef; no base weight is copied).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from almol_jax.cpu import runtime
from almol_jax.generation.sampling import select_next_token
from almol_jax.generation.settings import DecodeSettings


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


_STATIC = ("graphdef", "settings", "eos_ids", "pad_id")


@functools.cache
def _decode_program():
    """The jitted decoder for the default backend (CPU: with the "decode" XLA:CPU options)."""
    options = runtime.compiler_options("decode")
    if options is None:
        return _decode_jit
    return jax.jit(_decode, static_argnames=_STATIC, compiler_options=options)


def _decode(graphdef, states, input_ids_BP, attention_mask_BP, key, *, settings, eos_ids, pad_id):
    model = nnx.merge(graphdef, *states)
    batch, prompt_len = input_ids_BP.shape
    max_new = settings.max_new_tokens
    logits_BV, cache, lengths_B = prefill(
        model, input_ids_BP, attention_mask_BP, prompt_len + max_new
    )
    eos_arr = jnp.asarray(eos_ids, dtype=jnp.int32)
    tokens_BN = jnp.full((batch, max_new), pad_id, dtype=jnp.int32)
    done_B = jnp.zeros((batch,), dtype=bool)

    def cond(carry):
        t, _, done_B, _, _ = carry
        return (t < max_new) & ~jnp.all(done_B)

    def body(carry):
        t, tokens_BN, done_B, cache, logits_BV = carry
        step_key = None if key is None else jax.random.fold_in(key, t)
        token_B = select_next_token(logits_BV, step_key, settings)
        token_B = jnp.where(done_B, pad_id, token_B)
        tokens_BN = jax.lax.dynamic_update_slice(tokens_BN, token_B[:, None], (0, t))
        done_B = done_B | jnp.isin(token_B, eos_arr)
        logits_BV, cache = step(model, token_B, lengths_B + t, cache)
        return t + 1, tokens_BN, done_B, cache, logits_BV

    carry = (jnp.int32(0), tokens_BN, done_B, cache, logits_BV)
    _, tokens_BN, _, _, _ = jax.lax.while_loop(cond, body, carry)
    return tokens_BN, first_eos_lengths(tokens_BN, eos_ids)


_decode_jit = jax.jit(_decode, static_argnames=_STATIC)


def decode_tokens(
    model,
    input_ids_BP,
    attention_mask_BP,
    *,
    settings: DecodeSettings,
    key: jax.Array | None = None,
    adapters: bool = True,
    split: tuple[Any, tuple[Any, ...]] | None = None,
    eos_ids: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes left-padded prompts; returns (tokens `[B, N]` int32, lengths `[B]` int32).

    `tokens[b, :lengths[b]]` is row b's output (EOS included when it stopped on one); positions
    after it hold the pad id. `key` is required for sampling (explicit PRNG, no default seed).
    Pass `split=split_model(model, adapters=...)` to reuse one split across many batches;
    `eos_ids` overrides the model config's EOS id(s).
    """
    settings = settings.validate()
    if settings.method == "beam":
        from almol_jax.generation.beam import beam_search

        tokens_BN, lengths_B, _ = beam_search(
            model,
            input_ids_BP,
            attention_mask_BP,
            settings=settings,
            adapters=adapters,
            split=split,
            eos_ids=eos_ids,
        )
        return tokens_BN, lengths_B
    if settings.method == "sample" and key is None:
        raise ValueError("method='sample' needs an explicit PRNG key (key=None was given)")
    if settings.method == "greedy":
        key = None  # greedy decoding draws nothing; one compiled program whatever key is given
    input_ids_BP = jnp.asarray(input_ids_BP, dtype=jnp.int32)
    attention_mask_BP = jnp.asarray(attention_mask_BP, dtype=jnp.int32)
    if input_ids_BP.shape != attention_mask_BP.shape:
        raise ValueError(f"{input_ids_BP.shape=} != {attention_mask_BP.shape=}")
    graphdef, states = split if split is not None else split_model(model, adapters=adapters)
    tokens_BN, lengths_B = _decode_program()(
        graphdef,
        states,
        input_ids_BP,
        attention_mask_BP,
        key,
        settings=_static_part(settings),
        eos_ids=tuple(eos_ids) if eos_ids is not None else eos_ids_of(model.config),
        pad_id=pad_id_of(model.config),
    )
    return np.asarray(tokens_BN), np.asarray(lengths_B)


def _static_part(settings: DecodeSettings) -> DecodeSettings:
    """Drops fields that do not change the compiled program, so they do not force recompiles."""
    return settings.replace(batch_size=1, prompt_buckets=(1,))
