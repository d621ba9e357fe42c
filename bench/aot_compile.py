"""Compile a run's real programs for a TPU or GPU target on this CPU host, and report their memory.

    JAX_PLATFORMS=cpu python bench/aot_compile.py --config configs/almol_meditron7b_lpm24.yaml \
        --target v5e-8 [--json out.json] [--max-batch] [--programs train,eval,prefill,decode] \
        [key=value ...]

Targets (bench/aot_targets.py): v4-8, v5e-8, v5p-8, v6e-8, v5e-16 (a multi-host slice), h100x8,
h200x8, h200x1. Needs requirements-aot.txt. With abstract parameters (nothing allocated) it lowers
and compiles, on the target's compile-only devices, the run's own programs with the config's mesh,
logical-axis rules, micro-batch and longest length bucket:

- train: almol_jax.train.step's train step (build_train_step: the run's shardings, the state
  donated), one global batch of micro_batch_size x grad_accum prefix-shared rows of --row-len
  tokens (default: the longest data.buckets) with --label-len response labels (default 2/3 of
  the row: 256 prompt + 2 x 256 response tokens at 768);
- eval: the eval step on micro_batch_size rows;
- prefill / decode: generation.kv_steps' prompt prefill (generation.batch_size prompts of
  data.max_prompt_length tokens) and one cached decode step (cache of prompt +
  generation.max_new_tokens).

Per program it prints the compiler's per-device memory (arguments, outputs, temporaries; peak =
arguments + outputs - aliased + temporaries), compile seconds, the custom calls the compiled
program keeps (which kernels survived: cuDNN's fused attention, a Pallas kernel) and, for the
train step, the
analytical model FLOPs (bench/common.train_step_flops: TPU cost analysis counts a scanned loop
once) with the step-time and tokens/s bounds at 40% and 50% of the chips' bf16 peak. A program
fits when it compiles (a TPU compile fails with RESOURCE_EXHAUSTED when it does not) and its peak
leaves 10% of the device memory free. `--max-batch` finds the largest micro-batch (a multiple of
the data-parallel ways) whose train step fits, predicting each probe from the figures compiled
so far (bench/batch_search.py): about 4 compiles where a step's memory is near-linear in its
rows (doubling and bisecting took 8-16); a cliff in the memory (8 x H200) takes as many.

The model shapes come from model.preset when model.source is not a local checkpoint directory
(the recipe's source is a placeholder). The last line is
`aot target=NAME fits=true|false peak_gib=X hbm_gib=Y`; exit 0 when every program fits, 3 when
one does not, 2 on a user error.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.aot_targets import GIB, TARGETS, Target, target_devices  # noqa: E402
from bench.batch_search import Probe, largest_fitting, need_gib  # noqa: E402
from bench.common import BenchShape, train_step_flops  # noqa: E402

HEADROOM = 0.10  # a program fits when its peak leaves this share of the device memory free
PROGRAMS = ("train", "eval", "prefill", "decode")


def run_config(config_path: str, overrides: list[str], platform: str = "tpu"):
    """The run config with its overrides; model shapes from the preset unless the source is a
    local checkpoint directory (the placeholder of the recipe is not). For a GPU target without
    the cuDNN wheel here, attention "auto"/"cudnn" is compiled as "xla" (said so)."""
    from almol_jax.config.loader import load_config

    cfg = load_config(config_path, overrides)
    source = cfg.model.source
    if source is not None and not (Path(source) / "config.json").is_file():
        print(f"model.source={source!r} is not a local checkpoint: shapes of model.preset")
        overrides = [*overrides, "model.source=null"]
        if cfg.tokenizer.kind == "hf":
            # nothing is tokenized here; the resolved path (the source) keeps the config valid
            overrides.append(f"tokenizer.path={cfg.tokenizer.path}")
    no_cudnn = importlib.util.find_spec("nvidia") is None or (
        importlib.util.find_spec("nvidia.cudnn") is None
    )
    if platform == "gpu" and cfg.model.attention_impl in ("auto", "cudnn") and no_cudnn:
        print(
            "cuDNN is not installed here (nvidia-cudnn-cu12): the GPU attention is compiled as "
            "model.attention_impl=xla (on a GPU machine auto picks cudnn in bf16)"
        )
        overrides = [*overrides, "model.attention_impl=xla"]
    return load_config(config_path, overrides)


def _abstract(tree, shardings):
    """ShapeDtypeStructs of `tree` carrying the matching leaves of `shardings`."""
    import jax

    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


class Programs:
    """The run's model split and sharded abstractly on the target mesh, and its programs."""

    def __init__(self, cfg, devices, *, constrain_activations: bool = True):
        import jax
        from flax import nnx
        from jax.sharding import NamedSharding, PartitionSpec

        from almol_jax.model.build import abstract_model
        from almol_jax.model.lora import trainable_filter
        from almol_jax.run.setup import lora_config, make_run_mesh, model_config
        from almol_jax.train import placement
        from almol_jax.train import step as step_lib
        from almol_jax.train.loop import step_settings

        self.cfg = cfg
        self.mesh = make_run_mesh(cfg, devices=devices)
        self.rules = cfg.mesh.rules
        self.config = model_config(cfg)
        # unconstrained: the model as built before issue 16 (no activation constraints, kernels
        # chosen for this host: use bf16 and model.attention_impl=xla), for the memory table
        graphdef, state = abstract_model(
            self.config,
            lora=lora_config(cfg),
            mesh=self.mesh if constrain_activations else None,
            rules=self.rules,
        )
        model = nnx.merge(graphdef, state)
        self.graphdef, trainable, frozen = nnx.split(model, trainable_filter(cfg.lora.enabled), ...)
        self.settings = step_settings(cfg, total_steps=1000)
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.trainable_sh = placement.full_shardings(trainable, self.mesh, self.rules)
        self.frozen_sh = placement.full_shardings(frozen, self.mesh, self.rules)
        self.state_sh = step_lib.state_shardings(
            self.trainable_sh, self.settings.tx, trainable, self.replicated
        )
        tx = self.settings.tx
        state_shapes = jax.eval_shape(lambda t: step_lib.init_train_state(t, tx), trainable)
        self.state = _abstract(state_shapes, self.state_sh)
        self.trainable = _abstract(trainable, self.trainable_sh)
        self.frozen = _abstract(frozen, self.frozen_sh)

    def batch(self, rows: int, row_len: int, label_len: int):
        """An abstract indexed batch (one pair per row), rows split over the batch rule."""
        import jax

        from almol_jax.data.prefix_sharing import empty_indexed
        from almol_jax.train import placement

        host = empty_indexed(rows, row_len, label_len, 1)
        shardings = placement.batch_shardings(host, self.mesh, self.rules)
        return {
            k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k])
            for k, v in host.items()
        }

    def lowered(self, program: str, rows: int, row_len: int, label_len: int):
        from almol_jax.train import step as step_lib

        if program == "train":
            fn = step_lib.build_train_step(
                state_sharding=self.state_sh,
                frozen_sharding=self.frozen_sh,
                batch_sharding={k: v.sharding for k, v in self.batch(rows, 1, 1).items()},
                replicated=self.replicated,
            )
            batch = self.batch(rows * self.cfg.train.grad_accum, row_len, label_len)
            return fn.lower(self.graphdef, self.state, self.frozen, batch, self.settings)
        if program == "eval":
            batch = self.batch(rows, row_len, label_len)
            fn = step_lib.build_eval_step(
                trainable_sharding=self.trainable_sh,
                frozen_sharding=self.frozen_sh,
                batch_sharding={k: v.sharding for k, v in batch.items()},
                replicated=self.replicated,
            )
            return fn.lower(self.graphdef, self.trainable, self.frozen, batch, self.settings)
        return self._decode_lowered(program)

    def _decode_lowered(self, program: str):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from almol_jax.generation import kv_steps
        from almol_jax.model.kv_cache import init_cache
        from almol_jax.sharding import logical_sharding

        rows = self.cfg.generation.batch_size
        prompt = self.cfg.data.max_prompt_length
        total = prompt + self.cfg.generation.max_new_tokens
        rows_sh = logical_sharding(("batch", None), self.mesh, self.rules)
        ids = jax.ShapeDtypeStruct((rows, prompt), jnp.int32, sharding=rows_sh)
        params = (self.trainable, self.frozen)
        gd = self.graphdef

        def prefill(params, ids):
            model = nnx.merge(gd, *params)
            return kv_steps.prefill(model, ids, jnp.ones_like(ids), total)

        if program == "prefill":
            return jax.jit(prefill).lower(params, ids)
        cache_sh = logical_sharding(("batch", "kv_heads", None, None), self.mesh, self.rules)
        cache = jax.eval_shape(lambda: init_cache(self.config, rows, total))
        cache = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                x.shape, x.dtype, sharding=cache_sh if x.ndim == 4 else None
            ),
            cache,
        )
        token = jax.ShapeDtypeStruct((rows,), jnp.int32)

        def step(params, token, position, cache):
            return kv_steps.step(nnx.merge(gd, *params), token, position, cache)

        return jax.jit(step, donate_argnums=(3,)).lower(params, token, token, cache)


