"""The GPU check of issue 16, run by bench/gpu_check.sh on a machine with NVIDIA GPUs.

    python bench/gpu_check.py [--config configs/almol_meditron7b_lpm24.yaml] [--json out.json]
    python bench/gpu_check.py --compile-for-gpu FILE   # (CPU-only process) compile + serialize

1. peak: the best bf16 FLOP/s of an 8192^3 matmul chain on one card (bench/matmul_peak.py).
2. train: the recipe-shaped LoRA CPO step (the config's model with random weights, LoRA, bf16,
   remat; prefix-shared rows of 768 tokens = 256 prompt + 2 x 256 response), through the run's
   own placement and train step, FSDP over the local GPUs. The largest micro-batch that fits is
   chosen from the compiled memory (peak <= 90% of the card's bytes_limit), then 5 steps are
   timed: tokens/s and MFU = analytical model FLOPs (bench/common.train_step_flops) / time /
   (cards x measured peak).
3. decode: greedy decoding of 64 prompts (256 tokens) for 128 new tokens (no EOS stop): new
   tokens/s (generation.decode.decode_tokens).
4. aot: a program compiled in a CPU-only process for this card's compile-only twin
   (bench/aot_targets.py, JAX_PLATFORMS=cpu) and serialized, then deserialize_and_load-ed here,
   run, and compared with the same program jitted here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROW_LEN, PROMPT, RESPONSE = 768, 256, 256
AOT_SHAPE = (512, 1024)


def aot_program(x, w):
    """The program of the AOT check: a small MLP-like chain in bf16."""
    import jax
    import jax.numpy as jnp

    h = jax.nn.silu(x.astype(jnp.bfloat16) @ w.astype(jnp.bfloat16))
    return jnp.sum(h.astype(jnp.float32) ** 2, axis=-1)


def aot_inputs():
    import jax

    kx, kw = jax.random.split(jax.random.key(0))
    return jax.random.normal(kx, AOT_SHAPE), jax.random.normal(kw, AOT_SHAPE[::-1]) / 32


def compile_for_gpu(path: str, spec: str) -> None:
    """(CPU-only process) compiles aot_program for one compile-only GPU of `spec`, serializes it."""
    import pickle

    import jax
    from jax.experimental import serialize_executable
    from jax.sharding import SingleDeviceSharding

    from bench.aot_targets import TARGETS, target_devices

    target = next(t for t in TARGETS.values() if t.gpu_spec == spec and t.chips == 8)
    device = target_devices(target)[0]
    sharding = SingleDeviceSharding(device)
    args = [
        jax.ShapeDtypeStruct(s, "float32", sharding=sharding) for s in (AOT_SHAPE, AOT_SHAPE[::-1])
    ]
    compiled = jax.jit(aot_program).lower(*args).compile()
    with open(path, "wb") as f:
        pickle.dump(serialize_executable.serialize(compiled), f)


def check_aot(tmp: str) -> dict:
    """Compiles in a CPU-only subprocess, loads and runs the executable on GPU 0."""
    import pickle

    import jax
    import numpy as np
    from jax.experimental import serialize_executable

    kind = jax.devices()[0].device_kind
    spec = "h200" if "H200" in kind else "h100"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    path = os.path.join(tmp, "aot_program.pickle")
    cmd = [sys.executable, __file__, "--compile-for-gpu", path, "--spec", spec]
    subprocess.run(cmd, env=env, check=True)
    with open(path, "rb") as f:
        payload, in_tree, out_tree = pickle.load(f)
    loaded = serialize_executable.deserialize_and_load(
        payload, in_tree, out_tree, execution_devices=jax.devices()[:1]
    )
    x, w = aot_inputs()
    got, want = np.asarray(loaded(x, w)), np.asarray(jax.jit(aot_program)(x, w))
    return {
        "device_kind": kind,
        "spec": spec,
        "max_rel_diff": float(np.max(np.abs(got - want) / np.abs(want))),
    }


def recipe_batch(rows: int, vocab: int) -> dict:
    """Random prefix-shared rows: prompt, chosen, rejected (256 each), one pair per row."""
    import numpy as np

    from almol_jax.data.prefix_sharing import ROLE_CHOSEN, ROLE_REJECTED, empty_indexed

    b = empty_indexed(rows, ROW_LEN, 2 * RESPONSE, 1)
    rng = np.random.default_rng(0)
    b["input_ids"][:] = rng.integers(3, vocab, size=(rows, ROW_LEN))
    b["attention_mask"][:] = 1
    b["positions"][:] = np.r_[np.arange(PROMPT + RESPONSE), PROMPT + np.arange(RESPONSE)]
    b["role_ids"][:, PROMPT : PROMPT + RESPONSE] = ROLE_CHOSEN
    b["role_ids"][:, PROMPT + RESPONSE :] = ROLE_REJECTED
    chosen_src = np.arange(PROMPT - 1, PROMPT + RESPONSE - 1)
    rejected_src = np.r_[PROMPT - 1, np.arange(PROMPT + RESPONSE, ROW_LEN - 1)]
    b["label_src"][:] = np.r_[chosen_src, rejected_src]
    b["label_ids"][:] = np.take_along_axis(b["input_ids"], b["label_src"] + 1, axis=1)
    b["label_ids"][:, RESPONSE] = b["input_ids"][:, PROMPT + RESPONSE]
    b["label_role"][:] = np.r_[[ROLE_CHOSEN] * RESPONSE, [ROLE_REJECTED] * RESPONSE]
    b["pair_mask"][:] = 1.0
    return b


def check_train(cfg, peak: float) -> dict:
    """The largest fitting recipe step, timed (see the module docstring)."""
    import jax

    from almol_jax.run.setup import build_run_model, make_run_mesh
    from almol_jax.train import placement
    from almol_jax.train.loop import step_settings
    from bench.aot_compile import bench_shape
    from bench.common import train_step_flops

    mesh = make_run_mesh(cfg)
    settings = step_settings(cfg, total_steps=1000)
    model = build_run_model(cfg, mesh=mesh)
    placed = placement.place_model(
        model, lora=cfg.lora.enabled, tx=settings.tx, mesh=mesh, rules=cfg.mesh.rules
    )
    limit = jax.devices()[0].memory_stats()["bytes_limit"]
    n = len(jax.devices())
    for per_card in (32, 24, 16, 12, 8, 4, 2, 1):
        batch = recipe_batch(per_card * n, model.config.vocab_size)
        steps = placement.build_steps(placed, batch, mesh, cfg.mesh.rules)
        placed_batch = steps.place(batch)
        compiled = steps.train.lower(
            placed.graphdef, placed.state, placed.frozen, placed_batch, settings
        ).compile()
        m = compiled.memory_analysis()
        need = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
        if need + m.temp_size_in_bytes <= 0.9 * limit:
            break
    else:
        raise SystemExit("error: not even one pair per card fits in 90% of the card's memory")
    state = placed.state
    for i in range(6):
        if i == 1:
            t0 = time.perf_counter()
        state, metrics = compiled(state, placed.frozen, placed_batch)  # static args are baked in
        jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - t0) / 5
    lora = cfg.lora.for_model()
    shape = bench_shape(model.config, per_card * n, ROW_LEN, 2 * RESPONSE, lora)
    flops = train_step_flops(
        shape, "prefix_shared", response_only_logits=True, label_queries_last=True
    )
    return {
        "pairs_per_card": per_card,
        "peak_gib": (need + m.temp_size_in_bytes) / 2**30,
        "s_per_step": seconds,
        "tokens_per_s": per_card * n * ROW_LEN / seconds,
        "mfu": flops["total"] / seconds / (n * peak),
        "loss": float(metrics["loss"]),
    }


def check_decode(cfg) -> dict:
    import jax
    import numpy as np

    from almol_jax.generation.decode import decode_tokens
    from almol_jax.generation.settings import DecodeSettings
    from almol_jax.run.setup import build_run_model

    model = build_run_model(cfg, mesh=None)
    ids = np.random.default_rng(1).integers(3, model.config.vocab_size, size=(64, PROMPT))
    mask = np.ones_like(ids)
    settings = DecodeSettings(max_new_tokens=128)
    decode_tokens(model, ids, mask, settings=settings, eos_ids=(-1,))  # compile
    t0 = time.perf_counter()
    tokens, _ = decode_tokens(model, ids, mask, settings=settings, eos_ids=(-1,))
    jax.block_until_ready(tokens)  # before the clock stops: dispatch is asynchronous
    seconds = time.perf_counter() - t0
    return {"batch": 64, "new_tokens": 128, "new_tokens_per_s": 64 * 128 / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/almol_meditron7b_lpm24.yaml")
    parser.add_argument("--json", default="gpu_check.json")
    parser.add_argument("--compile-for-gpu", default=None)
    parser.add_argument("--spec", default="h200")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.compile_for_gpu:
        compile_for_gpu(args.compile_for_gpu, args.spec)
        return
    import tempfile

    from bench.aot_compile import run_config
    from bench.matmul_peak import measure_matmul_peak

    out = {"peak": measure_matmul_peak(8192, 10, "bfloat16")}
    print(f"bf16 matmul peak: {out['peak']['flops_per_s'] / 1e12:.0f} TFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out["aot"] = check_aot(tmp)
    print(f"aot executable from a CPU-only compile: {out['aot']}", flush=True)
    cfg = run_config(args.config, ["mesh.data=1", "mesh.fsdp=-1", *args.overrides])
    out["train"] = check_train(cfg, out["peak"]["flops_per_s"])
    print(f"recipe LoRA CPO step: {out['train']}", flush=True)
    out["decode"] = check_decode(cfg)
    print(f"decode: {out['decode']}", flush=True)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
