"""HF weight loading: logits parity with transformers' PyTorch LlamaForCausalLM, key errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip(
    "torch", reason="torch is a test-only dependency (requirements-dev.txt), not installed here"
)

from hf_fixtures import hf_logits, make_hf_llama, padded_batch  # noqa: E402

import almol_jax  # noqa: E402
from almol_jax.model import ModelConfig  # noqa: E402
from almol_jax.model.hf_weights import hf_name, to_hf_tensor  # noqa: E402

LLAMA3_ROPE = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=64,  # head_dim 16 or 32, theta 1e4: high, medium, low bands
)


def _to_old_layout(ckpt_dir):
    """Rewrites config.json in the transformers<5 layout (rope_theta + rope_scaling)."""
    path = ckpt_dir / "config.json"
    cfg = json.loads(path.read_text())
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    path.write_text(json.dumps(cfg))
    return cfg


def _assert_parity(hf_model, ckpt_dir):
    ids, mask = padded_batch(hf_model.config.vocab_size)
    ref = hf_logits(hf_model, ids, mask)
    model = almol_jax.load_model(str(ckpt_dir))
    ours = np.asarray(model(ids, mask))
    assert ours.shape == ref.shape == (4, 12, hf_model.config.vocab_size)
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours[valid], ref[valid], rtol=0, atol=1e-4)
    return model


def test_parity_mha_untied_linear_rope_old_layout(tmp_path):
    hf, ckpt = make_hf_llama(tmp_path, rope_scaling={"rope_type": "linear", "factor": 2.0})
    cfg = _to_old_layout(ckpt)
    assert "rope_parameters" not in cfg and cfg["rope_scaling"]["factor"] == 2.0
    model = _assert_parity(hf, ckpt)
    assert model.config.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert model.config.num_key_value_heads == 4 and model.lm_head is not None


def test_parity_gqa_tied(tmp_path):
    hf, ckpt = make_hf_llama(tmp_path, num_key_value_heads=2, tie_word_embeddings=True, seed=1)
    model = _assert_parity(hf, ckpt)
    assert model.lm_head is None and model.config.num_key_value_heads == 2


def test_parity_llama3_rope_biases_mqa_explicit_head_dim(tmp_path):
    hf, ckpt = make_hf_llama(
        tmp_path,
        num_key_value_heads=1,
        head_dim=32,  # N*H = 128 != D = 64
        attention_bias=True,
        mlp_bias=True,
        rope_scaling=dict(LLAMA3_ROPE, rope_theta=10000.0),
        seed=2,
    )
    model = _assert_parity(hf, ckpt)
    assert model.config.rope_scaling["rope_type"] == "llama3"
    assert model.model.layers[0].mlp.up_proj.bias is not None
    assert model.model.layers[0].self_attn.q_proj.kernel[...].shape == (64, 128)


def test_parity_sharded_index_checkpoint(tmp_path):
    """model.safetensors.index.json + several shard files load the same as one file."""
    hf, _ = make_hf_llama(tmp_path, seed=3)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    _assert_parity(hf, sharded)


def test_both_config_layouts_parse_equal(tmp_path):
    new = {
        "model_type": "llama",
        "vocab_size": 100,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_parameters": dict(LLAMA3_ROPE, rope_theta=500000.0),
    }
    old = {k: v for k, v in new.items() if k != "rope_parameters"}
    old["rope_theta"] = 500000.0
    old["rope_scaling"] = {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_type"}
    old["rope_scaling"]["type"] = "llama3"  # the oldest spelling of rope_type
    (tmp_path / "config.json").write_text(json.dumps(old))
    a = ModelConfig.from_hf_config(new)
    b = ModelConfig.from_hf_config(tmp_path)
    assert a == b
    assert a.rope_theta == 500000.0 and a.rope_scaling["factor"] == 8.0 and a.head_dim == 8
    assert ModelConfig.from_hf_config(a.to_hf_config()) == a


def _corrupt(ckpt_dir, fn):
    from safetensors.numpy import load_file, save_file

    path = ckpt_dir / "model.safetensors"
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_key_is_named(tmp_path):
    _, ckpt = make_hf_llama(tmp_path, num_hidden_layers=1)
    _corrupt(ckpt, lambda t: t.pop("model.layers.0.mlp.up_proj.weight"))
    with pytest.raises(KeyError, match=r"model\.layers\.0\.mlp\.up_proj\.weight"):
        almol_jax.load_model(str(ckpt))


def test_wrong_shape_is_named(tmp_path):
    _, ckpt = make_hf_llama(tmp_path, num_hidden_layers=1)

    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][
            :8
        ]

    _corrupt(ckpt, shrink)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight.*\(8, 64\)"):
        almol_jax.load_model(str(ckpt))


def test_unexpected_key_is_named(tmp_path):
    _, ckpt = make_hf_llama(tmp_path, num_hidden_layers=1)
    _corrupt(ckpt, lambda t: t.__setitem__("model.layers.7.extra.weight", np.zeros(3, np.float32)))
    with pytest.raises(KeyError, match=r"model\.layers\.7\.extra\.weight"):
        almol_jax.load_model(str(ckpt))


def test_not_a_directory_is_named(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        almol_jax.load_model(str(tmp_path / "nowhere"))


def test_export_mapping_round_trips(tmp_path):
    """to_hf_tensor(our variable) reproduces every tensor of the HF checkpoint exactly."""
    from flax import nnx
    from safetensors.numpy import load_file

    _, ckpt = make_hf_llama(tmp_path, num_key_value_heads=2, attention_bias=True)
    model = almol_jax.load_model(str(ckpt))
    original = load_file(ckpt / "model.safetensors")
    exported = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        key, arr = to_hf_tensor(path, var[...], model.config)
        assert arr.flags["C_CONTIGUOUS"], key  # safetensors writes the raw buffer
        exported[key] = arr
    assert set(exported) == set(original)
    for key, arr in original.items():
        np.testing.assert_array_equal(exported[key], arr, err_msg=key)
    assert hf_name("model.layers.3.self_attn.q_proj.lora_a").key == (
        "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
    )


def test_bf16_params_load_and_run(tmp_path):
    hf, ckpt = make_hf_llama(tmp_path, num_hidden_layers=1)
    model = almol_jax.load_model(str(ckpt), dtype="bfloat16")
    assert model.model.layers[0].self_attn.q_proj.kernel[...].dtype.name == "bfloat16"
    ids, mask = padded_batch(300)
    ours = np.asarray(model(ids, mask))
    assert ours.dtype == np.float32
    ref = hf_logits(hf, ids, mask)
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours[valid], ref[valid], rtol=0, atol=0.15)


def test_hub_repo_id_goes_through_snapshot_download(tmp_path, monkeypatch):
    """An owner/name that is no local path is a hub repo id: fetched by snapshot_download
    (mocked: no network), safetensors and JSON only, from the cache only when offline."""
    import huggingface_hub

    hf, ckpt = make_hf_llama(tmp_path, num_hidden_layers=1)
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, local_files_only=False):
        calls.append((repo_id, revision, tuple(allow_patterns), local_files_only))
        return str(ckpt)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    model = almol_jax.load_model("someone/tiny-llama", revision="main")
    assert calls == [("someone/tiny-llama", "main", ("*.json", "*.safetensors"), False)]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    almol_jax.load_model("someone/tiny-llama")
    assert calls[-1] == ("someone/tiny-llama", None, ("*.json", "*.safetensors"), True)
    ids, mask = padded_batch(300)
    np.testing.assert_allclose(
        np.asarray(model(ids, mask))[mask == 1],
        hf_logits(hf, ids, mask)[mask == 1],
        rtol=0,
        atol=1e-4,
    )
