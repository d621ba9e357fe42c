"""Host-memory benchmark of the HF export: peak RSS growth while exporting a LoRA model.

Builds a random LLaMA-shaped model with LoRA on all block projections (sizes from the flags;
the default is ~166M parameters, ~0.67 GB in float32, with a 32,017-token vocabulary like
Meditron's), then, in a fresh subprocess per measurement, exports it and samples the process
RSS every millisecond from a thread. Reported: the model's own size, the baseline RSS just
before the export, the peak RSS during it and the growth (peak - baseline), next to the largest
single tensor. `--naive` measures the obvious alternative (gather every tensor into a dict, then
`safetensors.numpy.save_file`) for comparison. On CPU the model itself lives in host memory, so
the growth is what the export adds.

    python bench/export_memory.py                       # merged fp32 + peft + naive, JSON lines
    python bench/export_memory.py --hidden 512 --layers 4 --vocab 8192   # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _sampler(stop: threading.Event, peak: list[int]) -> None:
    import psutil

    proc = psutil.Process()
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.001)


def measure(args: argparse.Namespace) -> dict:
    """Runs in the child process: build, export once, report RSS figures (bytes)."""
    import gc

    import jax
    import numpy as np
    import psutil
    from flax import nnx

    from almol_jax.export import export_model
    from almol_jax.export.streaming import numpy_dtype
    from almol_jax.export.tensors import model_tensor_specs
    from almol_jax.model import LoraConfig, LoRAParam, ModelConfig, build_model

    config = ModelConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.mlp,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        rms_norm_eps=1e-5,
    )
    model = build_model(config, lora=LoraConfig(r=args.rank, alpha=16.0), rngs=0)
    lora = nnx.state(model, LoRAParam)
    leaves, treedef = jax.tree.flatten(lora)
    nnx.update(model, jax.tree.unflatten(treedef, [x + 0.01 for x in leaves]))  # B != 0
    jax.block_until_ready(nnx.state(model))
    model_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
    specs = model_tensor_specs(model, np.dtype(np.float32), merge_lora=True)
    out_dtype = np.dtype(np.float32) if args.mode == "naive" else numpy_dtype(args.dtype)
    largest = max(s.nbytes for s in model_tensor_specs(model, out_dtype, merge_lora=True))
    gc.collect()
    proc = psutil.Process()
    with tempfile.TemporaryDirectory() as tmp:

        def run(out: Path) -> tuple[int, int, float]:
            gc.collect()
            baseline = proc.memory_info().rss
            stop, peak = threading.Event(), [baseline]
            thread = threading.Thread(target=_sampler, args=(stop, peak), daemon=True)
            thread.start()
            start = time.perf_counter()
            if args.mode == "naive":
                from safetensors.numpy import save_file

                out.mkdir()
                tensors = {s.name: s.fetch() for s in specs}
                save_file(tensors, str(out / "model.safetensors"))
                del tensors
            else:
                export_model(
                    model,
                    out,
                    format=args.mode,
                    dtype=args.dtype,
                    max_shard_size=args.max_shard_size,
                    base_model_name_or_path="base-model",
                )
            seconds = time.perf_counter() - start
            stop.set()
            thread.join()
            return baseline, peak[0], seconds

        # First export: includes compiling the per-tensor transforms; second: steady state.
        cold_baseline, cold_peak, cold_seconds = run(Path(tmp) / "cold")
        shutil.rmtree(Path(tmp) / "cold")
        baseline, peak, seconds = run(Path(tmp) / "out")
        out = Path(tmp) / "out"
        written = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    return {
        "mode": args.mode,
        "dtype": args.dtype if args.mode != "naive" else "float32",
        "params": int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))),
        "model_mb": model_bytes / 1e6,
        "largest_tensor_mb": largest / 1e6,
        "written_mb": written / 1e6,
        "baseline_rss_mb": baseline / 1e6,
        "peak_rss_mb": peak / 1e6,
        "growth_mb": (peak - baseline) / 1e6,
        "seconds": seconds,
        "cold_growth_mb": (cold_peak - cold_baseline) / 1e6,
        "cold_seconds": cold_seconds,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--mlp", type=int, default=2752)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32017)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-shard-size", default="200MB")
    parser.add_argument("--modes", default="merged,peft,naive", help="comma-separated")
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # child process
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.mode is not None:
        print(json.dumps(measure(args)))
        return []
    results = []
    for mode in args.modes.split(","):
        child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
        child += ["--mode", mode]
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
        done = subprocess.run(child, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{mode} measurement failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


if __name__ == "__main__":
    main()
