"""Several XLA CPU devices in one process, for data-parallel decoding on the CPU backend.

XLA:CPU runs a decode step's small products one after another on one thread (a batched matrix
product does not split across threads, and independent operations do not run concurrently),
so a single CPU device leaves the other cores idle while decoding. With one XLA CPU device per
core and the prompts split across them (weights replicated), each device decodes its share on
its own thread: bench/generate.py measured 0.119 -> 0.091 s for 8 prompts x 64 new tokens on 2
cores, identical tokens (docs/benchmarks.md). The training step, whose large products already
use every core, is slower split over CPU devices, so the default stays one device.

`runtime.cpu_devices` asks for the devices (cpu/runtime.configure applies it before JAX starts);
almol_jax.sharding.data_parallel_mesh() is the decode mesh over them.
"""

from __future__ import annotations

import os

import jax


def requested_count(n: int) -> int:
    """The CPU device count that `n` asks for: n itself, or one per usable CPU for 0."""
    if n < 0:
        raise ValueError(f"runtime.cpu_devices={n} must be >= 0 (0 = one per CPU)")
    return n or len(os.sched_getaffinity(0))


def configure(n: int) -> int:
    """Before JAX starts its CPU backend: asks XLA for `requested_count(n)` CPU devices.

    Returns that count. Accelerator backends are unaffected (only the CPU client reads it)."""
    count = requested_count(n)
    if count > 1:
        try:
            jax.config.update("jax_num_cpu_devices", count)
        except RuntimeError as err:  # the CPU backend already started with its device count
            raise RuntimeError(
                f"runtime.cpu_devices={n} must be applied before JAX starts its CPU backend "
                "(the entry points do it first; a library caller calls "
                "almol_jax.cpu.runtime.configure at the top of the program)"
            ) from err
    return count
