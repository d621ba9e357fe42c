"""The two kernel tables (model/kernels.py) against each other, and what each compiles to.

A `portable` model (plain jnp / jax.nn, autodiff) and a `cpu` one (the CPU wing: C++ attention,
merged LoRA, hand-written backward passes) with the same weights give the same float32 logits and
the same gradients w.r.t. the base parameters and the LoRA adapters (rtol = atol = 1e-5), on MHA
and GQA models and on prefix-shared rows (segment ids and the role mask that training builds,
almol_jax.data.prefix_sharing) with padding. `portable` lowers with no custom call and traces
with no custom VJP; the cpu table has both (so those checks can fail). The CPU kernel must build
here: if it cannot, these tests fail rather than skip.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from almol_jax.cpu import attention_kernel
from almol_jax.data.prefix_sharing import plain_batch, plain_to_indexed, role_mask_BTS
from almol_jax.model import LoraConfig, ModelConfig, build_model
from almol_jax.model.attention import build_mask

SIZES = dict(
    vocab_size=200,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    initializer_range=0.1,
    vocab_multiple=1,
)
HEADS = {"mha": 4, "gqa": 2}
LORA = LoraConfig(r=4, alpha=8.0)


def _batch():
    """Three prefix-shared rows (prompt, chosen, rejected), right-padded to 64 tokens."""
    rng = np.random.default_rng(0)
    triplets = [
        ([1] + rng.integers(3, 200, p).tolist(), rng.integers(3, 200, c).tolist() + [2],
         rng.integers(3, 200, r).tolist() + [2])
        for p, c, r in ((9, 6, 4), (5, 3, 8), (12, 7, 7))
    ]  # fmt: skip
    batch = plain_to_indexed(plain_batch(triplets))
    return {k: jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "positions")} | {
        "segment_ids": jnp.asarray(batch["segment_ids"]),
        "mask_BTS": role_mask_BTS(jnp.asarray(batch["role_ids"])),
    }


def _model(heads: str, kernels: str, **dtypes):
    model = build_model(
        ModelConfig(**SIZES, num_key_value_heads=HEADS[heads], kernels=kernels, **dtypes),
        lora=LORA,
        rngs=0,
    )
    # non-zero adapters B (PEFT initialises them to 0) so that every LoRA term contributes
    for path, b in nnx.iter_graph(model):
        if path and path[-1] == "lora_b":
            b[...] = 0.2 * jax.random.normal(jax.random.key(len(path)), b.shape)
    return model


def _logits(model, batch):
    return model(
        batch["input_ids"],
        batch["attention_mask"],
        positions_BT=batch["positions"],
        segment_ids_BT=batch["segment_ids"],
        mask_BTS=batch["mask_BTS"],
    )


def _loss(model, batch):
    """A per-token mean (a training loss's scale) that weights every logit of every real token
    differently (padding rows excluded)."""
    logits_BTV = _logits(model, batch)
    w_V = jnp.cos(jnp.arange(logits_BTV.shape[-1], dtype=jnp.float32))
    real_BT1 = batch["attention_mask"][..., None].astype(jnp.float32)
    return jnp.sum(jnp.sin(logits_BTV) * w_V * real_BT1) / jnp.sum(real_BT1)


def _value_and_grads(model, batch):
    """Loss and its gradients w.r.t. every parameter: the base (nnx.Param) and the adapters."""
    graphdef, params = nnx.split(model)

    def loss(params):
        return _loss(nnx.merge(graphdef, params), batch)

    return jax.jit(jax.value_and_grad(loss))(params)


def test_the_cpu_kernel_builds_here():
    assert attention_kernel.available(), attention_kernel.unavailable_reason()


@pytest.mark.parametrize("heads", sorted(HEADS))
def test_portable_forward_and_gradients_equal_the_cpu_kernels(heads):
    batch = _batch()
    portable, cpu = _model(heads, "portable"), _model(heads, "cpu")
    assert portable.model.layers[0].self_attn.kernels.name == "portable"
    assert cpu.model.layers[0].self_attn.kernels.name == "cpu"
    allowed_BTS = build_mask(
        batch["attention_mask"],
        0,
        batch["input_ids"].shape[1],
        segment_ids_BT=batch["segment_ids"],
        mask_BTS=batch["mask_BTS"],
    ).dense_BTS
    assert (~np.asarray(allowed_BTS)).all(-1).any()  # padding: queries with no visible key
    want = np.asarray(jax.jit(_logits)(cpu, batch))
    np.testing.assert_allclose(jax.jit(_logits)(portable, batch), want, rtol=1e-5, atol=1e-5)

    (value_p, grads_p), (value_c, grads_c) = (_value_and_grads(m, batch) for m in (portable, cpu))
    np.testing.assert_allclose(value_p, value_c, rtol=1e-5, atol=1e-5)
    leaves_p, leaves_c = nnx.to_flat_state(grads_p), nnx.to_flat_state(grads_c)
    assert [p for p, _ in leaves_p] == [p for p, _ in leaves_c]
    kinds = {type(v).__name__ for _, v in leaves_p}
    assert kinds == {"Param", "LoRAParam"}, kinds
    for (path, got), (_, ref) in zip(leaves_p, leaves_c, strict=True):
        assert np.abs(ref[...]).max() > 0, path  # every parameter gets a gradient
        np.testing.assert_allclose(got[...], ref[...], rtol=1e-5, atol=1e-5, err_msg=str(path))


@pytest.mark.parametrize("kernels", ["portable", "cpu"])
def test_portable_has_no_custom_call_and_no_custom_vjp(kernels):
    batch = _batch()
    graphdef, params = nnx.split(_model("gqa", kernels))

    def loss(params):
        return _loss(nnx.merge(graphdef, params), batch)

    lowered = jax.jit(jax.value_and_grad(loss)).lower(params).as_text()
    jaxpr = str(jax.make_jaxpr(loss)(params))
    expected = kernels == "cpu"
    assert ("custom_call" in lowered) == expected
    assert ("custom_vjp_call" in jaxpr) == expected


def test_the_run_config_key_reaches_the_model():
    from almol_jax.config import load_config
    from almol_jax.run.setup import model_config

    assert model_config(load_config(None, [])).kernels == "auto"
    assert model_config(load_config(None, ["model.kernels=portable"])).kernels == "portable"
    with pytest.raises(ValueError, match="model.kernels"):
        load_config(None, ["model.kernels=gpu"])


def test_custom_vjps_in_bfloat16_are_as_accurate_as_autodiff():
    """The custom_vjp table (the default on TPU, docs/tpu.md) in the recipe's dtypes (bf16 base
    and compute, fp32 adapters): its loss and LoRA gradients are no further from a float32
    oracle (the portable table in float32) than autodiff's in the same dtypes. The hand-written
    backward passes compute in float32, so they should be at least as close; 1.25x leaves room
    for bf16 rounding landing either way on a single entry's worst case."""
    batch = _batch()
    bf16 = dict(dtype="bfloat16", param_dtype="bfloat16")
    custom = _model("gqa", "custom_vjp", **bf16)
    assert custom.model.layers[0].mlp.kernels.name == "custom_vjp"
    results = {
        name: _value_and_grads(m, batch)
        for name, m in (("oracle", _model("gqa", "portable")),
                        ("autodiff", _model("gqa", "portable", **bf16)), ("custom", custom))
    }  # fmt: skip

    def lora_grads(grads):  # the trained parameters of a LoRA run
        return {p: np.asarray(v[...], np.float64) for p, v in nnx.to_flat_state(grads)
                if type(v).__name__ == "LoRAParam"}  # fmt: skip

    want = lora_grads(results["oracle"][1])
    errors = {}
    for name in ("autodiff", "custom"):
        got = lora_grads(results[name][1])
        assert got.keys() == want.keys()
        errors[name] = max(np.abs(got[p] - want[p]).max() / np.abs(want[p]).max() for p in want)
    assert errors["custom"] <= 1.25 * errors["autodiff"], errors
    assert errors["custom"] < 0.05, errors  # bf16: a few ulps of 2^-8, not a wrong formula
    oracle_loss = float(results["oracle"][0])
    for name in ("autodiff", "custom"):
        assert abs(float(results[name][0]) - oracle_loss) < 0.02 * abs(oracle_loss) + 1e-3


