"""The CPU wing's door for entry points: process settings and per-program compiler options.

train.py, eval.py and the bench scripts call `configure(cfg.runtime, training=...)` first, before
JAX starts its backend (glibc malloc settings, host_allocator.py; the XLA CPU device count,
devices.py), the training loop calls `settle(cfg.runtime)` once the backend is known (undoes the
malloc setting off the CPU backend), and the code that jits a program passes
`compiler_options(program)` ("train_step" or "decode": XLA:CPU options on the CPU backend, None
elsewhere; compiler_options.py). `runtime_section` is the run config's `runtime` section (its
`host_allocator` and `cpu_devices`). The model reaches the wing through its kernel table
(model/kernels.py), never through here.
"""

from __future__ import annotations

from typing import Any

import jax

from almol_jax.cpu import compiler_options as program_options
from almol_jax.cpu import devices, host_allocator


def configure(runtime_section: Any, *, training: bool) -> None:
    """Before JAX starts: runtime.host_allocator (for a `training` process or an evaluation)
    and runtime.cpu_devices."""
    host_allocator.configure(runtime_section.host_allocator, training=training)
    devices.configure(runtime_section.cpu_devices)


def settle(runtime_section: Any) -> None:
    """After the backend started: restores glibc's malloc defaults where `auto` finds no CPU."""
    host_allocator.settle(runtime_section.host_allocator, jax.default_backend())


def compiler_options(program: str, platform: str | None = None) -> dict | None:
    """XLA:CPU options for `program` ("train_step" | "decode") compiled for the CPU (`platform`
    of its devices; None: this process's backend), else None."""
    return program_options.for_program(program, platform)
