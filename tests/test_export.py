"""Export to Hugging Face: merged and PEFT directories checked against transformers and PEFT.

Every parity test loads our export with the independent PyTorch implementation (transformers'
LlamaForCausalLM, PEFT's LoRA) and compares logits (fp32, atol 1e-4) or greedy tokens; the
round trip reads a PEFT export back into a fresh model. The model is tiny (2 layers, D 64,
GQA 4/2 heads, vocab 300 padded to 384) with random, non-zero LoRA B so adapters matter.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from almol_jax.data.tokenizer import byte_tokenizer
from almol_jax.export import export_model, load_peft_adapter, load_with_adapter, read_peft_config
from almol_jax.model import LlamaForCausalLM, LoraConfig, LoRAParam, ModelConfig, build_model
from almol_jax.model.lora_config import PEFT_LINEAR_NAMES

torch = pytest.importorskip(
    "torch", reason="torch is a test-only dependency (requirements-dev.txt), not installed here"
)

VOCAB = 300
PROMPTS = ("CCO is ethanol", "The molecule is an acid")
NEW_TOKENS = 32


def _randomise_adapters(model, key):
    """Non-zero LoRA A and B (B starts at zero, which would make every adapter a no-op)."""
    state = nnx.state(model, LoRAParam)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(key, len(leaves))
    new = [0.05 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    nnx.update(model, jax.tree.unflatten(treedef, new))


def _tiny_lora_model(seed=0, config=None, **lora):
    config = config or ModelConfig.preset("tiny", vocab_size=VOCAB, rms_norm_eps=1e-5)
    lora_config = LoraConfig(**{"r": 4, "alpha": 8.0, **lora})
    model = build_model(config, lora=lora_config, rngs=seed)
    _randomise_adapters(model, jax.random.key(seed + 100))
    return model


@pytest.fixture(scope="module")
def model():
    return _tiny_lora_model()


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def _left_padded(tokenizer):
    rows = [
        [tokenizer.bos_token_id, *tokenizer.encode(p, add_special_tokens=False)] for p in PROMPTS
    ]
    width = max(map(len, rows))
    ids = np.full((len(rows), width), tokenizer.pad_token_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids, mask


@nnx.jit
def _forward(model, ids, mask):
    return model(ids, mask)


def _ours(model, ids, mask):
    return np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(mask)))


def _theirs(hf_model, ids, mask):
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    with torch.no_grad():
        out = hf_model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.float().numpy()


def _assert_logits_close(ours, theirs, mask):
    valid = mask.astype(bool)
    np.testing.assert_allclose(theirs[valid], ours[valid], rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def merged_dir(model, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged")
    # 60 kB shards force several files (the largest tensors are 300 x 64 x 4 = 77 kB).
    export_model(
        model, out, format="merged", tokenizer=tokenizer, dtype="float32", max_shard_size="60KB"
    )
    return out


def test_merged_export_matches_transformers_logits_and_greedy(model, tokenizer, merged_dir):
    from almol_jax.generation import DecodeSettings, decode_tokens

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    hf_model.eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(merged_dir)
    assert hf_tok.encode(PROMPTS[0], add_special_tokens=False) == tokenizer.encode(
        PROMPTS[0], add_special_tokens=False
    )
    ids, mask = _left_padded(tokenizer)
    _assert_logits_close(_ours(model, ids, mask), _theirs(hf_model, ids, mask), mask)

    # Greedy for NEW_TOKENS steps; an id this random model never picks stands in for EOS so
    # that both sides run all 32 steps.
    stop = VOCAB - 1
    settings = DecodeSettings(method="greedy", max_new_tokens=NEW_TOKENS)
    tokens, lengths = decode_tokens(model, ids, mask, settings=settings, eos_ids=(stop,))
    with torch.no_grad():
        hf_out = hf_model.generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=tokenizer.pad_token_id,
        )
    np.testing.assert_array_equal(lengths, [NEW_TOKENS] * len(PROMPTS))
    np.testing.assert_array_equal(hf_out[:, ids.shape[1] :].numpy(), tokens)


def test_merged_export_layout(model, merged_dir):
    files = sorted(p.name for p in merged_dir.iterdir())
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= set(files)
    index = json.loads((merged_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    expected = 2 + model.config.num_hidden_layers * 9 + 1  # embed, lm_head, 9 per block, norm
    assert len(index["weight_map"]) == expected
    sizes = model.config.num_hidden_layers * (2 * 64 + 64 * 64 * 2 + 2 * 64 * 32 + 3 * 64 * 172)
    assert index["metadata"]["total_size"] == 4 * (sizes + 2 * VOCAB * 64 + 64)
    config = json.loads((merged_dir / "config.json").read_text())
    assert (config["vocab_size"], config["dtype"]) == (VOCAB, "float32")
    assert model.config.padded_vocab_size == 384  # the export really cut padding


def test_single_shard_bf16_export_loads_and_rounds_like_numpy(model, tmp_path):
    import ml_dtypes
    from safetensors.numpy import load_file

    from almol_jax.model.lora import merge_lora

    export_model(model, tmp_path, format="merged", dtype="bfloat16")
    assert (tmp_path / "model.safetensors").is_file()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model.safetensors"}
    key = "model.layers.1.self_attn.k_proj.weight"
    raw = load_file(tmp_path / "model.safetensors")[key]  # numpy has no bf16: read the bits
    merged = np.asarray(merge_lora(model)["model.layers.1.self_attn.k_proj.kernel"]).T
    expected = merged.astype(ml_dtypes.bfloat16)
    assert raw.dtype == ml_dtypes.bfloat16 or raw.dtype == np.uint16
    np.testing.assert_array_equal(raw.view(np.uint16), expected.view(np.uint16))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert hf_model.dtype == torch.bfloat16


@pytest.fixture(scope="module")
def peft_dir(model, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("peft")
    # No base source: the base (adapters off) is exported to out/base and referenced from there.
    export_model(model, out, format="peft", tokenizer=tokenizer, dtype="float32")
    return out


def test_peft_export_matches_peft_model(model, tokenizer, peft_dir):
    peft = pytest.importorskip(
        "peft", reason="peft is a test-only dependency (requirements-dev.txt), not installed here"
    )
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((peft_dir / "base").absolute())
    assert (config["r"], config["lora_alpha"], config["task_type"]) == (4, 8.0, "CAUSAL_LM")
    base = transformers.AutoModelForCausalLM.from_pretrained(peft_dir / "base", dtype=torch.float32)
    peft_model = peft.PeftModel.from_pretrained(base, peft_dir).eval()
    ids, mask = _left_padded(tokenizer)
    ours = _ours(model, ids, mask)
    _assert_logits_close(ours, _theirs(peft_model, ids, mask), mask)
    with peft_model.disable_adapter():  # and the adapters matter
        off = _theirs(peft_model, ids, mask)
    assert np.abs(off - ours)[mask.astype(bool)].max() > 1e-2


def test_peft_export_keys_and_shapes(peft_dir):
    from safetensors import safe_open

    with safe_open(peft_dir / "adapter_model.safetensors", framework="numpy") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    prefix = "base_model.model.model.layers.0"
    assert shapes[f"{prefix}.self_attn.q_proj.lora_A.weight"] == (4, 64)
    assert shapes[f"{prefix}.self_attn.k_proj.lora_B.weight"] == (32, 4)
    assert shapes[f"{prefix}.mlp.down_proj.lora_A.weight"] == (4, 172)
    assert len(shapes) == 2 * 7 * 2


def test_peft_round_trip_gives_same_logits(model, tokenizer, peft_dir):
    lora = read_peft_config(peft_dir)
    assert (lora.r, lora.scale, lora.use_rslora) == (4, 2.0, False)
    assert all(lora.targets(name) for name in PEFT_LINEAR_NAMES)
    # Base from peft_dir/base (its HF export) + adapters: both halves round-trip through files.
    loaded = load_with_adapter(peft_dir, dtype="float32")
    ids, mask = _left_padded(tokenizer)
    before = _ours(model, ids, mask)
    np.testing.assert_allclose(_ours(loaded, ids, mask), before, rtol=0, atol=1e-5)
    fresh = nnx.clone(model)  # same base, other adapters, then the exported ones loaded in
    _randomise_adapters(fresh, jax.random.key(7))
    assert np.abs(_ours(fresh, ids, mask) - before).max() > 1e-2
    load_peft_adapter(fresh, peft_dir)
    np.testing.assert_allclose(_ours(fresh, ids, mask), before, rtol=0, atol=1e-6)


def test_unsupported_adapter_configs_are_named(peft_dir, tmp_path):
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({**config, "alpha_pattern": {"q_proj": 2}})
    )
    with pytest.raises(ValueError, match="alpha_pattern=.*not supported"):
        load_with_adapter(tmp_path)
    with pytest.raises(ValueError, match="no adapter_config.json"):
        load_with_adapter(tmp_path / "absent")


def test_rslora_subset_targets_tied_biased_model_matches_peft(tokenizer, tmp_path):
    peft = pytest.importorskip(
        "peft", reason="peft is a test-only dependency (requirements-dev.txt), not installed here"
    )
    config = ModelConfig.preset(
        "tiny", vocab_size=VOCAB, tie_word_embeddings=True, attention_bias=True, mlp_bias=True
    )
    model = _tiny_lora_model(
        3, config, r=8, alpha=4.0, use_rslora=True, target_modules=("q_proj", "v_proj")
    )
    biases = nnx.state(model, lambda path, _: path[-1] == "bias")  # zeros at init: make them count
    assert len(jax.tree.leaves(biases)) == 2 * 7  # q, k, v, o, gate, up, down per layer
    nnx.update(model, jax.tree.map(lambda b: b + 0.1, biases))
    export_model(model, tmp_path, format="peft", dtype="float32")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["use_rslora"], config["target_modules"]) == (True, ["q_proj", "v_proj"])
    hf_config = json.loads((tmp_path / "base" / "config.json").read_text())
    assert hf_config["tie_word_embeddings"] and hf_config["attention_bias"]
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    ids, mask = _left_padded(tokenizer)
    _assert_logits_close(_ours(model, ids, mask), _theirs(peft_model, ids, mask), mask)


def test_peft_export_of_a_model_without_adapters_names_the_problem(tmp_path):
    config = ModelConfig.preset("tiny")
    model = nnx.eval_shape(lambda: LlamaForCausalLM(config, rngs=nnx.Rngs(0)))  # no LoRA
    with pytest.raises(ValueError, match="lora_config=None"):
        export_model(model, tmp_path, format="peft", base_model_name_or_path="x")
    with pytest.raises(ValueError, match="format='onnx'"):
        export_model(model, tmp_path, format="onnx")


def test_adapter_trained_by_peft_loads_into_our_model(model, tokenizer, peft_dir, tmp_path):
    """Adapters in from an independent producer: a PEFT LoRA (random A and B, PEFT's own init)
    saved by save_pretrained, as TRL saves it, on our exported base."""
    peft = pytest.importorskip(
        "peft", reason="peft is a test-only dependency (requirements-dev.txt), not installed here"
    )
    base = transformers.AutoModelForCausalLM.from_pretrained(peft_dir / "base", dtype=torch.float32)
    torch.manual_seed(0)
    lora = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=list(PEFT_LINEAR_NAMES),
        init_lora_weights=False,  # random B too, so the adapter changes the outputs
        task_type="CAUSAL_LM",
    )
    peft_model = peft.get_peft_model(base, lora).eval()
    peft_model.save_pretrained(tmp_path)
    ours = nnx.clone(model)
    load_peft_adapter(ours, tmp_path)
    ids, mask = _left_padded(tokenizer)
    theirs = _theirs(peft_model, ids, mask)
    _assert_logits_close(_ours(ours, ids, mask), theirs, mask)
    assert np.abs(_ours(model, ids, mask) - theirs)[mask.astype(bool)].max() > 1e-2
