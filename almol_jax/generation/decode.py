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
from almol_jax.generation import grammar_tables
from almol_jax.generation.beam import beam_search
from almol_jax.generation.kv_steps import (
    eos_ids_of,
    first_eos_lengths,
    pad_id_of,
    prefill,
    split_model,
    step,
)
from almol_jax.generation.sampling import select_next_token
from almol_jax.generation.settings import DecodeSettings

_STATIC = ("graphdef", "settings", "eos_ids", "pad_id")


@functools.cache
def _decode_program():
    """The jitted decoder for the default backend (CPU: with the "decode" XLA:CPU options)."""
    options = runtime.compiler_options("decode")
    if options is None:
        return _decode_jit
    return jax.jit(_decode, static_argnames=_STATIC, compiler_options=options)


def _decode(
    graphdef, states, input_ids_BP, attention_mask_BP, key, grammar, *, settings, eos_ids, pad_id
):
    model = nnx.merge(graphdef, *states)
    batch, prompt_len = input_ids_BP.shape
    max_new = settings.max_new_tokens
    logits_BV, cache, lengths_B = prefill(
        model, input_ids_BP, attention_mask_BP, prompt_len + max_new
    )
    eos_arr = jnp.asarray(eos_ids, dtype=jnp.int32)
    tokens_BN = jnp.full((batch, max_new), pad_id, dtype=jnp.int32)
    done_B = jnp.zeros((batch,), dtype=bool)

    # With the SMILES grammar on, the carry also holds each row's automaton state (last item).
    constrained = settings.smiles_grammar

    def cond(carry):
        t, done_B = carry[0], carry[2]
        return (t < max_new) & ~jnp.all(done_B)

    def body(carry):
        t, tokens_BN, done_B, cache, logits_BV = carry[:5]
        if constrained:
            logits_BV = grammar_tables.mask_logits(grammar, carry[5], logits_BV, max_new - t)
        step_key = None if key is None else jax.random.fold_in(key, t)
        token_B = select_next_token(logits_BV, step_key, settings)
        token_B = jnp.where(done_B, pad_id, token_B)
        tokens_BN = jax.lax.dynamic_update_slice(tokens_BN, token_B[:, None], (0, t))
        done_B = done_B | jnp.isin(token_B, eos_arr)
        logits_BV, cache = step(model, token_B, lengths_B + t, cache)
        out = (t + 1, tokens_BN, done_B, cache, logits_BV)
        return out + ((grammar_tables.advance(grammar, carry[5], token_B),) if constrained else ())

    carry = (jnp.int32(0), tokens_BN, done_B, cache, logits_BV)
    carry += (grammar_tables.initial_states(batch),) if constrained else ()
    tokens_BN = jax.lax.while_loop(cond, body, carry)[1]
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
    grammar: grammar_tables.GrammarTables | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes left-padded prompts; returns (tokens `[B, N]` int32, lengths `[B]` int32).

    `tokens[b, :lengths[b]]` is row b's output (EOS included when it stopped on one); positions
    after it hold the pad id. `key` is required for sampling (explicit PRNG, no default seed).
    Pass `split=split_model(model, adapters=...)` to reuse one split across many batches;
    `eos_ids` overrides the model config's EOS id(s). With `settings.smiles_grammar`, `grammar`
    (grammar_tables.build_tables of the tokenizer) masks every token that breaks the SMILES grammar.
    """
    settings = settings.validate()
    if settings.smiles_grammar and grammar is None:
        raise ValueError("smiles_grammar=True needs the grammar tables (grammar=build_tables(...))")
    grammar = grammar if settings.smiles_grammar else None
    if settings.method == "beam":
        tokens_BN, lengths_B, _ = beam_search(
            model,
            input_ids_BP,
            attention_mask_BP,
            settings=settings,
            adapters=adapters,
            split=split,
            eos_ids=eos_ids,
            grammar=grammar,
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
        grammar,
        settings=_static_part(settings),
        eos_ids=tuple(eos_ids) if eos_ids is not None else eos_ids_of(model.config),
        pad_id=pad_id_of(model.config),
    )
    return np.asarray(tokens_BN), np.asarray(lengths_B)


def _static_part(settings: DecodeSettings) -> DecodeSettings:
    """Drops fields that do not change the compiled program, so they do not force recompiles."""
    return settings.replace(batch_size=1, prompt_buckets=(1,), smiles_rdkit_check=True)
