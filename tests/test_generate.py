"""Decoding tests: parity with transformers' generate (greedy and beam), sampling invariants,
adapters on / off / merged, and the text-level bucketing API.

The oracle models are random transformers LlamaForCausalLM checkpoints saved to tmp_path and
loaded with almol_jax.load_model, so each equivalence compares two different implementations.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import transformers

torch = pytest.importorskip(
    "torch", reason="torch is a test-only dependency (requirements-dev.txt), not installed here"
)

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from hf_fixtures import hf_generate, left_padded_prompts  # noqa: E402

from almol_jax import load_model  # noqa: E402
from almol_jax.generation import (  # noqa: E402
    DecodeSettings,
    decode_tokens,
    encode_prompts,
    filter_logits,
    generate_texts,
    generate_token_ids,
)
from almol_jax.model import LlamaForCausalLM, LoraConfig, ModelConfig, merge_lora  # noqa: E402

VOCAB = 96
PROMPT_LENGTHS = (7, 12, 3, 10)


def _hf_model(tmp_path, seed=0):
    """A random fp32 HF LLaMA (vocab 96) with weights large enough for peaky, varied outputs."""
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.copy_(0.15 * torch.randn_like(p))
    path = tmp_path / "hf"
    model.save_pretrained(path, safe_serialization=True)
    return model, path


def _prompts(lengths=PROMPT_LENGTHS, seed=0):
    return left_padded_prompts(lengths, VOCAB, seed)


def _hf_generate(model, ids, mask, eos, **kwargs):
    """HF's generated tokens [B, N] (after the prompt), pad 0 after each row's EOS."""
    return hf_generate(model, ids, mask, eos, **kwargs)[:, ids.shape[1] :].numpy()


def _rows(tokens, lengths):
    return [list(map(int, t[:n])) for t, n in zip(tokens, lengths, strict=True)]


def _hf_rows(tokens, eos):
    rows = []
    for t in tokens:
        row = list(map(int, t))
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(HF model, our model on the same weights, an EOS id that rows hit mid-way)."""
    tmp = tmp_path_factory.mktemp("gen")
    hf, path = _hf_model(tmp)
    ours = load_model(str(path), dtype="float32")
    ids, mask = _prompts()
    free = _hf_generate(hf, ids, mask, eos=None, max_new_tokens=32, do_sample=False)
    # The token row 0 produces at step 9: rows stop at different steps with it as EOS.
    eos = int(free[0, 9])
    ours.config = ours.config.replace(eos_token_id=eos)
    return hf, ours, eos


def test_greedy_equals_hf_generate(pair):
    hf, ours, eos = pair
    ids, mask = _prompts()
    expected = _hf_rows(
        _hf_generate(hf, ids, mask, eos=eos, max_new_tokens=32, do_sample=False), eos
    )
    tokens, lengths = decode_tokens(ours, ids, mask, settings=DecodeSettings(max_new_tokens=32))
    got = _rows(tokens, lengths)
    assert got == expected
    assert any(len(r) < 32 for r in got), "no row stopped at EOS: the test lost its point"
    assert tokens.shape == (len(PROMPT_LENGTHS), 32)
    for row, n in zip(tokens, lengths, strict=True):  # pad id (0) after each row's EOS
        assert set(row[n:].tolist()) <= {0}


@pytest.mark.parametrize(("early_stopping", "length_penalty"), [(False, 1.0), (True, 0.0)])
def test_beam_search_equals_hf(pair, early_stopping, length_penalty):
    hf, ours, _ = pair
    ids, mask = _prompts()
    kwargs = dict(num_beams=3, max_new_tokens=16, do_sample=False, early_stopping=early_stopping)
    # EOS = a token of row 0's unconstrained best beam: beams then finish at different steps.
    free = _hf_generate(hf, ids, mask, eos=None, length_penalty=length_penalty, **kwargs)
    eos = int(free[0, 5])
    expected = _hf_rows(
        _hf_generate(hf, ids, mask, eos=eos, length_penalty=length_penalty, **kwargs), eos
    )
    settings = DecodeSettings(
        method="beam",
        num_beams=3,
        max_new_tokens=16,
        early_stopping=early_stopping,
        length_penalty=length_penalty,
    )
    tokens, lengths = decode_tokens(ours, ids, mask, settings=settings, eos_ids=(eos,))
    assert _rows(tokens, lengths) == expected
    if length_penalty == 0.0:  # without a length bonus the EOS-finished beam wins for row 0
        assert lengths[0] == 6, "no beam finished on EOS: the test lost its point"