def compile_program(programs: Programs, program: str, rows, row_len, label_len) -> dict:
    """Compiles one program: memory per device (GiB) and seconds, or fits False with the
    compiler's out-of-memory message."""
    start = time.perf_counter()
    lowered = programs.lowered(program, rows, row_len, label_len)
    try:
        compiled = lowered.compile()
    except Exception as err:  # noqa: BLE001 - the compiler's own verdict on memory
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        message = str(err).splitlines()[0][:300]
        return {"program": program, "compiled": False, "error": message, "detail": str(err)}
    seconds = time.perf_counter() - start
    calls = custom_calls(compiled.as_text())
    m = compiled.memory_analysis()
    peak = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
    )
    return {
        "program": program,
        "compiled": True,
        "compile_s": round(seconds, 1),
        "arguments_gib": m.argument_size_in_bytes / GIB,
        "outputs_gib": m.output_size_in_bytes / GIB,
        "alias_gib": m.alias_size_in_bytes / GIB,
        "temps_gib": m.temp_size_in_bytes / GIB,
        "peak_gib": peak / GIB,
        "custom_calls": calls,
    }


def custom_calls(hlo: str) -> dict[str, int]:
    """How many custom calls of each target the compiled program holds: which kernels the
    compiler kept (``__cudnn$fmha...``: cuDNN's fused attention; ``tpu_custom_call``: a Pallas
    (Mosaic) kernel such as the flash attention), counted from its own HLO text."""
    return dict(sorted(Counter(re.findall(r'custom_call_target="([^"]+)"', hlo)).items()))


