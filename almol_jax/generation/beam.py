"""Beam search with the KV cache, a static-shape port of transformers' (v5) `_beam_search`.

Same algorithm step for step, so that on the same weights it returns the same sequences as
`LlamaForCausalLM.generate(num_beams=W, do_sample=False)`: per row keep 2W candidates from the
W x V continuations, the best W unfinished ones run on, finished ones (EOS or max length) enter a
W-slot pool scored by sum log-prob / generated_length ** length_penalty, and the loop ends when
the heuristic says no running beam can beat the pool (`early_stopping=False`), when every pool is
full (`early_stopping=True`), or at `max_new_tokens`. Beams live on the batch axis (B*W rows);
the cache is reordered each step with one gather along its batch axis.
Shares the prefill and one-token step with the greedy decoder (`kv_steps.py`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from almol_jax.generation import grammar_tables
from almol_jax.generation.kv_steps import (
    eos_ids_of,
    first_eos_lengths,
    pad_id_of,
    prefill,
    split_model,
    step,
)
from almol_jax.generation.settings import DecodeSettings

NEG = -1.0e9


def gather_cache_rows(cache, rows_R: jax.Array, batch: int):
    """Selects batch rows of a KV cache pytree: every leaf with a batch axis of size `batch`.

    The cache layout is per-layer k/v `[B, K, S, H]` and `key_valid_BS` (batch on axis 0 of
    every array) and a scalar `end_index` (kept as is).
    """

    def take(leaf):
        if leaf.ndim == 0:
            return leaf
        axis = 0
        if leaf.shape[axis] != batch:
            raise ValueError(f"cache leaf of shape {leaf.shape} has no batch axis of size {batch}")
        return jnp.take(leaf, rows_R, axis=axis)

    return jax.tree.map(take, cache)


def _take_beams(x_BW_, idx_BK):
    """x[b, idx[b, k], ...] for every b, k (HF's _gather_beams)."""
    return jnp.take_along_axis(
        x_BW_, idx_BK.reshape(idx_BK.shape + (1,) * (x_BW_.ndim - 2)), axis=1
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "settings", "eos_ids", "pad_id"))
def _beam_jit(
    graphdef, states, input_ids_BP, attention_mask_BP, grammar, *, settings, eos_ids, pad_id
):
    model = nnx.merge(graphdef, *states)
    batch, prompt_len = input_ids_BP.shape
    width, max_new = settings.num_beams, settings.max_new_tokens
    keep = max(2, 1 + len(eos_ids)) * width
    lp, early = settings.length_penalty, settings.early_stopping
    eos_arr = jnp.asarray(eos_ids, dtype=jnp.int32)
    top_mask_K = jnp.arange(keep) < width

    # Every prompt row repeated W times (HF's repeat_interleave), prefilled together.
    ids_RP = jnp.repeat(input_ids_BP, width, axis=0)
    mask_RP = jnp.repeat(attention_mask_BP, width, axis=0)
    logits_RV, cache, lengths_R = prefill(model, ids_RP, mask_RP, prompt_len + max_new)
    vocab = logits_RV.shape[-1]

    running_BWN = jnp.full((batch, width, max_new), pad_id, dtype=jnp.int32)
    running_scores_BW = jnp.zeros((batch, width), jnp.float32).at[:, 1:].set(NEG)
    seqs_BWN = running_BWN
    scores_BW = jnp.full((batch, width), NEG, jnp.float32)
    finished_BW = jnp.zeros((batch, width), bool)
    unsatisfied_B1 = jnp.ones((batch, 1), bool)
    go = jnp.bool_(True)
    # With the SMILES grammar on, the carry also holds each running beam's automaton state.
    constrained = settings.smiles_grammar

    def body(carry):
        t, go, logits_RV, cache, running_BWN, running_scores_BW = carry[:6]
        seqs_BWN, scores_BW, finished_BW, unsatisfied_B1 = carry[6:10]
        logp_RV = jax.nn.log_softmax(logits_RV, axis=-1)
        if constrained:  # HF applies logits processors to the log-probs in beam search
            logp_RV = grammar_tables.mask_logits(grammar, carry[10], logp_RV, max_new - t)
        logp_BWV = logp_RV.reshape(batch, width, vocab)
        logp_BX = (logp_BWV + running_scores_BW[:, :, None]).reshape(batch, width * vocab)
        topk_logp_BK, topk_idx_BK = jax.lax.top_k(logp_BX, keep)
        parent_BK = topk_idx_BK // vocab
        token_BK = (topk_idx_BK % vocab).astype(jnp.int32)
        topk_seq_BKN = _take_beams(running_BWN, parent_BK)
        topk_seq_BKN = jax.lax.dynamic_update_slice(topk_seq_BKN, token_BK[:, :, None], (0, 0, t))
        hits_BK = jnp.isin(token_BK, eos_arr) | (t + 1 >= max_new)

        # Unfinished candidates run on.
        run_logp_BK = topk_logp_BK + hits_BK.astype(jnp.float32) * NEG
        next_BW = jax.lax.top_k(run_logp_BK, width)[1]
        running_BWN = _take_beams(topk_seq_BKN, next_BW)
        running_scores_BW = _take_beams(run_logp_BK, next_BW)
        parent_rows_R = (
            _take_beams(parent_BK, next_BW) + jnp.arange(batch)[:, None] * width
        ).reshape(-1)

        # Finished candidates among the top W enter the pool.
        just_finished_BK = hits_BK & top_mask_K[None, :]
        fin_logp_BK = topk_logp_BK / ((t + 1).astype(jnp.float32) ** lp)
        full_B1 = jnp.all(finished_BW, axis=-1, keepdims=True) & early
        fin_logp_BK = fin_logp_BK + full_B1.astype(jnp.float32) * NEG
        fin_logp_BK = fin_logp_BK + (~unsatisfied_B1).astype(jnp.float32) * NEG
        fin_logp_BK = fin_logp_BK + (~just_finished_BK).astype(jnp.float32) * NEG
        merged_seq = jnp.concatenate([seqs_BWN, topk_seq_BKN], axis=1)
        merged_scores = jnp.concatenate([scores_BW, fin_logp_BK], axis=1)
        merged_fin = jnp.concatenate([finished_BW, just_finished_BK], axis=1)
        best_BW = jax.lax.top_k(merged_scores, width)[1]
        seqs_BWN = _take_beams(merged_seq, best_BW)
        scores_BW = _take_beams(merged_scores, best_BW)
        finished_BW = _take_beams(merged_fin, best_BW)

        # Stopping heuristic (HF's _check_early_stop_heuristic with cur_len - prompt_len = t + 1).
        best_running_B1 = running_scores_BW[:, :1] / ((t + 1).astype(jnp.float32) ** lp)
        worst_fin_BW = jnp.where(finished_BW, jnp.min(scores_BW, axis=1, keepdims=True), NEG)
        unsatisfied_B1 = unsatisfied_B1 & jnp.any(
            best_running_B1 > worst_fin_BW, axis=-1, keepdims=True
        )
        go = jnp.any(unsatisfied_B1) & ~(jnp.all(finished_BW) & (early is True)) & ~jnp.all(hits_BK)

        # Reorder the cache to the surviving parents and feed each running beam's new token.
        cache = gather_cache_rows(cache, parent_rows_R, batch * width)
        token_R = running_BWN[:, :, t].reshape(-1)
        logits_RV, cache = step(model, token_R, lengths_R + t, cache)
        out = (t + 1, go, logits_RV, cache, running_BWN, running_scores_BW)
        out += (seqs_BWN, scores_BW, finished_BW, unsatisfied_B1)
        if constrained:
            parents = jax.tree.map(lambda x: x[parent_rows_R], carry[10])
            out += (grammar_tables.advance(grammar, parents, token_R),)
        return out

    def cond(carry):
        return (carry[0] < max_new) & carry[1]

    carry = (jnp.int32(0), go, logits_RV, cache, running_BWN, running_scores_BW)
    carry += (seqs_BWN, scores_BW, finished_BW, unsatisfied_B1)
    carry += (grammar_tables.initial_states(batch * width),) if constrained else ()
    carry = jax.lax.while_loop(cond, body, carry)
    pool_BWN = carry[6]
    lengths_BW = first_eos_lengths(pool_BWN.reshape(batch * width, max_new), eos_ids)
    lengths_BW = lengths_BW.reshape(batch, width)
    pool_BWN = jnp.where(jnp.arange(max_new) < lengths_BW[:, :, None], pool_BWN, pad_id)
    return pool_BWN, lengths_BW, carry[7], carry[8]


