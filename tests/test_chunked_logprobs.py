"""Response-position, vocabulary-chunked log-probs (issue 8) against full log-softmax oracles.

Golden values come from a float64 numpy log-softmax over the true vocabulary; gradients are
compared with the unchunked jax.nn.log_softmax computation; the memory test checks with XLA's
own memory analysis that the chunked backward does not keep [B, L, V] float32 logits alive.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from plain_oracle import plain_response_logprobs

from almol_jax.data.prefix_sharing import plain_batch, plain_to_indexed
from almol_jax.model.build import build_model
from almol_jax.model.config import ModelConfig
from almol_jax.train.chunked_logprobs import (
    _chunk_size,
    label_logprobs,
    lm_head_weight,
    response_logprobs,
)


def _inputs(seed, b=3, n_lab=5, d=16, vp=384):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    h_BLD = jax.random.normal(k1, (b, n_lab, d), jnp.float32)
    w_DV = jax.random.normal(k2, (d, vp), jnp.float32) / np.sqrt(d) * 3.0
    labels_BL = jax.random.randint(k3, (b, n_lab), 0, 300)
    return h_BLD, w_DV, labels_BL


def _numpy_logprobs(h, w, labels, vocab):
    logits = np.einsum("bld,dv->blv", np.float64(h), np.float64(w))[..., :vocab]
    m = logits.max(-1, keepdims=True)
    lse = m[..., 0] + np.log(np.exp(logits - m).sum(-1))
    return np.take_along_axis(logits, np.asarray(labels)[..., None], -1)[..., 0] - lse


@pytest.mark.parametrize("chunk", [128, 256, 384, 100000])
def test_label_logprobs_golden(chunk):
    h, w, labels = _inputs(0)
    got = label_logprobs(h, w, labels, vocab_size=300, vocab_chunk=chunk)
    np.testing.assert_allclose(
        np.asarray(got), _numpy_logprobs(h, w, labels, 300), rtol=1e-5, atol=1e-5
    )


def test_chunk_size():
    # LLaMA's 32,017 tokens pad to 32,128 = 128 x 251: 4 chunks of 8,064, the last one overlapping
    assert _chunk_size(32128, 8192) == 8064
    assert _chunk_size(384, 256) == 256
    assert _chunk_size(2048, 8192) == 2048
    with pytest.raises(ValueError, match="requested=0"):
        _chunk_size(384, 0)


def test_gradients_equal_unchunked():
    h, w, labels = _inputs(1)

    def full(h, w):
        logits = jnp.einsum("bld,dv->blv", h, w)[..., :300]
        logp = jax.nn.log_softmax(logits, axis=-1)
        label_logp = jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
        return jnp.sum(label_logp * jnp.arange(1.0, 6.0))

    def chunked(h, w):
        return jnp.sum(
            label_logprobs(h, w, labels, vocab_size=300, vocab_chunk=128) * jnp.arange(1.0, 6.0)
        )

    g_full = jax.grad(full, argnums=(0, 1))(h, w)
    g_chunk = jax.grad(chunked, argnums=(0, 1))(h, w)
    for a, b in zip(g_chunk, g_full, strict=True):
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6 * scale)


def test_backward_memory_does_not_hold_full_logits():
    b, n_lab, d, v = 8, 128, 64, 32768  # full fp32 logits: 8*128*32768*4 = 128 MiB
    h = jax.ShapeDtypeStruct((b, n_lab, d), jnp.float32)
    w = jax.ShapeDtypeStruct((d, v), jnp.float32)
    labels = jax.ShapeDtypeStruct((b, n_lab), jnp.int32)

    def full(h, w, labels):
        logp = jax.nn.log_softmax(jnp.einsum("bld,dv->blv", h, w), axis=-1)
        return jnp.sum(jnp.take_along_axis(logp, labels[..., None], -1))

    def chunked(h, w, labels):
        return jnp.sum(label_logprobs(h, w, labels, vocab_size=v, vocab_chunk=2048))

    def temp_bytes(f):
        grad = jax.jit(jax.grad(f, argnums=0))
        return grad.lower(h, w, labels).compile().memory_analysis().temp_size_in_bytes

    full_logits = b * n_lab * v * 4
    assert temp_bytes(full) >= full_logits  # the oracle really holds them
    assert temp_bytes(chunked) < full_logits / 4


@pytest.mark.parametrize("tie", [False, True])
def test_indexed_matches_plain_with_padded_vocab(tie):
    cfg = ModelConfig(
        vocab_size=300,  # padded to 384: the padding columns must not enter the normaliser
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        initializer_range=0.3,
        tie_word_embeddings=tie,
    )
    model = build_model(cfg, rngs=3)
    assert lm_head_weight(model).shape == (32, 384)
    rng = np.random.default_rng(0)
    ids = lambda k: rng.integers(3, 300, k).tolist()  # noqa: E731
    triplets = [([1] + ids(4), ids(3) + [2], ids(5) + [2]), ([1] + ids(2), ids(1) + [2], [2])]
    plain = {k: jnp.asarray(v) for k, v in plain_batch(triplets).items()}
    model_fn = nnx.jit(
        lambda m, b, **kw: response_logprobs(m, b, **kw), static_argnames="vocab_chunk"
    )
    want = plain_response_logprobs(model, plain)
    for share in (True, False):
        indexed = plain_to_indexed(plain_batch(triplets), share_prefix=share)
        batch = {k: jnp.asarray(v) for k, v in indexed.items()}
        for chunk in (128, 8192):
            got = model_fn(model, batch, vocab_chunk=chunk)
            for a, b in zip(got, want, strict=True):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
