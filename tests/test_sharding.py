"""Sharding: logical rules -> PartitionSpecs, and sharded construction/loading on 8 CPU devices.

The 8-device part runs in a subprocess (XLA_FLAGS=--xla_force_host_platform_device_count=8) with
mesh (data 1, fsdp 4, tensor 2): every parameter's shard shape must follow the rules, and logits
must equal the single-device model's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from jax.sharding import PartitionSpec as P

from almol_jax.sharding import DEFAULT_RULES, logical_to_spec, make_mesh

REPO = Path(__file__).resolve().parents[1]


def test_logical_to_spec_default_rules():
    assert logical_to_spec(("embed", "heads")) == P("fsdp", "tensor")
    assert logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")
    assert logical_to_spec(("norm",)) == P(None)
    assert logical_to_spec(("batch", "length")) == P(("data", "fsdp"), None)
    assert logical_to_spec(("embed", "lora_rank")) == P("fsdp", None)
    # a mesh axis is used once per array: the second use is dropped
    assert logical_to_spec(("mlp", "heads")) == P("tensor", None)
    custom = tuple((k, None) if k == "embed" else (k, v) for k, v in DEFAULT_RULES)
    assert logical_to_spec(("embed", "mlp"), custom) == P(None, "tensor")
    with pytest.raises(ValueError, match="'experts'"):
        logical_to_spec(("experts",))


def test_make_mesh_sizes_and_errors():
    import jax

    mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert mesh.devices.size == len(jax.devices())
    with pytest.raises(ValueError, match="need 64 devices"):
        make_mesh({"data": 8, "fsdp": 8, "tensor": 1})


SCRIPT = textwrap.dedent(
    """
    import json, tempfile
    from pathlib import Path
    import jax, numpy as np
    from flax import nnx
    from safetensors.numpy import save_file
    from almol_jax.model import LoraConfig, ModelConfig, build_model, load_model, LoRAParam
    from almol_jax.model.hf_weights import to_hf_tensor
    from almol_jax.sharding import batch_sharding, make_mesh

    assert len(jax.devices()) == 8
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    cfg = ModelConfig.preset("tiny", vocab_size=500, initializer_range=0.1)
    lora = LoraConfig(r=4, alpha=8)
    single = build_model(cfg, lora=lora, rngs=0)
    sharded = build_model(cfg, lora=lora, rngs=0, mesh=mesh)
    # give B non-zero values in both so the adapters matter
    for i, ((p, a), (_, b)) in enumerate(zip(
            nnx.to_flat_state(nnx.state(single, LoRAParam)),
            nnx.to_flat_state(nnx.state(sharded, LoRAParam)))):
        if p[-1] == "lora_b":
            v = 0.05 * jax.random.normal(jax.random.key(i), a.shape)
            a.set_value(v)
            b.set_value(jax.device_put(v, b[...].sharding))

    def shards(model):
        out = {}
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Not(nnx.RngState))):
            arr = var[...]
            out[".".join(map(str, path))] = [
                list(arr.addressable_shards[0].data.shape), len(arr.sharding.device_set)]
        return out

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 500, size=(8, 10)).astype(np.int32)
    mask = np.ones((8, 10), np.int32); mask[1, :4] = 0; mask[5, 7:] = 0
    fwd = nnx.jit(lambda m, i, a: m(i, a))
    ref = np.asarray(fwd(single, ids, mask))
    bs = batch_sharding(mesh)
    out = np.asarray(fwd(sharded, jax.device_put(ids, bs), jax.device_put(mask, bs)))
    same_params = all(
        np.array_equal(np.asarray(a[...]), np.asarray(b[...]))
        for (_, a), (_, b) in zip(nnx.to_flat_state(nnx.state(single, nnx.Param)),
                                  nnx.to_flat_state(nnx.state(sharded, nnx.Param))))

    # write the single model as an HF checkpoint and load it sharded
    d = Path(tempfile.mkdtemp())
    (d / "config.json").write_text(json.dumps(cfg.to_hf_config()))
    tensors = dict(to_hf_tensor(p, v[...], cfg)
                   for p, v in nnx.to_flat_state(nnx.state(single, nnx.Param)))
    save_file(tensors, d / "model.safetensors")
    loaded = load_model(str(d), mesh=mesh)
    out_loaded = np.asarray(fwd(loaded, jax.device_put(ids, bs), jax.device_put(mask, bs)))
    base = build_model(cfg, rngs=0)
    nnx.update(base, nnx.state(single, nnx.Param))
    ref_base = np.asarray(fwd(base, ids, mask))
    print("RESULT" + json.dumps(dict(
        built=shards(sharded), loaded=shards(loaded), same_params=same_params,
        diff=float(np.abs(out - ref).max()), diff_loaded=float(np.abs(out_loaded - ref_base).max()),
        lora_effect=float(np.abs(ref - ref_base).max()))))
    """
)

# shard shapes on (fsdp 4, tensor 2): D 64, N*H 64, K*H 32, F 172, Vp 512, R 4
EXPECTED = {
    "model.embed_tokens.embedding": [[256, 16], 8],
    "lm_head.kernel": [[16, 256], 8],
    "model.norm.scale": [[64], 8],
    "model.layers.0.input_layernorm.scale": [[64], 8],
    "model.layers.1.self_attn.q_proj.kernel": [[16, 32], 8],
    "model.layers.1.self_attn.k_proj.kernel": [[16, 16], 8],
    "model.layers.1.self_attn.v_proj.kernel": [[16, 16], 8],
    "model.layers.1.self_attn.o_proj.kernel": [[32, 16], 8],
    "model.layers.0.mlp.gate_proj.kernel": [[16, 86], 8],
    "model.layers.0.mlp.up_proj.kernel": [[16, 86], 8],
    "model.layers.0.mlp.down_proj.kernel": [[86, 16], 8],
    "model.layers.0.self_attn.q_proj.lora_a": [[16, 4], 8],
    "model.layers.0.self_attn.q_proj.lora_b": [[4, 32], 8],
    "model.layers.0.mlp.down_proj.lora_a": [[86, 4], 8],
    "model.layers.0.mlp.down_proj.lora_b": [[4, 16], 8],
}


def test_sharded_build_and_load_on_8_cpu_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    res = json.loads(line[len("RESULT") :])
    for key, want in EXPECTED.items():
        assert res["built"][key] == want, (key, res["built"][key])
    lora_keys = {k for k in res["built"] if k.endswith(("lora_a", "lora_b"))}
    assert res["loaded"] == {k: v for k, v in res["built"].items() if k not in lora_keys} | {
        k: res["built"][k] for k in lora_keys & set(res["loaded"])
    }
    assert res["same_params"]  # random init does not depend on the sharding
    assert res["lora_effect"] > 1e-3
    assert res["diff"] <= 1e-5, res["diff"]
    assert res["diff_loaded"] <= 1e-5, res["diff_loaded"]
