"""Sharded and multi-process training (subprocesses with virtual CPU devices): the same run on 1
device and on 8 devices with mesh (data 2, fsdp 2, tensor 2) gives the same losses; two processes
(gloo, 2 devices each) train on one 4-device mesh and write one checkpoint that this single
process restores, equal to a single-process 4-device run; SIGTERM to one process of a two-process
run stops both at the same step with one checkpoint and exit 0; the multi-host decision logic."""

import json
import signal
import socket
import subprocess
import time
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import nnx
from train_runs import (
    NO_VALIDATION,
    REPO,
    assert_records_close,
    env_with_devices,
    train_cmd,
    train_records,
)

from almol_jax.model.lora import trainable_filter
from almol_jax.run.checkpoint import latest_step
from almol_jax.run.restore import restore_for_inference
from almol_jax.train.distributed import environment_says_multihost, should_initialize

KEYS = ("loss", "nll_loss", "rewards/margins", "logps/chosen", "logps/rejected")


def _launch(run_dir, *extra, devices):
    return subprocess.Popen(
        train_cmd(run_dir, *extra),
        env=env_with_devices(devices),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(procs):
    outs = [p.communicate(timeout=500) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
    return outs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(run_dir):
    _, model, _ = restore_for_inference(run_dir, step="latest")
    _, trainable, _ = nnx.split(model, trainable_filter(False), ...)
    return [np.asarray(x) for x in jax.tree.leaves(trainable)]


def test_one_device_equals_eight_devices_data_fsdp_tensor(tmp_path):
    common = ("train.steps=5", NO_VALIDATION, "checkpoint.every=1000")
    one = _launch(tmp_path / "one", *common, "mesh.data=1", "mesh.fsdp=1", devices=1)
    eight = _launch(
        tmp_path / "eight", *common, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", devices=8
    )
    _finish([one, eight])
    a, b = train_records(tmp_path / "one"), train_records(tmp_path / "eight")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a, b, strict=True):
        assert_records_close(rb, ra, KEYS, rtol=1e-5)


@pytest.mark.slow
def test_two_processes_train_on_one_mesh_and_a_single_process_restores(tmp_path):
    run = ("train.steps=3", NO_VALIDATION, "checkpoint.every=1000")
    mesh = ("mesh.data=2", "mesh.fsdp=2")
    port = _free_port()
    hosts = [
        _launch(
            tmp_path / "multi",
            *run,
            *mesh,
            f"mesh.coordinator_address=127.0.0.1:{port}",
            "mesh.num_processes=2",
            f"mesh.process_id={i}",
            devices=2,
        )
        for i in range(2)
    ]
    single = _launch(tmp_path / "single", *run, *mesh, devices=4)
    outs = _finish([*hosts, single])
    summaries = [json.loads(out[out.index("{") :]) for out, _ in outs]
    assert [s["step"] for s in summaries] == [3, 3, 3]
    assert latest_step(tmp_path / "multi") == 3
    assert sorted(p.name for p in (tmp_path / "multi" / "checkpoints").iterdir()) == ["3"]
    # One metrics file, written by process 0 only, matching the single-process run.
    multi, ref = train_records(tmp_path / "multi"), train_records(tmp_path / "single")
    assert [r["step"] for r in multi] == [1, 2, 3]
    for rm, rs in zip(multi, ref, strict=True):
        assert_records_close(rm, rs, KEYS, rtol=1e-5)
    for got, want in zip(_params(tmp_path / "multi"), _params(tmp_path / "single"), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
    run_dir = tmp_path / "multi"
    port = _free_port()
    hosts = [
        _launch(
            run_dir,
            "train.steps=5000",
            "checkpoint.every=10000",
            NO_VALIDATION,
            "mesh.data=2",
            "mesh.fsdp=2",
            f"mesh.coordinator_address=127.0.0.1:{port}",
            "mesh.num_processes=2",
            f"mesh.process_id={i}",
            devices=2,
        )
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 300
        while len(train_records(run_dir)) < 3 and time.monotonic() < deadline:
            assert all(h.poll() is None for h in hosts), hosts[0].communicate()[1][-3000:]
            time.sleep(0.05)
        assert len(train_records(run_dir)) >= 3
        # Only the second process (not the one writing metrics) is told to stop: the stop is
        # agreed across processes, so both save the same step and leave cleanly.
        hosts[1].send_signal(signal.SIGTERM)
        outs = _finish(hosts)
    finally:
        for h in hosts:
            if h.poll() is None:
                h.kill()
    summaries = [json.loads(out[out.index("{") :]) for out, _ in outs]
    steps = [s["step"] for s in summaries]
    assert steps[0] == steps[1] and 3 <= steps[0] < 5000
    assert [s["stopped"] for s in summaries] == ["stop requested", "signal SIGTERM"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [str(steps[0])]
    assert latest_step(run_dir) == steps[0]


def _mesh(**kw):
    base = dict(distributed="auto", coordinator_address=None, num_processes=None, process_id=None)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({}, False),
        ({"SLURM_NTASKS": "1"}, False),
        ({"SLURM_NTASKS": "4"}, True),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
        ({"TPU_WORKER_HOSTNAMES": "t0"}, False),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, True),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
    ],
)
def test_environment_decides_multihost(env, want):
    assert environment_says_multihost(env) is want
    assert should_initialize(_mesh(), env) is want
    assert should_initialize(_mesh(distributed="off"), env) is False
    assert should_initialize(_mesh(distributed="on"), env) is True


def test_config_decides_multihost():
    assert should_initialize(_mesh(num_processes=2), {}) is True
    assert should_initialize(_mesh(coordinator_address="h:1"), {}) is True
    assert should_initialize(_mesh(num_processes=1), {}) is False
    with pytest.raises(ValueError, match="mesh.distributed='maybe'"):
        should_initialize(_mesh(distributed="maybe"), {})
