"""almol_jax.cpu.devices: how many XLA CPU devices runtime.cpu_devices asks for, and its checks.

The data-parallel decode over two devices is tested end to end in test_eval_checkpoint.py (a
fresh eval.py process: the device count is fixed when the CPU backend starts).
"""

from __future__ import annotations

import os

import jax
import pytest

from almol_jax.config import load_config
from almol_jax.cpu import devices as cpu_devices
from almol_jax.sharding import data_parallel_mesh


def test_requested_count():
    assert cpu_devices.requested_count(3) == 3
    assert cpu_devices.requested_count(0) == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="cpu_devices=-1"):
        cpu_devices.requested_count(-1)


def test_configure_after_the_backend_started_names_the_fix():
    jax.devices()  # the CPU backend is up (one device in the test process)
    with pytest.raises(RuntimeError, match="before JAX starts its CPU backend"):
        cpu_devices.configure(len(jax.devices()) + 1)
    assert cpu_devices.configure(1) == 1  # one device: nothing to change
    assert data_parallel_mesh() is None


def test_config_key():
    assert load_config(None, []).runtime.cpu_devices == 1
    with pytest.raises(ValueError, match="runtime.cpu_devices=-2"):
        load_config(None, ["runtime.cpu_devices=-2"])


def test_runtime_door_configures_settles_and_names_program_options():
    from almol_jax.cpu import runtime

    section = load_config(None, ["runtime.host_allocator=system"]).runtime
    runtime.configure(section, training=True)  # system: malloc left alone; one device: no change
    runtime.settle(section)
    assert runtime.compiler_options("train_step") is None  # none since 2026-12-05 (compile time)
    assert runtime.compiler_options("decode") == {"xla_cpu_experimental_ynn_fusion_type": ""}
    with pytest.raises(ValueError, match="program='bogus'"):
        runtime.compiler_options("bogus")
