"""Checkpoints under real interruptions (subprocesses): SIGKILL mid-run then restart ends bitwise
equal to an uninterrupted run with the same data order; SIGTERM saves and exits 0."""

import json
import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from train_runs import NO_VALIDATION, REPO, env_with_devices, train_cmd, train_records

from almol_jax.model.lora import trainable_filter
from almol_jax.run.checkpoint import latest_step
from almol_jax.run.restore import restore_for_inference

RUN = (
    "train.steps=40",
    "checkpoint.every=4",
    NO_VALIDATION,
    "checkpoint.async_save=true",
)


def _complete_steps(run_dir: Path) -> list[int]:
    ckpts = run_dir / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def _wait_for(predicate, proc, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def _params(run_dir):
    _, model, _ = restore_for_inference(run_dir, step="latest")
    _, trainable, _ = nnx.split(model, trainable_filter(False), ...)
    return [np.asarray(x) for x in jax.tree.leaves(trainable)]


def _losses(run_dir):
    return [
        (r["step"], r["loss"], r["grad_norm"], r["logps/chosen"]) for r in train_records(run_dir)
    ]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run_bitwise(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(killed, *RUN),
        env=env_with_devices(1),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait_for(lambda: any(s >= 4 for s in _complete_steps(killed)), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL  # it was killed mid-run, not finished
    resumed_from = latest_step(killed)
    assert resumed_from is not None and 4 <= resumed_from < 40

    # The restart and the uninterrupted reference run side by side.
    procs = {
        d: subprocess.Popen(
            train_cmd(d, *RUN),
            env=env_with_devices(1),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in (killed, whole)
    }
    outputs = {d: p.communicate(timeout=400) for d, p in procs.items()}
    for d, p in procs.items():
        assert p.returncode == 0, outputs[d][1][-3000:]
    out = outputs[killed][0]
    assert json.loads(out[out.index("{") :])["step"] == 40

    for got, want in zip(_params(killed), _params(whole), strict=True):
        np.testing.assert_array_equal(got, want)
    # Same data order and the same numbers at every step (metrics.jsonl was cut back to the
    # checkpoint on resume, then continued).
    assert _losses(killed) == _losses(whole)
    assert [s for s, *_ in _losses(whole)] == list(range(1, 41))


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
    run_dir = tmp_path / "term"
    proc = subprocess.Popen(
        train_cmd(run_dir, "train.steps=5000", "checkpoint.every=10000", NO_VALIDATION),
        env=env_with_devices(1),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert _wait_for(lambda: len(train_records(run_dir)) >= 3, proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    summary = json.loads(out[out.index("{") :])
    assert summary["stopped"] == "signal SIGTERM"
    assert 3 <= summary["step"] < 5000
    assert latest_step(run_dir) == summary["step"]
