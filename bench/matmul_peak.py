"""The machine's measured matmul peak: a jitted float32 square matmul, timed.

Used as the denominator of every "fraction of peak" figure (bench/train_step.py measures it in
the same run). Run alone: `python bench/matmul_peak.py [--size 2048] [--repeats 10]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure_matmul_peak(size: int = 2048, repeats: int = 10, dtype: str = "float32") -> dict:
    """Best-of-`repeats` FLOP/s of a jitted `size x size` matmul (a chain of 4 to amortise dispatch).

    Returns {"size", "dtype", "flops_per_s", "seconds"}; seconds is the best time of one matmul.
    """
    import jax

    if size <= 0 or repeats <= 0:
        raise ValueError(f"{size=} and {repeats=} must be positive")
    chain = 4
    key_a, key_b = jax.random.split(jax.random.key(0))
    a_NN = jax.random.normal(key_a, (size, size), dtype) / size**0.5
    b_NN = jax.random.normal(key_b, (size, size), dtype) / size**0.5

    @jax.jit
    def f(a_NN, b_NN):
        for _ in range(chain):
            a_NN = a_NN @ b_NN
        return a_NN

    f(a_NN, b_NN).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a_NN, b_NN).block_until_ready()
        best = min(best, (time.perf_counter() - t0) / chain)
    return {"size": size, "dtype": dtype, "flops_per_s": 2 * size**3 / best, "seconds": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    from bench.common import machine_description

    r = measure_matmul_peak(args.size, args.repeats, args.dtype)
    print(f"machine: {machine_description()}")
    print(
        f"matmul_peak size={r['size']} dtype={r['dtype']}: {r['flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"({r['seconds'] * 1e3:.2f} ms per matmul)"
    )


if __name__ == "__main__":
    main()
