"""Batched KV-cache decoding: greedy, sampling (temperature / top-k / top-p) and beam search.

Token level: `decode_tokens` (greedy / sample / beam by `DecodeSettings.method`), `beam_search`,
`beam_pool` (every finished beam of each row, ranked; rdkit_check.py picks among them).
Text level: `generate_texts` (encode, bucket, batch, decode, detokenise), `settings_from_config`.
"""

from almol_jax.generation.beam import BeamPool, beam_pool, beam_search
from almol_jax.generation.decode import decode_tokens
from almol_jax.generation.kv_steps import split_model
from almol_jax.generation.sampling import filter_logits, top_k_filter, top_p_filter
from almol_jax.generation.settings import DecodeSettings
from almol_jax.generation.text import (
    encode_prompts,
    generate_texts,
    generate_token_ids,
    settings_from_config,
)

__all__ = [
    "BeamPool",
    "DecodeSettings",
    "beam_pool",
    "beam_search",
    "decode_tokens",
    "encode_prompts",
    "filter_logits",
    "generate_texts",
    "generate_token_ids",
    "settings_from_config",
    "split_model",
    "top_k_filter",
    "top_p_filter",
]
