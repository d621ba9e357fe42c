"""`lora.init`: b_zero (PEFT's: A kaiming-uniform, B = 0) or a_zero (A = 0, B ~ U(+-1/sqrt(r))).

Either way the adapter product is exactly zero at step 0, so the step-0 logits equal the base's
(adapters off); an a_zero run trains A away from zero, and its PEFT export loads in peft and gives
the restored checkpoint's logits.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from almol_jax.model import LoraConfig, ModelConfig, build_model
from almol_jax.model.lora import LoRAParam, without_adapters
from tests.hf_fixtures import forward, padded_batch
from tests.train_runs import three_step_run


def _adapters(model) -> dict[str, np.ndarray]:
    return {
        ".".join(map(str, path)): np.asarray(v)
        for path, v in nnx.to_flat_state(nnx.state(model, LoRAParam))
    }


@pytest.mark.parametrize("init", ["b_zero", "a_zero"])
def test_step0_logits_equal_the_base(init):
    cfg = ModelConfig.preset("tiny", vocab_size=260)
    model = build_model(cfg, lora=LoraConfig(r=4, alpha=8, init=init), rngs=0)
    adapters = _adapters(model)
    zero, drawn = ("lora_b", "lora_a") if init == "b_zero" else ("lora_a", "lora_b")
    for name, value in adapters.items():
        if name.endswith(zero):
            assert not value.any(), name
        else:
            assert name.endswith(drawn) and value.std() > 0, name
            fan_in = value.shape[0] if init == "b_zero" else 4  # A: [in, r]; B: [r, out]
            assert np.abs(value).max() <= 1 / math.sqrt(fan_in)
    ids, mask = padded_batch(260)
    on = forward(model, jnp.asarray(ids), jnp.asarray(mask))
    off = forward(without_adapters(model), jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_array_equal(on, off)


def test_lora_init_is_checked():
    with pytest.raises(ValueError, match="init"):
        LoraConfig(init="random")


@pytest.fixture(scope="module")
def a_zero_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("a_zero") / "run"
    train, _, _ = three_step_run(
        run_dir,
        lambda batch: None,
        "lora.enabled=true",
        "lora.r=4",
        "lora.alpha=8",
        "lora.init=a_zero",
        "train.learning_rate=1e-2",
    )
    return run_dir, train


@pytest.mark.slow
def test_a_zero_run_trains_a_and_its_peft_export_matches_peft(a_zero_run, tmp_path):
    import peft
    import torch
    import transformers

    from almol_jax.export.run import export_run
    from almol_jax.run.restore import restore_for_inference

    run_dir, train = a_zero_run
    assert len(train) == 3 and all(np.isfinite(r["loss"]) for r in train)
    _, model, tok = restore_for_inference(run_dir, step="latest")
    trained = _adapters(model)
    assert all(v.any() for k, v in trained.items() if k.endswith("lora_a"))  # A left zero
    out = export_run(run_dir, tmp_path / "peft", format="peft", dtype="float32", step="latest")
    base = transformers.AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(base, out).eval()
    ids = tok("Molecule: CCO\nCaption: ", add_special_tokens=False)["input_ids"]
    ids = [tok.bos_token_id, *ids]
    with torch.no_grad():
        ref = theirs(input_ids=torch.tensor([ids])).logits.numpy()
        with theirs.disable_adapter():
            ref_off = theirs(input_ids=torch.tensor([ids])).logits.numpy()
    ours = forward(model, jnp.asarray([ids]), jnp.ones((1, len(ids)), jnp.int32))
    ours = ours[..., : ref.shape[-1]]
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)  # fp32 both sides
    assert np.abs(ref - ref_off).max() > 1e-3  # the trained adapters matter
