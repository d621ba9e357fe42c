"""Host-memory reuse for the CPU backend: glibc malloc keeps freed buffers in the process.

cpu/runtime.py applies it (`configure` before JAX starts, `settle` once the backend is known).

XLA:CPU allocates a step's temporaries as a few large host buffers. glibc serves a request above
its mmap threshold (never above 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``, so every
step faults its whole working set in again, one zeroed 4 KiB page at a time: the cpo-small CPO
step (bench/train_step.py) took 79,000 minor faults (310 MB) and 0.11 CPU-s of kernel time per
0.27 s step. :func:`keep_freed_memory` makes malloc serve every request from its heap (no mmap),
never trim that heap and use one arena, so a step reuses the pages the previous step freed
(0 faults in most runs, ~15-20% less wall time on that step; docs/benchmarks.md). Measured on
the 2-core machine here: with two or four arenas the faults came back in some processes (the
bench's workers); one arena makes XLA's multi-threaded compilation contend on its lock, so a
compile-bound workload (eval.py's decoding: a program per prompt bucket, short outputs) took
4.5 s instead of 3.1 s. Hence `auto` keeps freed memory for training only.

The process then keeps its peak host memory until it exits, which is what a training process on
the CPU backend wants and what an accelerator host, whose parameters pass through host memory
once at load time, does not: ``runtime.host_allocator: auto`` (the default) applies it before the
backend starts in train.py unless JAX is going to use an accelerator (:func:`accelerator_expected`:
JAX_PLATFORMS, an installed PJRT plugin, libtpu), and :func:`settle` restores glibc's defaults
should the backend still turn out not to be the CPU; eval.py leaves malloc alone under `auto`.
Threads started before the call keep their own arenas, so it must run before JAX starts its
thread pools (the CLI entry points call cpu/runtime.configure first; a library user calls it at
the top of the program, or not at all). Only glibc (Linux) has these knobs; elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import logging
import os
from typing import Literal

Mode = Literal["auto", "keep", "system"]
MODES: tuple[str, ...] = ("auto", "keep", "system")

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_KEEP = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
# glibc's defaults (arena cap: 8 per core on 64-bit); threads already attached to the main arena
# stay there, later threads get arenas of their own again
_SYSTEM = (
    (M_MMAP_MAX, 65536),
    (M_TRIM_THRESHOLD, 128 * 1024),
    (M_ARENA_MAX, 8 * (os.cpu_count() or 1)),
)

log = logging.getLogger(__name__)


def _glibc():
    """The C library when it is glibc (has mallopt and gnu_get_libc_version), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def _apply(settings) -> bool:
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


def keep_freed_memory() -> bool:
    """Heap-only, never-trimmed, single-arena malloc; True when applied (glibc only)."""
    return _apply(_KEEP)


def restore_system_defaults() -> bool:
    """glibc's mmap and trim defaults back (freed large buffers return to the system)."""
    return _apply(_SYSTEM)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"runtime.host_allocator={mode!r} is not one of {list(MODES)}")
    return mode


def accelerator_expected(environ=None) -> bool:
    """Whether JAX will pick an accelerator backend, told without starting one: JAX_PLATFORMS
    names another platform first, or a PJRT plugin (CUDA, ROCm, ...) or libtpu is installed."""
    environ = os.environ if environ is None else environ
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() != "cpu"
    if importlib.util.find_spec("libtpu") is not None:
        return True
    return any(True for _ in importlib.metadata.entry_points(group="jax_plugins"))


def configure(mode: str, *, training: bool = True, environ=None) -> bool:
    """Before JAX starts: applies `mode` ("keep" keeps freed memory, "system" leaves malloc
    alone, "auto" keeps it for `training` on the CPU backend: a training process repeats one
    step, while an evaluation's decoding compiles a program per prompt bucket, and an
    accelerator host's threads would share one malloc arena); returns whether malloc changed."""
    if check_mode(mode) == "system":
        return False
    if mode == "auto" and (not training or accelerator_expected(environ)):
        return False
    applied = keep_freed_memory()
    if not applied:
        log.info("host_allocator=%s: not glibc, malloc left as it is", mode)
    return applied


def settle(mode: str, backend: str) -> bool:
    """After the backend is known: "auto" off a CPU backend restores glibc's defaults.

    Returns whether the keep setting stays in force."""
    if check_mode(mode) == "system":
        return False
    if mode == "auto" and backend != "cpu":
        restore_system_defaults()
        return False
    return _glibc() is not None
