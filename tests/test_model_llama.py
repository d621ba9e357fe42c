"""LlamaForCausalLM invariants: KV cache = full forward, causality, masks, padding, remat, presets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_fixtures import forward

from almol_jax.model import ModelConfig, build_model, init_cache
from almol_jax.model.build import abstract_model
from almol_jax.ops.attention import NEG_INF

# GQA, vocab not a multiple of 128, larger init so logits are far from uniform
CFG = ModelConfig.preset("tiny", vocab_size=300, initializer_range=0.1)


@pytest.fixture(scope="module")
def model():
    return build_model(CFG, rngs=0)


def _batch(seed=0, b=3, t=8):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, CFG.vocab_size, size=(b, t)).astype(np.int32)
    mask = np.ones((b, t), np.int32)
    mask[1:, :3] = 0  # left padding
    mask[2:, :5] = 0
    ids[mask == 0] = 0
    return ids, mask


def test_cached_decoding_equals_full_forward(model):
    """Prefill a left-padded batch, decode 16 greedy steps; every logit equals the full pass."""
    ids, mask = _batch()
    b, t0, steps = ids.shape[0], ids.shape[1], 16
    cache = init_cache(CFG, b, t0 + steps, jnp.float32)
    prefill, cache = forward(model, ids, mask, cache=cache)
    step_logits, tokens = [prefill[:, -1]], []
    for _ in range(steps):
        tok = step_logits[-1].argmax(-1).astype(np.int32)[:, None]
        tokens.append(tok)
        logits, cache = forward(model, tok, np.ones_like(tok), cache=cache)
        step_logits.append(logits[:, -1])
    assert int(cache.end_index) == t0 + steps
    full_ids = np.concatenate([ids, *tokens], axis=1)
    full_mask = np.concatenate([mask, np.ones((b, steps), np.int32)], axis=1)
    full = forward(model, full_ids, full_mask)
    valid = mask.astype(bool)
    np.testing.assert_allclose(prefill[valid], full[:, :t0][valid], rtol=0, atol=1e-5)
    cached = np.stack(step_logits, axis=1)  # logits at positions t0-1 .. t0+steps-1
    np.testing.assert_allclose(cached, full[:, t0 - 1 :], rtol=0, atol=1e-5)
    assert len({tuple(t[:, 0]) for t in tokens}) > 1  # a real decode, not one repeated token


def test_causal_and_padding_invariance(model):
    ids, mask = _batch(1)
    base = forward(model, ids, mask)
    assert np.isfinite(base).all()  # fp32, padding rows included
    later = ids.copy()
    later[:, 6:] = 7  # changing future tokens leaves earlier logits (padding rows too) unchanged
    np.testing.assert_allclose(forward(model, later, mask)[:, :6], base[:, :6], rtol=0, atol=1e-6)
    padded = ids.copy()
    padded[mask == 0] = 11  # padding token values never matter
    out = forward(model, padded, mask)
    valid = mask.astype(bool)
    np.testing.assert_allclose(out[valid], base[valid], rtol=0, atol=1e-6)
    # a left-padded row equals the same tokens unpadded
    alone = forward(model, ids[2:3, 5:], mask[2:3, 5:])
    np.testing.assert_allclose(alone[0], base[2, 5:], rtol=0, atol=1e-5)


def test_fully_masked_rows_are_finite():
    """Left-padding query rows see no valid key; no NaN in bf16 (fp32: the causal test)."""
    ids, mask = _batch(2)
    for dtype in ("bfloat16",):
        m = build_model(CFG.replace(dtype=dtype, param_dtype=dtype), rngs=1)
        out = forward(m, ids, mask)
        assert np.isfinite(out).all(), dtype
        h = nnx.jit(lambda m, i, a: m.hidden_states(i, a))(m, ids, mask)
        assert np.isfinite(np.asarray(h, np.float32)).all(), dtype


def test_padded_vocab_logits(model):
    ids, mask = _batch(3)
    assert CFG.padded_vocab_size == 384
    h = nnx.jit(lambda m, i, a: m.hidden_states(i, a))(model, ids, mask)
    padded = np.asarray(nnx.jit(lambda m, h: m.lm_head_logits(h))(model, h))
    assert padded.shape == (3, 8, 384) and padded.dtype == np.float32
    assert (padded[..., 300:] == NEG_INF).all()
    np.testing.assert_allclose(padded[..., :300], forward(model, ids, mask), rtol=0, atol=1e-6)
    # padded columns carry no probability mass
    probs = np.asarray(jax.nn.softmax(padded, axis=-1))
    assert (probs[..., 300:] == 0).all()


def test_segment_ids_equal_separate_sequences(model):
    ids, _ = _batch(4, b=2, t=5)
    packed = np.concatenate([ids[0], ids[1]])[None]
    seg = np.array([[1] * 5 + [2] * 5], np.int32)
    pos = np.array([list(range(5)) * 2], np.int32)
    out = forward(model, packed, None, segment_ids_BT=seg, positions_BT=pos)
    sep = forward(model, ids, None)
    np.testing.assert_allclose(out[0, :5], sep[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out[0, 5:], sep[1], rtol=0, atol=1e-5)


def test_extra_mask_acts_like_key_padding(model):
    ids, mask = _batch(5)
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0).astype(np.int32)
    key_mask_BTS = np.broadcast_to(mask[:, None, :].astype(bool), (3, 8, 8))
    out = forward(model, ids, np.ones_like(mask), positions_BT=pos, mask_BTS=key_mask_BTS)
    ref = forward(model, ids, mask)
    valid = mask.astype(bool)
    np.testing.assert_allclose(out[valid], ref[valid], rtol=0, atol=1e-6)
    blocked = np.ones((3, 8, 8), bool)
    blocked[:, :, 0] = False  # hiding key 0 changes later rows of the full row
    assert np.abs(forward(model, ids, mask, mask_BTS=blocked)[0, 1:] - ref[0, 1:]).max() > 1e-3


@pytest.mark.parametrize("remat", ["none", "full"])
def test_output_index_equals_gathered_full_forward(remat):
    """Last layer queried at some rows only: values and LoRA gradients equal the full forward's
    hidden states gathered at those rows (segments, padding and repeated indices included)."""
    from almol_jax.model.lora import LoRAParam
    from almol_jax.model.lora_config import LoraConfig

    ids, mask = _batch(9, b=3, t=8)
    seg = np.array([[1] * 4 + [2] * 4] * 3, np.int32)
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0).astype(np.int32)
    index = np.array([[0, 3, 4, 7, 7], [5, 6, 7, 2, 3], [6, 7, 5, 0, 1]], np.int32)
    m = build_model(CFG.replace(remat=remat), lora=LoraConfig(r=4, alpha=8.0), rngs=3)
    graphdef, lora, rest = nnx.split(m, LoRAParam, ...)
    lora = jax.tree.map(lambda x: x + 0.05, lora)  # B is zero at init: make adapters matter
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, CFG.hidden_size)))

    def hidden(lora, output_index):
        model = nnx.merge(graphdef, lora, rest)
        h = model.hidden_states(
            ids, mask, positions_BT=pos, segment_ids_BT=seg, output_index_BL=output_index
        )
        return h if output_index is not None else jnp.take_along_axis(h, index[..., None], 1)

    def loss(lora, output_index):
        return jnp.sum(hidden(lora, output_index) * weights)

    sub, full = hidden(lora, index), hidden(lora, None)
    assert sub.shape == (3, 5, CFG.hidden_size)
    np.testing.assert_allclose(sub, full, rtol=0, atol=2e-6)
    g_sub = jax.grad(loss)(lora, index)
    g_full = jax.grad(loss)(lora, None)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_sub), strict=True):
        # float32 sums in another order: within 1e-5 of each gradient's own scale
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(np.abs(a).max()))


def test_output_index_with_cache_keeps_every_key(model):
    """A prefill queried at the last row only: same hidden state and same cache as in full."""
    ids, mask = _batch(10)
    last = np.full((3, 1), ids.shape[1] - 1, np.int32)
    h_full, c_full = model.hidden_states(ids, mask, cache=init_cache(CFG, 3, 8, jnp.float32))
    h_last, c_last = model.hidden_states(
        ids, mask, cache=init_cache(CFG, 3, 8, jnp.float32), output_index_BL=last
    )
    np.testing.assert_allclose(h_last[:, 0], h_full[:, -1], rtol=0, atol=2e-6)
    for a, b in zip(jax.tree.leaves(c_full), jax.tree.leaves(c_last), strict=True):
        np.testing.assert_array_equal(a, b)


def test_remat_same_values_and_grads():
    ids, mask = _batch(6)
    m0 = build_model(CFG, rngs=2)

    def loss(model):
        return model(ids, mask).std()

    l0, g0 = nnx.jit(nnx.value_and_grad(loss))(m0)
    for remat in ("full", "dots", "offload"):
        m1 = build_model(CFG.replace(remat=remat), rngs=2)
        nnx.update(m1, nnx.state(m0))
        l1, g1 = nnx.jit(nnx.value_and_grad(loss))(m1)
        np.testing.assert_allclose(l1, l0, rtol=1e-6, atol=0)
        for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


def test_kernel_tables_match(model):
    """The portable kernels and the CPU wing's give the same logits (the MHA/GQA, prefix-shared,
    gradient comparison: test_kernel_tables.py)."""
    from almol_jax.cpu import attention_kernel

    if not attention_kernel.available():
        pytest.skip(f"CPU attention kernel unavailable: {attention_kernel.unavailable_reason()}")
    ids, mask = _batch(7)
    outs = []
    for kernels in ("portable", "cpu"):
        m = build_model(CFG.replace(kernels=kernels), rngs=0)
        nnx.update(m, nnx.state(model))
        outs.append(forward(m, ids, mask))
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=5e-6)


def test_presets_sizes():
    _, abstract = abstract_model(ModelConfig.preset("tiny"))
    n = sum(x.size for x in jax.tree.leaves(nnx.filter_state(abstract, nnx.Param)))
    assert 0.1e6 < n < 1.5e6
    m7 = ModelConfig.preset("meditron-7b")
    assert (m7.vocab_size, m7.padded_vocab_size, m7.head_dim) == (32017, 32128, 128)
    assert (m7.num_key_value_heads, m7.rms_norm_eps, m7.rope_theta) == (32, 1e-5, 1e4)
    assert not m7.tie_word_embeddings and (m7.bos_token_id, m7.eos_token_id) == (1, 2)
    assert ModelConfig.preset("cpo-small", vocab_size=1000).vocab_size == 1000
    assert ModelConfig.preset("cpo-d512").intermediate_size == 1376
    with pytest.raises(ValueError, match="'nope'"):
        ModelConfig.preset("nope")
    with pytest.raises(ValueError, match="num_key_value_heads=3"):
        ModelConfig(num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="rope_type='yarn'"):
        ModelConfig(rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="remat='some'"):
        ModelConfig(remat="some")
