"""almol_jax.cpu.host_allocator: freed host buffers are reused (no page faults) only when asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from almol_jax.config import load_config
from almol_jax.cpu import host_allocator

# mallocs, writes and frees a 64 MiB buffer (above glibc's largest mmap threshold) 6 times and
# prints the minor page faults per round after the first.
PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from almol_jax.cpu import host_allocator
    mode, backend = sys.argv[1], sys.argv[2]
    applied = host_allocator.configure(mode)
    kept = host_allocator.settle(mode, backend)
    import ctypes, ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size = 64 << 20  # as XLA:CPU allocates its buffers: malloc, written, freed
    faults = []
    for i in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buf = libc.malloc(size)
        ctypes.memset(buf, 1, size)
        libc.free(buf)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"applied": applied, "kept": kept, "faults": faults[1:]}))
    """
)


def _probe(mode: str, backend: str = "cpu") -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")  # "auto" keeps memory on CPU hosts only
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, backend],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


needs_glibc = pytest.mark.skipif(
    host_allocator._glibc() is None, reason="the C library is not glibc (no mallopt knobs)"
)


@needs_glibc
def test_keep_reuses_freed_pages_and_system_faults_them_in_again():
    system = _probe("system")
    assert system["applied"] is False and system["kept"] is False
    # 64 MiB = 16,384 pages of 4 KiB, faulted in again every round by glibc's mmap/munmap
    assert min(system["faults"]) > 10_000, system
    for mode in ("keep", "auto"):
        kept = _probe(mode)
        assert kept["applied"] is True and kept["kept"] is True
        assert max(kept["faults"]) < 500, (mode, kept)


@needs_glibc
def test_auto_off_the_cpu_backend_restores_the_defaults():
    gpu = _probe("auto", backend="gpu")
    assert gpu["applied"] is True and gpu["kept"] is False
    assert min(gpu["faults"]) > 10_000, gpu
    forced = _probe("keep", backend="gpu")  # "keep" keeps it whatever the backend
    assert forced["kept"] is True and max(forced["faults"]) < 500, forced


def test_auto_skips_hosts_that_will_use_an_accelerator():
    assert host_allocator.accelerator_expected({"JAX_PLATFORMS": "tpu"}) is True
    assert host_allocator.accelerator_expected({"JAX_PLATFORMS": "cuda,cpu"}) is True
    assert host_allocator.accelerator_expected({"JAX_PLATFORMS": "cpu"}) is False
    assert host_allocator.configure("auto", environ={"JAX_PLATFORMS": "tpu"}) is False


def test_modes_are_checked():
    with pytest.raises(ValueError, match="host_allocator='bogus'"):
        host_allocator.configure("bogus")
    assert host_allocator.configure("system") is False
    assert host_allocator.configure("auto", training=False) is False  # evaluation: left alone
    assert host_allocator.settle("system", "cpu") is False


def test_config_key_is_typed_and_defaults_to_auto():
    assert load_config(None, []).runtime.host_allocator == "auto"
    assert load_config(None, ["runtime.host_allocator=system"]).runtime.host_allocator == "system"
    with pytest.raises(ValueError, match="host_allocator"):
        load_config(None, ["runtime.host_allocator=bogus"])
    with pytest.raises(ValueError, match="did you mean 'runtime.host_allocator'"):
        load_config(None, ["runtime.host_alocator=keep"])
