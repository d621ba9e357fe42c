"""LoRA: parity with PEFT, untrained adapters are a no-op, adapters-off views, merging, init."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_fixtures import forward

from almol_jax.model import (
    LoraConfig,
    LoRAParam,
    ModelConfig,
    build_model,
    disable_adapters,
    lora_state,
    merge_lora,
    without_adapters,
    zeros_like_lora,
)

TINY = ModelConfig.preset("tiny", vocab_size=300)
LORA = LoraConfig(r=8, alpha=16)
IDS = np.array([[5, 9, 33, 7, 2, 100], [0, 0, 4, 8, 15, 16]], np.int32)
MASK = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], np.int32)


def _randomise_b(model, key):
    """Gives every LoRA B a non-zero value (as if trained)."""
    for i, (path, var) in enumerate(nnx.to_flat_state(lora_state(model))):
        if path[-1] == "lora_b":
            k = jax.random.fold_in(key, i)
            var.set_value(0.05 * jax.random.normal(k, var.shape, var.dtype))
    return model


def test_lora_param_is_not_param_and_targets_all_linear():
    assert not issubclass(LoRAParam, nnx.Param)
    model = build_model(TINY, lora=LORA, rngs=0)
    paths = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(lora_state(model))]
    names = {p.split(".")[-2] for p in paths}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(paths) == 2 * 7 * TINY.num_hidden_layers  # A and B per projection, never lm_head
    assert not any("lm_head" in p for p in paths)
    assert nnx.state(model, nnx.Param)["lm_head"]["kernel"][...].shape == (64, 384)


def test_lora_config_scale_and_validation():
    assert LoraConfig(r=64, alpha=16).scale == 0.25
    assert LoraConfig(r=64, alpha=16, use_rslora=True).scale == 2.0
    assert LoraConfig(target_modules=["q_proj", "v_proj"]).targets("v_proj")
    assert not LoraConfig(target_modules=["q_proj"]).targets("v_proj")
    with pytest.raises(ValueError, match="lm_head"):
        LoraConfig(target_modules=["q_proj", "lm_head"])
    with pytest.raises(ValueError, match="r=0"):
        LoraConfig(r=0)


def test_init_like_peft():
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) over [in, R] (kaiming-uniform a=sqrt(5)); B = 0."""
    model = build_model(TINY, lora=LORA, rngs=1)
    a_all = []
    for path, var in nnx.to_flat_state(lora_state(model)):
        arr = np.asarray(var[...])
        if path[-1] == "lora_b":
            assert arr.shape[0] == 8 and not arr.any()
        elif path[-2] != "down_proj" and path[-2] != "o_proj":
            assert arr.shape == (64, 8)
            a_all.append(arr)
    a = np.concatenate(a_all)
    bound = 1 / np.sqrt(64)
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.99 * bound
    np.testing.assert_allclose(a.std(), bound / np.sqrt(3), rtol=0.03, atol=0)
    down_a = np.asarray(model.model.layers[0].mlp.down_proj.lora_a[...])
    assert down_a.shape == (172, 8) and np.abs(down_a).max() <= 1 / np.sqrt(172)


def test_untrained_adapter_changes_nothing():
    base = build_model(TINY, rngs=3)
    adapted = build_model(TINY, lora=LORA, rngs=3)
    # same key, same base draws? not guaranteed: copy the base params across explicitly
    nnx.update(adapted, nnx.state(base, nnx.Param))
    np.testing.assert_allclose(
        forward(adapted, IDS, MASK), forward(base, IDS, MASK), rtol=0, atol=1e-6
    )


def test_adapters_off_three_ways_and_merge():
    model = build_model(TINY, lora=LORA, rngs=4)
    _randomise_b(model, jax.random.key(5))
    base = build_model(TINY, rngs=0)
    nnx.update(base, nnx.state(model, nnx.Param))
    ref_off = np.asarray(forward(base, IDS, MASK))
    on = np.asarray(forward(model, IDS, MASK))
    assert np.abs(on - ref_off).max() > 1e-3  # the adapters matter

    # 1) functional: zeros for the LoRAParam state in the same graphdef
    graphdef, lora, rest = nnx.split(model, LoRAParam, ...)
    off = nnx.merge(graphdef, zeros_like_lora(lora), rest)
    np.testing.assert_allclose(forward(off, IDS, MASK), ref_off, rtol=0, atol=1e-6)
    # 2) a view sharing arrays
    np.testing.assert_allclose(
        forward(without_adapters(model), IDS, MASK), ref_off, rtol=0, atol=1e-6
    )
    # 3) a context
    with disable_adapters(model):
        np.testing.assert_allclose(forward(model, IDS, MASK), ref_off, rtol=0, atol=1e-6)
    np.testing.assert_allclose(forward(model, IDS, MASK), on, rtol=0, atol=0)

    # merged kernels W + scale A @ B reproduce the adapted model
    merged = merge_lora(model)
    assert len(merged) == 7 * TINY.num_hidden_layers
    flat = dict(nnx.to_flat_state(nnx.state(base, nnx.Param)))
    for key, w in merged.items():
        path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
        flat[path].set_value(w)
    np.testing.assert_allclose(forward(base, IDS, MASK), on, rtol=0, atol=1e-5)