def bench_shape(config, pairs: int, row_len: int, label_len: int, lora) -> BenchShape:
    """The train step's shape in bench/common's terms (one prefix-shared pair per row)."""
    half = label_len // 2
    return BenchShape(
        "aot",
        config.padded_vocab_size,
        config.hidden_size,
        config.intermediate_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
        pairs,
        row_len - 2 * half,
        half,
        label_len - half,
        lora_r=lora.r if lora else 0,
    )


def throughput(programs: Programs, target: Target, rows: int, row_len: int, label_len: int):
    """Model FLOPs of one train step and the step-time / tokens/s bounds at 40% and 50% peak."""
    from almol_jax.run.setup import lora_config

    pairs = rows * programs.cfg.train.grad_accum
    shape = bench_shape(programs.config, pairs, row_len, label_len, lora_config(programs.cfg))
    flops = train_step_flops(
        shape, "prefix_shared", response_only_logits=True, label_queries_last=True
    )["total"]
    out = {"model_flops_per_step": flops, "pairs_per_step": pairs, "tokens_per_step": 0}
    out["tokens_per_step"] = pairs * row_len
    for share in (0.4, 0.5):
        seconds = flops / (target.chips * target.peak_bf16 * share)
        out[f"step_s_at_{int(share * 100)}pct"] = seconds
        out[f"tokens_per_s_at_{int(share * 100)}pct"] = pairs * row_len / seconds
    return out


def fits(result: dict, target: Target) -> bool:
    return result["compiled"] and result["peak_gib"] <= (1 - HEADROOM) * target.hbm_gib


def max_batch(programs: Programs, target: Target, row_len: int, label_len: int, start: int):
    """Largest micro-batch (a multiple of the data-parallel ways) whose train step fits, found
    from the compiled figures (bench/batch_search.py); each compile is printed as made."""
    from almol_jax.sharding import batch_shard_count

    measured: dict[str, float] = {}

    def probe(rows: int) -> Probe:
        result = compile_program(programs, "train", rows, row_len, label_len)
        if result["compiled"]:
            measured["arguments_gib"] = result["arguments_gib"]
        need = need_gib(result, measured.get("arguments_gib"))
        ok = fits(result, target)
        seen = f"{need:.2f} GiB" if need is not None else "no figure"
        print(f"  micro_batch_size={rows}: {'fits' if ok else 'does not fit'} ({seen})", flush=True)
        return Probe(rows, ok, need)

    step = batch_shard_count(programs.mesh, programs.rules)
    limit = (1 - HEADROOM) * target.hbm_gib
    best, _ = largest_fitting(probe, start, step, limit, lambda: measured.get("arguments_gib"))
    return best


