"""almol_jax.cpu_devices: how many XLA CPU devices runtime.cpu_devices asks for, and its checks.

The data-parallel decode over two devices is tested end to end in test_eval_checkpoint.py (a
fresh eval.py process: the device count is fixed when the CPU backend starts).
"""

from __future__ import annotations

import os

import jax
import pytest

from almol_jax import cpu_devices
from almol_jax.config import load_config


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
    assert cpu_devices.data_parallel_mesh() is None


def test_config_key():
    assert load_config(None, []).runtime.cpu_devices == 1
    with pytest.raises(ValueError, match="runtime.cpu_devices=-2"):
        load_config(None, ["runtime.cpu_devices=-2"])
