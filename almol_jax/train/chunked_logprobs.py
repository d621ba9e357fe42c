"""Log-probs of the response tokens of an indexed batch: response positions only, vocabulary chunks.

`response_logprobs(model, batch)` is the one boundary between the network and the losses. For
the indexed batch layout of almol_jax.data.prefix_sharing (prefix-shared, unshared or packed
rows; the only layout training uses) it returns

  logps_sum[2P]  sum over response tokens of log p(token | prefix), P chosen sums then P
                 rejected (P = rows x pair slots; pair p = row * slots + slot)  (float32)
  ntok[2P]       number of response tokens per sequence                          (float32)
  nll_sum        sum of -log p over the CHOSEN response tokens
  nll_count      number of those tokens

Instead of full [B, T, V] float32 logits, the hidden states at the label positions are gathered
into a [B, L, D] array (L: a static bucket of response tokens per row) and scored against the
lm_head: the label's logit is one dot product per label, and the log-normaliser is an online
logsumexp over chunks of lm_head columns, each chunk under jax.checkpoint so the backward pass
recomputes the [B, L, C] chunk instead of keeping [B, L, V] float32 alive. The tests check it
against the plain layout's full-logits log-softmax (tests/plain_oracle.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from almol_jax.data.prefix_sharing import ROLE_CHOSEN, ROLE_REJECTED

DEFAULT_VOCAB_CHUNK = 8192


def lm_head_weight(model) -> jax.Array:
    """The [D, Vp] output projection of a LlamaForCausalLM (the embedding's transpose if tied)."""
    if model.lm_head is None:
        return model.model.embed_tokens.embedding[...].T
    return model.lm_head.kernel[...]


def _chunk_size(padded_vocab: int, requested: int) -> int:
    """Chunk width: ceil(Vp / n) rounded up to 128 for n = ceil(Vp / requested) chunks.

    The last chunk may overlap the previous one; label_logprobs masks the overlap.
    """
    if requested <= 0:
        raise ValueError(f"vocab chunk size {requested=} must be positive")
    if padded_vocab <= requested:
        return padded_vocab
    n = -(-padded_vocab // requested)
    per_chunk = -(-padded_vocab // n)
    return min(-(-per_chunk // 128) * 128, padded_vocab)


def label_logprobs(
    h_BLD: jax.Array,
    w_DV: jax.Array,
    labels_BL: jax.Array,
    *,
    vocab_size: int,
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
    dtype=None,
    constrain=None,
) -> jax.Array:
    """log softmax(h @ w)[label] over the first `vocab_size` columns: float32 [B, L].

    Matmuls run in `dtype` (default: h's dtype) with float32 accumulation, like the model's
    lm_head_logits. Columns >= vocab_size (vocabulary padding) are excluded from the normaliser.
    `constrain(x, names)` (the model's sharding.ActivationSharding.constrain) keeps each chunk's
    logits split by rows, so that FSDP gathers the lm_head chunk instead of all-reducing
    [rows, L, chunk] partial sums.
    """
    constrain = constrain or (lambda x, names: x)
    dtype = dtype or h_BLD.dtype
    h_BLD = h_BLD.astype(dtype)
    w_DV = w_DV.astype(dtype)
    vp = w_DV.shape[1]
    if not 0 < vocab_size <= vp:
        raise ValueError(f"{vocab_size=} must be in (0, padded vocab {vp}]")
    w_DBL = jnp.take(w_DV, labels_BL, axis=1)
    label_logit_BL = jnp.einsum("bld,dbl->bl", h_BLD, w_DBL, preferred_element_type=jnp.float32)

    c = _chunk_size(vp, vocab_chunk)

    def chunk_lse(start):
        # the last chunk is shifted left to stay in bounds; columns < start were counted already
        first = jnp.minimum(start, vp - c)
        w_DC = jax.lax.dynamic_slice_in_dim(w_DV, first, c, axis=1)
        logits_BLC = jnp.einsum("bld,dc->blc", h_BLD, w_DC, preferred_element_type=jnp.float32)
        logits_BLC = constrain(logits_BLC, ("batch", "length", "vocab"))
        col_C = first + jnp.arange(c)
        if vocab_size < vp or vp % c:
            keep_C = (col_C < vocab_size) & (col_C >= start)
            logits_BLC = jnp.where(keep_C, logits_BLC, -jnp.inf)
        return jax.nn.logsumexp(logits_BLC, axis=-1)

    if c == vp:
        lse_BL = chunk_lse(0)
    else:
        starts = jnp.arange(0, vp, c)
        # per-chunk normalisers; the checkpoint makes the backward recompute each chunk's logits
        _, lse_nBL = jax.lax.scan(lambda _, s: (None, jax.checkpoint(chunk_lse)(s)), None, starts)
        lse_BL = jax.nn.logsumexp(lse_nBL, axis=0)
    return label_logit_BL - lse_BL


def response_logprobs(model, batch, *, vocab_chunk: int = DEFAULT_VOCAB_CHUNK):
    """(logps_sum[2P], ntok[2P], nll_sum, nll_count) of an indexed batch (module docstring)."""
    h_BLD = model.hidden_states(
        batch["input_ids"],
        batch["attention_mask"],
        positions_BT=batch["positions"],
        segment_ids_BT=batch["segment_ids"],
        role_ids_BT=batch["role_ids"],  # prompt shared, responses apart (a flash kernel's codes)
        output_index_BL=batch["label_src"],  # the last layer works at label positions only
    )
    logp_BL = label_logprobs(
        h_BLD,
        lm_head_weight(model),
        batch["label_ids"],
        vocab_size=model.config.vocab_size,
        vocab_chunk=vocab_chunk,
        dtype=model.config.compute_dtype,
        constrain=model.activations.constrain,
    )
    return sums_by_pair(logp_BL, batch)


def sums_by_pair(logp_BL: jax.Array, batch):
    """Per-pair sums of label log-probs: (logps_sum[2P], ntok[2P], nll_sum, nll_count)."""
    role_BL, slot_BL = batch["label_role"], batch["label_slot"]
    slots = batch["pair_mask"].shape[1]
    onehot_BLS = jax.nn.one_hot(slot_BL, slots, dtype=jnp.float32)
    chosen_BL = (role_BL == ROLE_CHOSEN).astype(jnp.float32)
    rejected_BL = (role_BL == ROLE_REJECTED).astype(jnp.float32)
    logp_BL = logp_BL.astype(jnp.float32)

    def per_pair(weight_BL, values_BL):
        return jnp.einsum("bl,bls->bs", weight_BL * values_BL, onehot_BLS).reshape(-1)

    ones_BL = jnp.ones_like(logp_BL)
    logps = jnp.concatenate([per_pair(chosen_BL, logp_BL), per_pair(rejected_BL, logp_BL)])
    ntok = jnp.concatenate([per_pair(chosen_BL, ones_BL), per_pair(rejected_BL, ones_BL)])
    nll_sum = -jnp.sum(chosen_BL * logp_BL)
    nll_count = jnp.sum(chosen_BL)
    return logps, ntok, nll_sum, nll_count
