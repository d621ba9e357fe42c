"""Ahead-of-time compiles of the run's programs for TPU and GPU targets on this CPU host
(bench/aot_compile.py): a float32 model for v5e:2x4 (kernels chosen for the TPU, the Pallas flash
attention inside; no XLA:CPU option), an 8 x H200 compile with the configured shardings, the
FSDP decode step gathering one layer at a time, an oversized batch reported as not fitting
on TPU (the compiler's RESOURCE_EXHAUSTED, exit 3), and the --max-batch search."""

from __future__ import annotations

import dataclasses
import json

import jax
import pytest

from almol_jax.cpu import runtime
from almol_jax.model import kernels
from bench import aot_compile
from bench.batch_search import need_gib
from tests.aot_fixtures import SMALL_BF16, programs

ROWS, ROW_LEN, LABELS = 8, 192, 128


def _same_shardings(compiled_tree, configured_tree, ndims_tree) -> int:
    """Asserts each compiled input sharding equals the configured one; returns how many are
    split over more than one device (the check must see real sharding)."""
    split = 0
    for got, want, ndim in zip(
        jax.tree.leaves(compiled_tree),
        jax.tree.leaves(configured_tree),
        jax.tree.leaves(ndims_tree),
        strict=True,
    ):
        assert got.is_equivalent_to(want, ndim), (got, want)
        split += not want.is_fully_replicated
    return split


def _check_inputs(p, compiled, batch_rows):
    state_sh, frozen_sh = compiled.input_shardings[0][:2]
    ndims = jax.tree.map(lambda x: len(x.shape), (p.state, p.frozen))
    assert _same_shardings((state_sh, frozen_sh), (p.state_sh, p.frozen_sh), ndims) > 0
    batch_sh = compiled.input_shardings[0][2]
    want = p.batch(batch_rows, ROW_LEN, LABELS)
    assert batch_sh["input_ids"].is_equivalent_to(want["input_ids"].sharding, 2)


def test_float32_model_compiles_for_tpu_v5e_with_tpu_kernels():
    p = programs("v5e-8", [f"train.micro_batch_size={ROWS}", "train.grad_accum=1"])
    devices = list(p.mesh.devices.flat)
    assert devices[0].platform == "tpu" and jax.default_backend() == "cpu"
    assert p.config.compute_dtype == jax.numpy.float32
    table = kernels.choose(p.config, devices)  # TPU's: not the host's cpu table
    assert table.name == "custom_vjp" and table.attention is kernels.PORTABLE["flash"].attention
    assert runtime.compiler_options("decode", "tpu") is None  # no XLA:CPU option for TPU
    compiled = p.lowered("train", ROWS, ROW_LEN, LABELS).compile()
    # the Pallas (Mosaic) attention kernel, counted as the bench counts it
    assert aot_compile.custom_calls(compiled.as_text()).get("tpu_custom_call", 0) > 0
    _check_inputs(p, compiled, ROWS)
    assert compiled.memory_analysis().temp_size_in_bytes > 0


def test_h200_compile_keeps_the_configured_shardings():
    p = programs("h200x8", [f"train.micro_batch_size={ROWS}", "train.grad_accum=1"])
    devices = list(p.mesh.devices.flat)
    assert devices[0].device_kind.startswith("NVIDIA H200") and len(devices) == 8
    assert kernels.choose(p.config, devices) is kernels.PORTABLE["xla"]  # float32: no cuDNN
    compiled = p.lowered("train", ROWS, ROW_LEN, LABELS).compile()
    _check_inputs(p, compiled, ROWS)


DECODE_MODEL = [
    "model.dtype=bfloat16", "model.overrides.hidden_size=1024",
    "model.overrides.intermediate_size=4096", "model.overrides.num_hidden_layers=8",
    "model.overrides.num_attention_heads=8", "model.overrides.num_key_value_heads=8",
    "model.overrides.vocab_size=1024", "generation.batch_size=16",
]  # fmt: skip


