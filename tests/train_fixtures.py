"""Helpers for the training tests: a tiny model, its split state and fixed synthetic triplets.

The triplets are learnable: a chosen response repeats its prompt's tokens, a rejected response is
a fixed random sequence, so a few CPO steps can tell them apart.
"""

from __future__ import annotations

import numpy as np
import optax
from flax import nnx

from almol_jax.config.sections import ObjectiveSection
from almol_jax.model import LoraConfig, ModelConfig, build_model
from almol_jax.model.lora import trainable_filter
from almol_jax.train import optimizer as opt_lib
from almol_jax.train import step as step_lib

VOCAB = 260


def tiny_model(*, lora: bool = False, seed: int = 0, **overrides):
    """A ~100k-parameter random-init LLaMA (preset "tiny", byte vocabulary)."""
    cfg = ModelConfig.preset("tiny", vocab_size=VOCAB, **overrides)
    return build_model(cfg, lora=LoraConfig(r=4, alpha=8) if lora else None, rngs=seed)


def split(model, lora: bool):
    return nnx.split(model, trainable_filter(lora), ...)


def triplet_batch(num_pairs: int, *, seq_len: int = 24, prompt_len: int = 10, seed: int = 0):
    """Plain-layout batch (DESIGN.md) of `num_pairs` triplets with varying response lengths."""
    rng = np.random.default_rng(seed)
    rows = 2 * num_pairs
    input_ids = np.full((rows, seq_len), 3, np.int32)
    attention_mask = np.zeros((rows, seq_len), np.int32)
    loss_mask = np.zeros((rows, seq_len), np.float32)
    for p in range(num_pairs):
        prompt = rng.integers(4, VOCAB, prompt_len)
        prompt[0] = 1  # BOS
        chosen = np.concatenate([prompt[1:][: seq_len - prompt_len - 1 - p % 3], [2]])
        rejected = np.concatenate([rng.integers(4, VOCAB, len(chosen) - 1), [2]])
        for row, response in ((p, chosen), (num_pairs + p, rejected)):
            n = prompt_len + len(response)
            input_ids[row, :n] = np.concatenate([prompt, response])
            attention_mask[row, :n] = 1
            loss_mask[row, prompt_len:n] = 1.0
    positions = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0).astype(np.int32)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "loss_mask": loss_mask,
        "positions": positions,
        "pair_mask": np.ones((num_pairs,), np.float32),
    }


def settings(
    *,
    name: str = "cpo",
    grad_accum: int = 1,
    lr: float = 1e-3,
    steps: int = 30,
    tx: optax.GradientTransformation | None = None,
):
    schedule = opt_lib.make_schedule(peak_lr=lr, total_steps=steps, warmup_steps=0, kind="constant")
    tx = tx or opt_lib.make_optimizer(schedule, max_grad_norm=1.0)
    return step_lib.StepSettings(
        objective=ObjectiveSection(name=name), grad_accum=grad_accum, tx=tx, schedule=schedule
    )
