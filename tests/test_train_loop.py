"""The training loop in-process: run directory, metric names, best checkpoint, restore for
inference (full fine-tuning and LoRA), and a non-finite loss that stops naming its step."""

import json

import jax
import numpy as np
import pytest
from flax import nnx
from train_runs import TINY, overrides

from almol_jax.config import load_config
from almol_jax.model.lora import trainable_filter
from almol_jax.run.checkpoint import RunCheckpointer, best_step
from almol_jax.run.restore import restore_for_inference
from almol_jax.run.setup import build_run_model
from almol_jax.train.loop import run_training
from almol_jax.train.metrics_log import read_metrics

TRAIN_KEYS = {
    "loss",
    "nll_loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "grad_norm",
    "lr",
    "tokens_per_sec",
    "step",
}


def _leaves(model, lora):
    _, trainable, _ = nnx.split(model, trainable_filter(lora), ...)
    return [np.asarray(x) for x in jax.tree.leaves(trainable)]


def test_full_run_writes_the_run_directory_and_restores(tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_config(
        TINY,
        overrides(
            run_dir,
            "train.steps=6",
            "train.eval_every=3",
            "checkpoint.every=0",
            "checkpoint.keep_last=1",
        ),
    )
    summary = run_training(cfg)
    assert summary["step"] == 6 and summary["stopped"] is None
    for name in ("config.yaml", "metrics.jsonl", "data_report.json", "tokenizer"):
        assert (run_dir / name).exists(), name
    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(set(r) == TRAIN_KEYS for r in train)
    assert all(r["tokens_per_sec"] > 0 for r in train)
    assert [r["step"] for r in evals] == [3, 6]
    assert (
        json.loads((run_dir / "data_report.json").read_text())["splits"]["train"]["total_examples"]
        > 0
    )
    # keep_last=1 plus the best: step 6 (latest) and the lower-val-loss of 3 and 6.
    best = 3 if evals[0]["eval/loss"] < evals[1]["eval/loss"] else 6
    assert best_step(run_dir) == summary["best_step"] == best
    assert RunCheckpointer(run_dir, read_only=True).manager.all_steps() == sorted({best, 6})

    cfg2, model, tok = restore_for_inference(run_dir, step="latest")
    assert cfg2 == cfg and tok.bos_token_id == 1 and tok.eos_token_id == 2
    fresh = _leaves(build_run_model(cfg), lora=False)
    restored = _leaves(model, lora=False)
    ckpt = RunCheckpointer(run_dir, read_only=True)
    _, trainable, _ = nnx.split(build_run_model(cfg), trainable_filter(False), ...)
    saved = [np.asarray(x) for x in jax.tree.leaves(ckpt.restore_trainable(6, trainable))]
    for got, want in zip(restored, saved, strict=True):
        np.testing.assert_array_equal(got, want)
    assert any(not np.array_equal(r, f) for r, f in zip(restored, fresh, strict=True))
    # The step folder form names the same checkpoint.
    _, model6, _ = restore_for_inference(run_dir / "checkpoints" / "6")
    for got, want in zip(_leaves(model6, lora=False), saved, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="neither a run directory"):
        restore_for_inference(tmp_path)


def test_lora_run_checkpoints_only_adapters_and_restores_them(tmp_path):
    run_dir = tmp_path / "lora"
    cfg = load_config(
        TINY,
        overrides(run_dir, "train.steps=3", "lora.enabled=true", "lora.r=4", "train.eval_every=0"),
    )
    run_training(cfg)
    item = run_dir / "checkpoints" / "3" / "trainable"
    saved_names = json.dumps(json.loads((item / "_METADATA").read_text()))
    assert (
        "lora_a" in saved_names and "kernel" not in saved_names and "embedding" not in saved_names
    )
    _, model, _ = restore_for_inference(run_dir)
    fresh = build_run_model(cfg)
    base_fresh = [np.asarray(x) for x in jax.tree.leaves(nnx.state(fresh, nnx.Param))]
    base_got = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
    for got, want in zip(base_got, base_fresh, strict=True):
        np.testing.assert_array_equal(got, want)  # the base is rebuilt, not stored
    lora_b = [
        x
        for p, x in jax.tree_util.tree_flatten_with_path(nnx.state(model, trainable_filter(True)))[
            0
        ]
        if "lora_b" in str(p)
    ]
    assert lora_b and any(np.abs(np.asarray(b)).max() > 0 for b in lora_b)


def test_non_finite_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "nan"
    cfg = load_config(
        TINY, overrides(run_dir, "train.steps=8", "checkpoint.every=2", "train.eval_every=100")
    )

    def poison(step, batch):
        if step == 4:  # the 5th update
            batch = dict(batch, pair_mask=batch["pair_mask"] * np.float32("nan"))
        return batch

    with pytest.raises(FloatingPointError, match="non-finite loss at step 5"):
        run_training(cfg, batch_hook=poison)
    ckpt = RunCheckpointer(run_dir, read_only=True)
    assert ckpt.latest_step() == 4
    _, model, _ = restore_for_inference(run_dir, step="latest")
    assert all(np.isfinite(x).all() for x in _leaves(model, lora=False))
    assert max(r["step"] for r in read_metrics(run_dir)) == 4
