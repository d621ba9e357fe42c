"""Optimizer for training: optax AdamW, learning-rate schedules, clipping, the trainable filter.

The published recipe (TRL CPOTrainer) is AdamW (0.9, 0.999, eps 1e-8, weight decay 0), lr 5e-5,
linear decay with 10% warm-up, global-norm clipping at 1.0. The schedules follow the Hugging Face
definitions (`get_linear_schedule_with_warmup`, `get_cosine_schedule_with_warmup`): the first
update uses lr(0) (0 when there is warm-up), warm-up steps = ceil(warmup_ratio * total_steps).

LoRA is a variable type, not a code path: `model.lora.trainable_filter(lora_enabled)` returns the NNX filter
that selects what the gradient and optimizer see (LoRAParam adapters, or every nnx.Param).
"""

from __future__ import annotations

import math

import optax

SCHEDULES = ("linear", "cosine", "constant")


def warmup_steps_for(total_steps: int, warmup_ratio: float, warmup_steps: int = 0) -> int:
    """Warm-up length: an explicit count wins, else ceil(ratio * total) as in HF Trainer."""
    if warmup_steps < 0:
        raise ValueError(f"{warmup_steps=} must be >= 0")
    if not 0.0 <= warmup_ratio <= 1.0:
        raise ValueError(f"{warmup_ratio=} must lie in [0, 1]")
    if warmup_steps:
        return min(int(warmup_steps), int(total_steps))
    return int(math.ceil(warmup_ratio * total_steps))


def make_schedule(
    *, peak_lr: float, total_steps: int, warmup_steps: int, kind: str = "linear"
) -> optax.Schedule:
    """lr(count) for optimizer update number `count` (0-based), HF-compatible shapes."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule {kind=} is not one of {SCHEDULES}")
    if total_steps < 1:
        raise ValueError(f"{total_steps=} must be >= 1")
    if peak_lr < 0:
        raise ValueError(f"{peak_lr=} must be >= 0")
    warmup_steps = min(warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup_steps, 1)
    if kind == "constant":
        after = optax.constant_schedule(peak_lr)
    elif kind == "linear":
        after = optax.linear_schedule(peak_lr, 0.0, decay_steps)
    else:
        after = optax.cosine_decay_schedule(peak_lr, decay_steps, alpha=0.0)
    if warmup_steps == 0:
        return after
    warm = optax.linear_schedule(0.0, peak_lr, warmup_steps)
    return optax.join_schedules([warm, after], [warmup_steps])


def make_optimizer(
    schedule: optax.Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """Global-norm clipping (when max_grad_norm > 0) followed by AdamW with the schedule."""
    parts = []
    if max_grad_norm is not None and max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return optax.chain(*parts)