def test_bf16_base_fp32_adapters_and_grads_only_for_lora():
    cfg = TINY.replace(param_dtype="bfloat16", dtype="bfloat16")
    model = build_model(cfg, lora=LORA, rngs=6)
    q = model.model.layers[0].self_attn.q_proj
    assert q.kernel[...].dtype == jnp.bfloat16 and q.lora_a[...].dtype == jnp.float32
    graphdef, lora, rest = nnx.split(model, LoRAParam, ...)

    def loss(lora_state):
        m = nnx.merge(graphdef, lora_state, rest)
        return m(IDS, MASK).mean()

    grads = jax.jit(jax.grad(loss))(lora)
    b_grad = grads["model"]["layers"][0]["self_attn"]["q_proj"]["lora_b"][...]
    assert b_grad.dtype == jnp.float32 and np.abs(np.asarray(b_grad)).max() > 0


def test_dropout_is_used_in_training_and_not_in_eval_view():
    streams = dict(params=7, lora=8, dropout=9)  # the dropout stream draws from its own key
    model = build_model(TINY, lora=LoraConfig(r=8, alpha=16, dropout=0.5), rngs=nnx.Rngs(**streams))
    _randomise_b(model, jax.random.key(8))
    a, b = np.asarray(forward(model, IDS, MASK)), np.asarray(forward(model, IDS, MASK))
    assert np.abs(a - b).max() > 0  # fresh dropout masks each call
    ev = nnx.view(model, deterministic=True)
    np.testing.assert_allclose(forward(ev, IDS, MASK), forward(ev, IDS, MASK), rtol=0, atol=0)
    # and the eval view is the dropout-free function: same weights, built with dropout 0
    no_dropout = build_model(
        TINY, lora=LoraConfig(r=8, alpha=16, dropout=0.0), rngs=nnx.Rngs(**streams)
    )
    _randomise_b(no_dropout, jax.random.key(8))
    np.testing.assert_allclose(
        forward(ev, IDS, MASK), forward(no_dropout, IDS, MASK), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("tie", [False])
def test_peft_parity(tmp_path, tie):
    """Our forward with PEFT's adapter values equals PEFT's LoRA model (all-linear, r 8, a 16)."""
    torch = pytest.importorskip(
        "torch", reason="torch is a test-only dependency (requirements-dev.txt), not installed here"
    )
    peft = pytest.importorskip(
        "peft", reason="peft is a test-only dependency (requirements-dev.txt), not installed here"
    )
    from hf_fixtures import hf_logits, make_hf_llama, padded_batch

    import almol_jax
    from almol_jax.model.hf_weights import load_peft_adapter, read_peft_config

    hf, ckpt = make_hf_llama(tmp_path, num_key_value_heads=2, tie_word_embeddings=tie, seed=9)
    ids, mask = padded_batch(300, seed=1)
    base_ref = hf_logits(hf, ids, mask)
    pcfg = peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0)
    pmodel = peft.get_peft_model(hf, pcfg)
    torch.manual_seed(10)
    with torch.no_grad():
        for name, p in pmodel.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn_like(p))
    pmodel.eval()
    ref = hf_logits(pmodel, ids, mask)
    assert np.abs(ref - base_ref).max() > 1e-2
    pmodel.save_pretrained(tmp_path / "adapter")

    lcfg = read_peft_config(tmp_path / "adapter")
    assert (lcfg.r, lcfg.scale) == (8, 2.0)
    model = almol_jax.load_model(str(ckpt), lora=lcfg, rngs=11)
    valid = mask.astype(bool)
    before = forward(model, ids, mask)  # fresh adapters (B = 0): the base model
    np.testing.assert_allclose(before[valid], base_ref[valid], rtol=0, atol=1e-4)
    load_peft_adapter(model, tmp_path / "adapter")
    ours = forward(model, ids, mask)
    np.testing.assert_allclose(ours[valid], ref[valid], rtol=0, atol=1e-4)


PEFT_SAVED_CONFIG = {  # what PEFT 0.21 writes for a plain LoRA (the fields we check at defaults)
    "peft_type": "LORA",
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "target_modules": ["q_proj", "v_proj"],
    "use_rslora": False,
    "use_dora": False,
    "fan_in_fan_out": False,
    "bias": "none",
    "lora_bias": False,
    "modules_to_save": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "layers_to_transform": None,
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("alpha_pattern", {"q_proj": 32}),
        ("rank_pattern", {"v_proj": 4}),
        ("use_dora", True),
        ("modules_to_save", ["lm_head"]),
        ("bias", "lora_only"),
        ("fan_in_fan_out", True),
        ("peft_type", "IA3"),
    ],
)
def test_load_peft_adapter_refuses_unsupported_fields(tmp_path, field, value):
    """An adapter our plain LoRA cannot reproduce is an error naming the field, not a silent
    load of the wrong function (the config is checked before any tensor is read)."""
    from almol_jax.model.hf_weights import load_peft_adapter, read_peft_config

    (tmp_path / "adapter_config.json").write_text(json.dumps(PEFT_SAVED_CONFIG))
    lcfg = read_peft_config(tmp_path)  # the defaults as PEFT writes them are accepted
    assert (lcfg.r, lcfg.scale, lcfg.target_modules) == (8, 2.0, ("q_proj", "v_proj"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({**PEFT_SAVED_CONFIG, field: value}))
    model = build_model(TINY, lora=lcfg, rngs=0)
    with pytest.raises(ValueError, match=re.escape(f"{field}={value!r}")):
        load_peft_adapter(model, tmp_path)
