"""Checkpoints under real interruptions (subprocesses): SIGKILL mid-run then restart ends bitwise
equal to an uninterrupted run with the same data order (full fine-tuning, and LoRA with adapter
dropout, whose masks are drawn from the seed, the step and the micro-batch); SIGTERM saves and
exits 0."""

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

from almol_jax.model.lora import LoRAParam, trainable_filter
from almol_jax.run.checkpoint import latest_step
from almol_jax.run.restore import restore_for_inference
from almol_jax.train.metrics_log import read_metrics

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


def _kill_when(run_dir, run, ready) -> None:
    """Starts `run` in `run_dir` and SIGKILLs it once `ready()` holds (it must not finish first)."""
    proc = subprocess.Popen(
        train_cmd(run_dir, *run),
        env=env_with_devices(1),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait_for(ready, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL  # it was killed mid-run, not finished


def _kill_after_first_checkpoint(run_dir, run) -> int:
    """Kills `run` once its first checkpoint is complete; returns the step a restart resumes from."""
    _kill_when(run_dir, run, lambda: latest_step(run_dir) is not None)
    return latest_step(run_dir)


def _finish_side_by_side(run_dirs, run) -> dict:
    """Runs `run` to the end in each of `run_dirs` at once; {run_dir: (stdout, stderr)}."""
    procs = {
        d: subprocess.Popen(
            train_cmd(d, *run),
            env=env_with_devices(1),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in run_dirs
    }
    outputs = {d: p.communicate(timeout=400) for d, p in procs.items()}
    for d, p in procs.items():
        assert p.returncode == 0, outputs[d][1][-3000:]
    return outputs


def _adapters(run_dir):
    _, model, _ = restore_for_inference(run_dir, step="latest")
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, LoRAParam))]


def _records(run_dir):
    """Every metrics.jsonl record (training and validation) without the timing keys."""
    return [{k: v for k, v in r.items() if k != "tokens_per_sec"} for r in read_metrics(run_dir)]


def _losses(run_dir):
    return [
        (r["step"], r["loss"], r["grad_norm"], r["logps/chosen"]) for r in train_records(run_dir)
    ]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run_bitwise(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _kill_when(killed, RUN, lambda: any(s >= 4 for s in _complete_steps(killed)))
    resumed_from = latest_step(killed)
    assert resumed_from is not None and 4 <= resumed_from < 40

    # The restart and the uninterrupted reference run side by side.
    outputs = _finish_side_by_side((killed, whole), RUN)
    out = outputs[killed][0]
    assert json.loads(out[out.index("{") :])["step"] == 40

    for got, want in zip(_params(killed), _params(whole), strict=True):
        np.testing.assert_array_equal(got, want)
    # Same data order and the same numbers at every step (metrics.jsonl was cut back to the
    # checkpoint on resume, then continued).
    assert _losses(killed) == _losses(whole)
    assert [s for s, *_ in _losses(whole)] == list(range(1, 41))


LORA_DROPOUT = (
    "train.steps=24",
    "checkpoint.every=4",
    "train.eval_every=8",
    "train.eval_batches=1",
    "checkpoint.async_save=true",
    "lora.enabled=true",
    "lora.r=4",
    "lora.alpha=8.0",
    "lora.dropout=0.3",
)


@pytest.mark.slow
def test_lora_with_dropout_sigkill_then_resume_matches_uninterrupted_run_bitwise(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    resumed_from = _kill_after_first_checkpoint(killed, LORA_DROPOUT)
    assert 4 <= resumed_from < 24
    _finish_side_by_side((killed, whole), LORA_DROPOUT)
    assert latest_step(killed) == latest_step(whole) == 24
    got, want = _adapters(killed), _adapters(whole)
    assert len(got) == len(want) > 0
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    # Every record (training and validation), bitwise, in the same order.
    records = _records(whole)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 25))
    assert sum("eval/loss" in r for r in records) == 3
    assert _records(killed) == records
    # Dropout is on: the run differs from the same run without it (from step 2: the adapters'
    # B starts at zero, so step 1 cannot tell).
    plain = tmp_path / "plain"
    _finish_side_by_side((plain,), (*LORA_DROPOUT, "lora.dropout=0.0"))
    last = [r["loss"] for r in records if "loss" in r][-1]
    assert [r["loss"] for r in _records(plain) if "loss" in r][-1] != last


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