def test_beam_width_one_with_early_stopping_is_greedy(pair):
    _, ours, _ = pair
    ids, mask = _prompts()
    greedy = decode_tokens(ours, ids, mask, settings=DecodeSettings(max_new_tokens=32))
    beam = decode_tokens(
        ours,
        ids,
        mask,
        settings=DecodeSettings(method="beam", num_beams=1, early_stopping=True, max_new_tokens=32),
    )
    np.testing.assert_array_equal(beam[0], greedy[0])
    np.testing.assert_array_equal(beam[1], greedy[1])


def test_sampling_reproducible_and_top_k_one_is_greedy(pair):
    _, ours, _ = pair
    ids, mask = _prompts()
    sample = DecodeSettings(method="sample", temperature=1.5, max_new_tokens=32)
    a = decode_tokens(ours, ids, mask, settings=sample, key=jax.random.key(7))
    b = decode_tokens(ours, ids, mask, settings=sample, key=jax.random.key(7))
    c = decode_tokens(ours, ids, mask, settings=sample, key=jax.random.key(8))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    greedy = decode_tokens(ours, ids, mask, settings=DecodeSettings(max_new_tokens=32))
    top1 = decode_tokens(ours, ids, mask, settings=sample.replace(top_k=1), key=jax.random.key(3))
    np.testing.assert_array_equal(top1[0], greedy[0])
    with pytest.raises(ValueError, match="key"):
        decode_tokens(ours, ids, mask, settings=sample)


def test_filters_match_hf_logits_warpers():
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(0)
    logits = (3.0 * rng.standard_normal((5, 50))).astype(np.float32)
    settings = DecodeSettings(method="sample", temperature=0.7, top_k=20, top_p=0.8)
    ours = np.asarray(filter_logits(jnp.asarray(logits), settings))
    scores = torch.tensor(logits)
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(20), TopPLogitsWarper(0.8)):
        scores = warper(None, scores)
    theirs = scores.numpy()
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
    kept = np.isfinite(ours)
    np.testing.assert_allclose(ours[kept], theirs[kept], rtol=1e-6, atol=1e-6)
    assert 0 < kept.sum() < kept.size


def test_padded_vocab_columns_are_never_sampled():
    config = ModelConfig.preset("tiny", vocab_size=50, vocab_multiple=64, eos_token_id=2)
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(0))
    ids, mask = _prompts(lengths=(5, 8))
    settings = DecodeSettings(method="sample", temperature=50.0, max_new_tokens=64)
    tokens, lengths = decode_tokens(model, ids, mask, settings=settings, key=jax.random.key(0))
    generated = np.concatenate([t[:n] for t, n in zip(tokens, lengths, strict=True)])
    assert generated.max() < 50 and len(generated) > 40


def _lora_model():
    config = ModelConfig.preset("tiny", vocab_size=80, eos_token_id=2, initializer_range=0.2)
    model = LlamaForCausalLM(config, lora=LoraConfig(r=4, alpha=8.0), rngs=nnx.Rngs(1))
    key = jax.random.key(5)
    for _, var in nnx.iter_graph(model):  # non-zero B so the adapters change the outputs
        if isinstance(var, nnx.Variable) and type(var).__name__ == "LoRAParam":
            key, sub = jax.random.split(key)
            var.value = 0.3 * jax.random.normal(sub, var.value.shape)
    return model