def test_fsdp_decode_gathers_layer_by_layer_not_the_whole_model(monkeypatch):
    """With weights split over 8 H200s, the cached decode step's temporaries hold about two
    layers' gathered weights, not all of them (the compiler's memory_analysis); without the
    gate between layers (llama._after) the same step gathers the whole model up front."""
    from almol_jax.model import llama

    p = programs("h200x8", DECODE_MODEL)
    c = p.config
    layer = 2 * (4 * c.hidden_size**2 + 3 * c.hidden_size * c.intermediate_size)  # bf16 bytes
    gated = p.lowered("decode", 0, 0, 0).compile().memory_analysis().temp_size_in_bytes
    assert gated <= 2.5 * layer, (gated, layer)
    monkeypatch.setattr(llama, "_after", lambda block, gate: block)
    ungated = p.lowered("decode", 0, 0, 0).compile().memory_analysis().temp_size_in_bytes
    assert ungated >= 0.8 * c.num_hidden_layers * layer, (ungated, layer)


def test_oversized_batch_is_reported_not_fitting_on_tpu(capsys, tmp_path):
    overrides = [*SMALL_BF16, "model.overrides.num_hidden_layers=4", "model.remat=none"]
    overrides += ["mesh.data=1", "mesh.fsdp=-1", "train.micro_batch_size=4096"]
    args = ["--config", "configs/tiny.yaml", "--target", "v5e-8", "--programs", "train"]
    out = tmp_path / "aot.json"
    args += ["--json", str(out), "--row-len", "1024"]
    code = aot_compile.main([*args, *overrides, "train.grad_accum=1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 3
    assert lines[-1].startswith("aot target=v5e-8 fits=false peak_gib=")
    assert lines[-1].endswith("hbm_gib=15.75")
    assert any("RESOURCE_EXHAUSTED" in line for line in lines), lines
    # the --max-batch search reads what the compiler's message says the step needed
    (result,) = json.loads(out.read_text())["programs"]
    assert need_gib(result, 0.0) > 15.75, result["detail"][:300]


def test_gpu_check_serialized_executable_path(tmp_path):
    """bench/gpu_check.sh's AOT part where no GPU is: the H200 twin's executable is compiled and
    serialized by a CPU-only process, and the same serialize / deserialize_and_load round trip
    runs a CPU executable equal to the jitted program (loading the GPU one needs the card)."""
    import pickle
    import subprocess

    import numpy as np
    from jax.experimental import serialize_executable

    from bench import gpu_check

    assert subprocess.run(["bash", "-n", "bench/gpu_check.sh"], check=False).returncode == 0
    path = tmp_path / "h200.pickle"
    gpu_check.compile_for_gpu(str(path), "h200")
    payload, in_tree, out_tree = pickle.loads(path.read_bytes())
    assert len(payload) > 1000 and in_tree.num_leaves == 2
    x, w = gpu_check.aot_inputs()
    compiled = jax.jit(gpu_check.aot_program).lower(x, w).compile()
    loaded = serialize_executable.deserialize_and_load(
        *serialize_executable.serialize(compiled), execution_devices=jax.devices()[:1]
    )
    want = jax.jit(gpu_check.aot_program)(x, w)
    np.testing.assert_allclose(loaded(x, w), want, rtol=0, atol=0)


@pytest.mark.slow
def test_max_batch_search_against_the_compiler(capsys, monkeypatch):
    """--max-batch with the compiler's own figures: a small model's train step on 8 H200s
    described with 1 GiB each (a GPU compile reports its peak and never fails on memory, so
    the boundary is cheap to reach). The answer and the next multiple of the 8 ways, compiled
    on their own, fit and do not; the search got there in fewer compiles than doubling and
    bisecting (64, 128, 96, 80, 72 for this boundary)."""
    small = dataclasses.replace(aot_compile.TARGETS["h200x8"], hbm_gib=1.0)
    monkeypatch.setitem(aot_compile.TARGETS, "h200x8", small)
    overrides = [*SMALL_BF16, "model.overrides.num_hidden_layers=4", "model.remat=none"]
    overrides += ["mesh.data=1", "mesh.fsdp=-1", "train.grad_accum=1"]
    args = ["--config", "configs/tiny.yaml", "--target", "h200x8", "--programs", "train"]
    args += ["--row-len", "768"]
    aot_compile.main([*args, "--max-batch", *overrides, "train.micro_batch_size=64"])
    out = capsys.readouterr().out
    probes = [line for line in out.splitlines() if line.startswith("  micro_batch_size=")]
    best = int(out.split("largest micro_batch_size with 10% headroom: ")[1].split()[0])
    assert best >= 64 and best % 8 == 0, out
    assert len(probes) <= 4, probes
    assert aot_compile.main([*args, *overrides, f"train.micro_batch_size={best}"]) == 0
    assert aot_compile.main([*args, *overrides, f"train.micro_batch_size={best + 8}"]) == 3