def _modules(fn, seen=None) -> set[str]:
    """The modules whose code a kernel-table entry runs: the function's own, and those of the
    callables it wraps (partials' functions and keywords, closures such as `_dense`'s)."""
    seen = set() if seen is None else seen
    if id(fn) in seen or not callable(fn):
        return set()
    seen.add(id(fn))
    if isinstance(fn, functools.partial):
        inner = [fn.func, *fn.keywords.values()]
    else:
        cells = getattr(fn, "__closure__", None) or ()
        inner = [c.cell_contents for c in cells]
    out = {getattr(fn, "__module__", None) or ""}
    for f in inner:
        out |= _modules(f, seen)
    return out - {""}


def test_the_accelerator_tables_run_nothing_of_the_cpu_wing():
    """What TPUs and GPUs run (portable, and custom_vjp on TPU) is backend-neutral code: no entry
    of theirs comes from almol_jax/cpu/ (the wing exists to make the CPU backend fast); the cpu
    table's do (so the check can fail)."""
    from almol_jax.model import kernels

    def wing(table):
        entries = (table.rms_norm, table.swiglu, table.attention, table.lora_project)
        return sorted(m for fn in entries for m in _modules(fn) if m.startswith("almol_jax.cpu"))

    def table(platform, dtype, name="auto"):
        cfg = ModelConfig(**SIZES, num_key_value_heads=4, dtype=dtype, kernels=name)
        return kernels.choose(cfg, [SimpleNamespace(platform=platform)] * 8)

    tpu = table("tpu", "bfloat16")
    assert tpu.name == "custom_vjp" and wing(tpu) == []
    assert wing(table("tpu", "float32")) == []  # float32 on TPU: still not the CPU's merged LoRA
    assert wing(table("gpu", "bfloat16")) == [] and wing(table("cpu", "bfloat16")) == []
    assert wing(kernels.PORTABLE["xla"]) == []
    # the cpu table's attention (behind the _dense closure) and LoRA are seen
    assert {"almol_jax.cpu.attention", "almol_jax.cpu.lora"} <= set(wing(kernels.CPU))