def _row(r: dict) -> str:
    if not r["compiled"]:
        return f"{r['program']:>8}: does not compile: {r['error']}"
    return (
        f"{r['program']:>8}: args {r['arguments_gib']:.2f} + outputs {r['outputs_gib']:.2f} "
        f"- aliased {r['alias_gib']:.2f} + temps {r['temps_gib']:.2f} = peak "
        f"{r['peak_gib']:.2f} GiB/device  ({r['compile_s']:.0f} s to compile)"
        + "".join(f"\n          custom call {k} x {n}" for k, n in r["custom_calls"].items())
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--target", required=True, choices=sorted(TARGETS))
    parser.add_argument("--programs", default=",".join(PROGRAMS))
    parser.add_argument("--row-len", type=int, default=0, help="0: the longest data.buckets")
    parser.add_argument("--label-len", type=int, default=0, help="0: 2/3 of the row")
    parser.add_argument("--max-batch", action="store_true")
    parser.add_argument(
        "--unconstrained",
        action="store_true",
        help="no activation sharding constraints (the model before issue 16; bf16 + xla attention)",
    )
    parser.add_argument("--json", default=None, help="write every figure to this file")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [p for p in args.programs.split(",") if p]
    unknown = sorted(set(names) - set(PROGRAMS))
    if unknown:
        print(f"error: unknown programs {unknown}; known: {list(PROGRAMS)}", file=sys.stderr)
        return 2
    target = TARGETS[args.target]
    try:
        devices = target_devices(target)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = run_config(args.config, args.overrides, target.platform)
    row_len = args.row_len or max(cfg.data.buckets or [cfg.data.max_length])
    label_len = args.label_len or 2 * row_len // 3
    programs = Programs(cfg, devices, constrain_activations=not args.unconstrained)
    rows = cfg.train.micro_batch_size
    mesh = dict(programs.mesh.shape)
    print(
        f"target {target.name}: {target.chips} x {devices[0].device_kind}, "
        f"{target.hbm_gib:.2f} GiB each; mesh {mesh}; micro_batch_size {rows} x grad_accum "
        f"{cfg.train.grad_accum}; rows of {row_len} tokens, {label_len} labels; "
        f"kernels {programs.config.kernels}/{programs.config.attention_impl}, "
        f"remat {programs.config.remat}"
        f"{', activations unconstrained' if args.unconstrained else ''}",
        flush=True,
    )
    report = {"target": target.name, "mesh": mesh, "micro_batch_size": rows}
    report.update(row_len=row_len, label_len=label_len, hbm_gib=target.hbm_gib)
    if args.max_batch:
        report["max_micro_batch_size"] = best = max_batch(
            programs, target, row_len, label_len, rows
        )
        print(f"largest micro_batch_size with {HEADROOM:.0%} headroom: {best}")
    results = []
    for name in names:
        results.append(compile_program(programs, name, rows, row_len, label_len))
        print(_row(results[-1]), flush=True)
    report["programs"] = results
    if "train" in names:
        report["throughput"] = t = throughput(programs, target, rows, row_len, label_len)
        print(
            f"train step: {t['model_flops_per_step'] / 1e12:.1f} TFLOP (model), "
            f"{t['tokens_per_step']} tokens; at 40%/50% of bf16 peak: "
            f"{t['step_s_at_40pct']:.2f}/{t['step_s_at_50pct']:.2f} s/step, "
            f"{t['tokens_per_s_at_40pct']:,.0f}/{t['tokens_per_s_at_50pct']:,.0f} tokens/s"
        )
    ok = all(fits(r, target) for r in results)
    peak = max((r["peak_gib"] for r in results if r["compiled"]), default=math.nan)
    report.update(fits=ok, peak_gib=peak)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"aot target={target.name} fits={str(ok).lower()} peak_gib={peak:.2f} hbm_gib=", end="")
    print(f"{target.hbm_gib:.2f}")
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