class BeamPool(NamedTuple):
    """Each row's finished hypotheses, best first (HF's beam hypotheses pool, as numpy).

    Slot w of row b holds a hypothesis when `finished[b, w]`; the finished slots come first,
    ranked by `scores` (sum of log-probs / generated length ** length_penalty, HF's
    `sequences_scores`). `tokens[b, w, :lengths[b, w]]` is its output (EOS included when it
    stopped on one), pad id after it. Slot 0 is beam_search's answer.
    """

    tokens: np.ndarray  # [B, W, N] int32
    lengths: np.ndarray  # [B, W] int32
    scores: np.ndarray  # [B, W] float32
    finished: np.ndarray  # [B, W] bool

    def hypotheses(self, row: int) -> list[tuple[list[int], float]]:
        """Row `row`'s finished hypotheses, best first: (token ids incl. EOS, score)."""
        return [
            (
                [int(t) for t in self.tokens[row, w, : self.lengths[row, w]]],
                float(self.scores[row, w]),
            )
            for w in range(self.tokens.shape[1])
            if self.finished[row, w]
        ]


def beam_pool(
    model,
    input_ids_BP,
    attention_mask_BP,
    *,
    settings: DecodeSettings,
    adapters: bool = True,
    split=None,
    eos_ids: tuple[int, ...] | None = None,
    grammar: grammar_tables.GrammarTables | None = None,
) -> BeamPool:
    """Beam search over left-padded prompts, returning every row's whole pool of finished
    hypotheses (`grammar`: the SMILES grammar tables when `settings.smiles_grammar`, as in
    decode_tokens). HF's `generate(num_beams=W, num_return_sequences=W)` returns the same."""
    settings = settings.validate()
    if settings.smiles_grammar and grammar is None:
        raise ValueError("smiles_grammar=True needs the grammar tables (grammar=build_tables(...))")
    input_ids_BP = jnp.asarray(input_ids_BP, dtype=jnp.int32)
    attention_mask_BP = jnp.asarray(attention_mask_BP, dtype=jnp.int32)
    if input_ids_BP.shape != attention_mask_BP.shape:
        raise ValueError(f"{input_ids_BP.shape=} != {attention_mask_BP.shape=}")
    graphdef, states = split if split is not None else split_model(model, adapters=adapters)
    # Fields that do not change the program are fixed, so they never force a recompile.
    static = settings.replace(
        batch_size=1, prompt_buckets=(1,), method="beam", smiles_rdkit_check=True
    )
    pool = _beam_jit(
        graphdef,
        states,
        input_ids_BP,
        attention_mask_BP,
        grammar if settings.smiles_grammar else None,
        settings=static,
        eos_ids=tuple(eos_ids) if eos_ids is not None else eos_ids_of(model.config),
        pad_id=pad_id_of(model.config),
    )
    return BeamPool(*(np.asarray(x) for x in pool))


def beam_search(
    model,
    input_ids_BP,
    attention_mask_BP,
    *,
    settings: DecodeSettings,
    adapters: bool = True,
    split=None,
    eos_ids: tuple[int, ...] | None = None,
    grammar: grammar_tables.GrammarTables | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Beam search over left-padded prompts: the best hypothesis of each row's pool (beam_pool).

    Returns (best tokens `[B, N]` int32 padded after EOS, lengths `[B]`, scores `[B]` float32:
    the sum of log-probs divided by length ** length_penalty, as HF's `sequences_scores`).
    """
    pool = beam_pool(
        model,
        input_ids_BP,
        attention_mask_BP,
        settings=settings,
        adapters=adapters,
        split=split,
        eos_ids=eos_ids,
        grammar=grammar,
    )
    return pool.tokens[:, 0], pool.lengths[:, 0], pool.scores[:, 0]
