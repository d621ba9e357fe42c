"""The plain batch layout as a test oracle: full-logits log-probs and the objective on them.

Training runs only the indexed layout (almol_jax.data.prefix_sharing; response positions, vocab
chunks, almol_jax.train.chunked_logprobs). This module keeps the older, independent path the
equivalence tests compare it with: the plain layout of docs/DESIGN.md (rows 0..B-1 prompt +
chosen, rows B..2B-1 prompt + rejected, loss_mask on the response tokens; what
`prefix_sharing.plain_batch` builds), scored with the model's full [2B, T, V] logits and a float32
log-softmax, with the same losses (almol_jax.train.step.pair_loss) and DPO reference.

`to_indexed(plain, share_prefix)` converts a plain batch to the indexed layout the train step
takes (jnp arrays): prefix-shared rows, or unshared rows of two groups.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from almol_jax.data.prefix_sharing import plain_to_indexed
from almol_jax.train import losses
from almol_jax.train import step as step_lib


def token_logprobs(logits_BTV: jax.Array, input_ids_BT: jax.Array) -> jax.Array:
    """log p(input_ids[:, t] | prefix) for t >= 1 from logits at t-1: float32 [B, T-1]."""
    logits_BtV = logits_BTV[:, :-1].astype(jnp.float32)
    labels_Bt = input_ids_BT[:, 1:]
    label_logit_Bt = jnp.take_along_axis(logits_BtV, labels_Bt[..., None], axis=-1)[..., 0]
    return label_logit_Bt - jax.nn.logsumexp(logits_BtV, axis=-1)


def plain_response_logprobs(model, batch):
    """(logps_sum[2B], ntok[2B], nll_sum, nll_count) of a plain batch, from the full logits."""
    input_ids_BT = batch["input_ids"]
    assert input_ids_BT.shape[0] % 2 == 0, "plain batches hold chosen + rejected rows (2B)"
    logits_BTV = model(
        input_ids_BT,
        attention_mask_BT=batch["attention_mask"],
        positions_BT=batch.get("positions"),
    )
    logp_Bt = token_logprobs(logits_BTV, input_ids_BT)
    mask_Bt = batch["loss_mask"][:, 1:].astype(jnp.float32)
    num_pairs = input_ids_BT.shape[0] // 2
    return (
        jnp.sum(logp_Bt * mask_Bt, axis=-1),
        jnp.sum(mask_Bt, axis=-1),
        -jnp.sum(logp_Bt[:num_pairs] * mask_Bt[:num_pairs]),
        jnp.sum(mask_Bt[:num_pairs]),
    )


def plain_pair_mask(batch) -> jax.Array:
    num_pairs = batch["input_ids"].shape[0] // 2
    if "pair_mask" in batch:
        return jnp.asarray(batch["pair_mask"], jnp.float32)
    return jnp.ones((num_pairs,), jnp.float32)


def plain_normalisers(batch) -> tuple[jax.Array, jax.Array]:
    """(real pairs, chosen response tokens) of a plain batch, each at least 1."""
    num_pairs = batch["input_ids"].shape[0] // 2
    nll_tokens = jnp.sum(jnp.asarray(batch["loss_mask"])[:num_pairs, 1:].astype(jnp.float32))
    return jnp.maximum(jnp.sum(plain_pair_mask(batch)), 1.0), jnp.maximum(nll_tokens, 1.0)


def plain_objective_terms(graphdef, trainable, frozen, batch, settings, deterministic=False):
    """(loss, metrics) of a whole plain batch: the train step's objective on the oracle log-probs."""
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    model = nnx.merge(graphdef, trainable, frozen)
    if deterministic:
        model = nnx.view(model, deterministic=True, raise_if_not_found=False)
    logps, ntok, nll_sum, nll_count = plain_response_logprobs(model, batch)
    ref = None
    if losses.needs_reference(settings.objective):
        ref_model = step_lib.reference_model(graphdef, trainable, frozen)
        ref = jax.lax.stop_gradient(plain_response_logprobs(ref_model, batch)[0])
    return step_lib.pair_loss(
        logps,
        ntok,
        nll_sum,
        nll_count,
        plain_pair_mask(batch),
        settings,
        plain_normalisers(batch),
        ref,
    )


def plain_loss_metrics_grads(graphdef, trainable, frozen, batch, settings):
    """(loss, metrics, gradients w.r.t. `trainable`) of a plain batch (the oracle)."""

    def f(tr):
        return plain_objective_terms(graphdef, tr, frozen, batch, settings)

    (loss, metrics), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(trainable)
    return loss, metrics, grads


def to_indexed(plain, *, share_prefix: bool = True, **kw) -> dict[str, jax.Array]:
    """A plain batch in the indexed layout (jnp arrays), prefix-shared or not."""
    return {
        k: jnp.asarray(v)
        for k, v in plain_to_indexed(plain, share_prefix=share_prefix, **kw).items()
    }
