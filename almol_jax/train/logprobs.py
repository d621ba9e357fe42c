"""Per-token log-probabilities of the response tokens, summed per row, and the NLL sums.

`response_logprobs(model, batch)` is the one boundary between the network and the losses: it
returns, for the plain batch layout of docs/DESIGN.md (rows 0..B-1 chosen, B..2B-1 rejected),

  logps_sum[2B]  sum over response tokens of log p(token | prefix)   (float32)
  ntok[2B]       number of response tokens per row                    (float32)
  nll_sum        sum of -log p over the response tokens of the CHOSEN rows
  nll_count      number of those tokens

The label log-prob is gathered from a float32 log-softmax (computed as logit - logsumexp). Issue 8
may replace the body (logits only at response positions, vocabulary chunks) without changing the
signature.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from almol_jax.data.prefix_sharing import is_indexed_batch
from almol_jax.train.chunked_logprobs import indexed_response_logprobs


def token_logprobs(logits_BTV: jax.Array, input_ids_BT: jax.Array) -> jax.Array:
    """log p(input_ids[:, t] | prefix) for t >= 1 from logits at t-1: float32 [B, T-1]."""
    logits_BtV = logits_BTV[:, :-1].astype(jnp.float32)
    labels_Bt = input_ids_BT[:, 1:]
    label_logit_Bt = jnp.take_along_axis(logits_BtV, labels_Bt[..., None], axis=-1)[..., 0]
    return label_logit_Bt - jax.nn.logsumexp(logits_BtV, axis=-1)


def response_logprobs(model, batch) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(logps_sum[2B], ntok[2B], nll_sum, nll_count) of one batch; see the module docstring."""
    if is_indexed_batch(batch):  # prefix-shared / packed rows: response positions, vocab chunks
        return indexed_response_logprobs(model, batch)
    input_ids_BT = batch["input_ids"]
    if input_ids_BT.shape[0] % 2:
        raise ValueError(
            f"batch has {input_ids_BT.shape[0]=} rows; expected chosen + rejected (2B)"
        )
    logits_BTV = model(
        input_ids_BT,
        attention_mask_BT=batch["attention_mask"],
        positions_BT=batch.get("positions"),
        segment_ids_BT=batch.get("segment_ids"),
    )
    logp_Bt = token_logprobs(logits_BTV, input_ids_BT)
    mask_Bt = batch["loss_mask"][:, 1:].astype(jnp.float32)
    logps_sum_B = jnp.sum(logp_Bt * mask_Bt, axis=-1)
    ntok_B = jnp.sum(mask_Bt, axis=-1)
    num_pairs = input_ids_BT.shape[0] // 2
    nll_sum = -jnp.sum(logp_Bt[:num_pairs] * mask_Bt[:num_pairs])
    nll_count = jnp.sum(mask_Bt[:num_pairs])
    return logps_sum_B, ntok_B, nll_sum, nll_count
