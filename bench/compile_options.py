"""What XLA:CPU's loop emitters cost and buy: the LoRA CPO train step compiled with and without
`xla_cpu_use_fusion_emitters: false`, compile time and step time, interleaved in one process.

    python bench/compile_options.py [--shape almol-mini] [--rounds 2] [--steps 20]

Each round builds the step afresh (`jax.clear_caches()`, no persistent compilation cache) once
with XLA's default (fusion) emitters and once with the loop emitters, times the first call
(compile + one step) and then `--steps` steps. Compile seconds = first call - median step.
Prints one line per (round, setting), then the medians, and last
`compile_ratio=<loop / default> step_ratio=<loop / default>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import get_shape, machine_description, median  # noqa: E402
from bench.train_step import OursSystem  # noqa: E402

SETTINGS = {"default": {}, "loop": {"xla_cpu_use_fusion_emitters": False}}


def measure(shape, options: dict, steps: int, seed: int) -> dict:
    import jax

    jax.clear_caches()
    system = OursSystem(shape, seed, "prefix_shared", options=options)
    system.setup()
    t0 = time.perf_counter()
    system._step()
    first = time.perf_counter() - t0
    step = median(system.run_steps(steps)["times"])
    return {"compile_s": first - step, "step_s": step}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="almol-mini")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    shape = get_shape(args.shape)
    print(f"machine: {machine_description()}; shape {shape.name}", flush=True)
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for r in range(args.rounds):
        for name, options in SETTINGS.items():
            out = measure(shape, options, args.steps, args.seed)
            results[name].append(out)
            print(
                f"round {r} {name:>7}: compile {out['compile_s']:.1f} s, "
                f"step {out['step_s'] * 1e3:.1f} ms",
                flush=True,
            )
    med = {
        name: {k: median([o[k] for o in rows]) for k in ("compile_s", "step_s")}
        for name, rows in results.items()
    }
    for name, m in med.items():
        print(f"median {name:>7}: compile {m['compile_s']:.1f} s, step {m['step_s'] * 1e3:.1f} ms")
    print(
        f"compile_ratio={med['loop']['compile_s'] / med['default']['compile_s']:.2f} "
        f"step_ratio={med['loop']['step_s'] / med['default']['step_s']:.3f}"
    )


if __name__ == "__main__":
    main()