def test_adapters_off_and_merged_weights():
    model = _lora_model()
    ids, mask = _prompts(lengths=(6, 9, 4))
    settings = DecodeSettings(max_new_tokens=16)
    with_adapters = decode_tokens(model, ids, mask, settings=settings)[0]
    without = decode_tokens(model, ids, mask, settings=settings, adapters=False)[0]
    assert not np.array_equal(with_adapters, without)

    # Base alone: the same base weights in a model without adapters.
    base = LlamaForCausalLM(model.config, rngs=nnx.Rngs(1))
    nnx.update(base, nnx.state(model, nnx.Param))
    np.testing.assert_array_equal(decode_tokens(base, ids, mask, settings=settings)[0], without)

    # Merged: W + scale * A @ B folded into the kernels of an adapter-free model.
    merged = LlamaForCausalLM(model.config, rngs=nnx.Rngs(1))
    nnx.update(merged, nnx.state(model, nnx.Param))
    flat = dict(nnx.to_flat_state(nnx.state(merged, nnx.Param)))
    for key, value in merge_lora(model).items():
        path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
        flat[path].value = value
    np.testing.assert_array_equal(
        decode_tokens(merged, ids, mask, settings=settings)[0], with_adapters
    )


class _CharTokenizer:
    """Characters 'a'..'z' as ids 10..35, BOS 1 (enough for the text-level API test)."""

    bos_token_id = 1
    eos_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [10 + (ord(c) - 97) % 26 for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + (i - 10) % 26) if i >= 10 else "" for i in ids)


def test_text_api_buckets_batches_and_keeps_order(pair):
    _, ours, eos = pair
    tok = _CharTokenizer()
    prompts = ["abc", "hello", "a", "qwertyuiopasdfgh", "zz", "mnopqrs", "xy"]
    settings = DecodeSettings(max_new_tokens=12, batch_size=3, prompt_buckets=(8, 20))
    texts = generate_texts(ours, tok, prompts, settings)
    ids = generate_token_ids(
        ours,
        [[1] + tok(p)["input_ids"] for p in prompts],
        settings.replace(batch_size=1, prompt_buckets=(20,)),
    )
    assert texts == [tok.decode(r) for r in ids]
    # One prompt alone, unpadded, decoded directly: the same output as inside the batches.
    alone_ids = np.asarray([[1] + tok(prompts[3])["input_ids"]], np.int32)
    tokens, lengths = decode_tokens(
        ours, alone_ids, np.ones_like(alone_ids), settings=DecodeSettings(max_new_tokens=12)
    )
    row = [int(t) for t in tokens[0, : lengths[0]] if t != eos]
    assert texts[3] == tok.decode(row)
    # Too-long prompts keep BOS and their end (the training truncation policy).
    kept = encode_prompts(tok, ["abcdefgh"], add_bos=True, max_length=4)
    assert kept == [[1] + tok("fgh")["input_ids"]]
    with pytest.raises(ValueError, match="top_p"):
        settings.replace(top_p=0.0)


_MESH_SCRIPT = """
import numpy as np, jax
from almol_jax.generation import DecodeSettings, generate_token_ids
from almol_jax.model import ModelConfig, build_model
from almol_jax.sharding import make_mesh
assert len(jax.devices()) == 2, jax.devices()
config = ModelConfig.preset("tiny", vocab_size=90, eos_token_id=2, initializer_range=0.3)
mesh = make_mesh({"data": 2, "fsdp": 1, "tensor": 1})
sharded = build_model(config, rngs=0, mesh=mesh)
plain = build_model(config, rngs=0)
rng = np.random.default_rng(0)
prompts = [[1] + rng.integers(3, 90, n).tolist() for n in (4, 9, 6, 2, 7)]
settings = DecodeSettings(max_new_tokens=12, batch_size=4, prompt_buckets=(16,))
a = generate_token_ids(sharded, prompts, settings, mesh=mesh)
b = generate_token_ids(plain, prompts, settings)
assert a == b, (a, b)
print("OK", sum(map(len, a)))
"""


def test_data_parallel_mesh_equals_single_device(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", _MESH_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("OK")
