"""Helpers for the training-loop tests: small overrides of configs/tiny.yaml and subprocess runs.

The overrides shrink the tiny config further (2 layers, width 64, one bucket) so that a run
compiles in seconds; `train_cmd` / `run_train` launch `python train.py` in a subprocess with a
chosen number of virtual CPU devices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
CACHE = Path(tempfile.gettempdir()) / f"almol_jax_test_xla_cache_{os.getuid()}"
NO_VALIDATION = "data.validation_files=[]"

SMALL = (
    "model.overrides.hidden_size=64",
    "model.overrides.intermediate_size=128",
    "model.overrides.num_hidden_layers=2",
    "model.overrides.num_attention_heads=4",
    "model.overrides.num_key_value_heads=2",
    "data.buckets=[]",
    "data.max_length=192",
    "data.max_prompt_length=128",
    "train.log_every=1",
    "logging.tensorboard=false",
)


def tiny_lora_run(run_dir: Path, **sections):
    """(config, model) of a tiny LoRA run directory laid out as the training loop lays it out
    (config.yaml, tokenizer/); `sections` are extra config sections. No checkpoint yet."""
    from almol_jax.config import RunConfig, dump_config
    from almol_jax.data.tokenizer import byte_tokenizer
    from almol_jax.run.setup import build_run_model

    cfg = RunConfig.from_dict(
        {
            "seed": 3,
            "output_dir": str(run_dir),
            "model": {"preset": "tiny", "overrides": {"vocab_size": 260}},
            "lora": {"enabled": True, "r": 4, "alpha": 8.0},
            **sections,
        }
    )
    dump_config(cfg, run_dir / "config.yaml")
    byte_tokenizer().save_pretrained(run_dir / "tokenizer")
    return cfg, build_run_model(cfg)


def overrides(run_dir, *extra: str) -> list[str]:
    return [*SMALL, f"output_dir={run_dir}", *extra]


def three_step_config(run_dir, *extra: str):
    """configs/tiny.yaml (SMALL overrides) for 3 steps, validating once (three_step_run)."""
    from almol_jax.config import load_config

    return load_config(
        TINY,
        overrides(
            run_dir,
            "train.steps=3",
            "train.eval_every=3",
            "train.eval_batches=1",
            "checkpoint.every=0",
            "checkpoint.keep_last=1",
            *extra,
        ),
    )


def three_step_run(run_dir, record, *extra: str):
    """Trains three_step_config(run_dir, *extra) in this process.

    `record(batch)` is called on every host batch; returns (train records, eval records, the
    values `record` returned)."""
    from almol_jax.train.loop import run_training
    from almol_jax.train.metrics_log import read_metrics

    cfg = three_step_config(run_dir, *extra)
    seen = []

    def hook(step, batch):
        seen.append(record(batch))
        return batch

    summary = run_training(cfg, batch_hook=hook)
    assert summary["step"] == 3
    records = read_metrics(run_dir)
    return [r for r in records if "loss" in r], [r for r in records if "eval/loss" in r], seen


def plain_oracle_first_step(cfg) -> dict[str, float]:
    """The metrics of a run's first update from the plain-layout oracle (tests/plain_oracle.py):
    the first planned global batch in the plain layout (BatchIterator), scored with the fresh
    model's full logits. The loop logs step 1 from these parameters and these pairs."""
    from flax import nnx
    from plain_oracle import plain_objective_terms

    from almol_jax.data.batching import BatchIterator
    from almol_jax.data.report import DataReport
    from almol_jax.data.tokenize import prepare_split
    from almol_jax.data.tokenizer import load_tokenizer
    from almol_jax.model.lora import trainable_filter
    from almol_jax.run.setup import build_run_model
    from almol_jax.train.loop import step_settings

    tokenizer = load_tokenizer(cfg.tokenizer)
    examples = prepare_split(cfg, tokenizer, "train", DataReport())
    plain = next(BatchIterator.from_config(cfg, examples, tokenizer, train=True))
    graphdef, trainable, frozen = nnx.split(
        build_run_model(cfg), trainable_filter(cfg.lora.enabled), ...
    )
    settings = step_settings(cfg, total_steps=int(cfg.train.steps))
    _, metrics = plain_objective_terms(graphdef, trainable, frozen, plain, settings)
    return {k: float(v) for k, v in metrics.items()}


def env_with_devices(count: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Runs of the same program (restarts, references) reuse compiled executables.
    env["JAX_COMPILATION_CACHE_DIR"] = str(CACHE)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def train_cmd(run_dir, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train.py"),
        "--config",
        str(TINY),
        *overrides(run_dir, *extra),
    ]


def run_train(run_dir, *extra: str, devices: int = 1, timeout: int = 300):
    """Runs train.py to completion; returns the CompletedProcess (stdout/stderr as text)."""
    return subprocess.run(
        train_cmd(run_dir, *extra),
        env=env_with_devices(devices),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_records(run_dir) -> list[dict]:
    """metrics.jsonl training records (those with a "loss" key), in order."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [r for r in map(json.loads, lines) if "loss" in r]


def assert_hosts_concatenate(hosts, whole, *, steps: int) -> None:
    """Per-host iterators give equal shapes, and their rows concatenated are the one-host batch."""
    import numpy as np

    for _ in range(steps):
        parts, full = [next(h) for h in hosts], next(whole)
        for key in full:
            assert all(p[key].shape == parts[0][key].shape for p in parts), key
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), full[key])


def assert_records_close(got: dict, want: dict, keys, *, rtol: float, atol: float = 0.0) -> None:
    """Two runs' logged metrics agree on `keys`. rewards/margins is a difference of two rewards,
    so float32 gives it the rewards' absolute error, not its own relative one: its absolute
    tolerance is rtol times the larger reward (a margin of 0.03 made of rewards near 19 cannot
    agree to 1e-5 of itself when the rewards agree to 1e-5 of theirs)."""
    for key in keys:
        tol = atol
        if key == "rewards/margins":
            rewards = max(abs(want["rewards/chosen"]), abs(want["rewards/rejected"]))
            tol = max(atol, rtol * rewards)
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=tol, err_msg=key)
