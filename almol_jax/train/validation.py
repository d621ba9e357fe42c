"""Validation of a training run: pair-weighted eval metrics, pooled over directions.

`validate(evaluate, data, eval_batches)` runs `evaluate(host_batch) -> {metric: float,
"num_pairs": n}` (the jitted eval step on the current parameters) over the validation batches and
returns {"eval/<metric>": mean over pairs}, or None when the split holds no pairs. With both
directions in the split (data.validation_by_direction), each direction gets its own pass
(train.eval_batches shared between them: ceil(eval_batches / directions) each) and its own
"eval/<direction>/<metric>" and "eval/<direction>/num_pairs"; the pooled "eval/<metric>" is
their pair-weighted mean. `ranking_loss` is the loss a validated checkpoint is ranked by: a
NaN or infinite validation loss is reported (the metrics keep it, a warning line says so) and
never ranks a checkpoint as best; `flag_non_finite` notes which metrics were not finite in the
record itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

Evaluate = Callable[[dict], dict[str, float]]
log = logging.getLogger(__name__)
NON_FINITE = "eval/non_finite"  # the record's note of its NaN / infinite metrics


def flag_non_finite(metrics: dict[str, float] | None) -> dict[str, float | str] | None:
    """`metrics` with NON_FINITE = "name=value, ..." added when any metric is NaN or infinite
    (metrics.jsonl stores those as null: strict JSON has no NaN, so the note says which)."""
    if metrics is None:
        return None
    bad = [f"{k}={v}" for k, v in metrics.items() if not math.isfinite(v)]
    return dict(metrics, **{NON_FINITE: ", ".join(bad)}) if bad else metrics


def ranking_loss(metrics: dict[str, float] | None, step: int) -> float | None:
    """The validation loss that ranks checkpoint `step` for "best": eval/loss when it is finite;
    None (with a warning line) when it is NaN or infinite, so that step is never chosen as best.
    The non-finite value itself stays in the logged metrics."""
    if metrics is None:
        return None
    loss = metrics["eval/loss"]
    if math.isfinite(loss):
        return loss
    log.warning(
        "validation loss at step %d is %s (not finite): its checkpoint is never chosen as best",
        step,
        loss,
    )
    return None


def validation_pass(
    evaluate: Evaluate, batches: Iterable[dict], limit: int
) -> tuple[dict[str, float], float]:
    """(pair-weighted metric sums, pairs) over the first `limit` batches (0: all)."""
    totals: dict[str, float] = {}
    pairs = 0.0
    for i, host_batch in enumerate(batches):
        if limit and i >= limit:
            break
        metrics = evaluate(host_batch)
        n = metrics.pop("num_pairs")
        pairs += n
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + v * n
    return totals, pairs


def validate(evaluate: Evaluate, data, eval_batches: int) -> dict[str, float] | None:
    """eval/<metric> (and per direction, eval/<direction>/<metric>) of a RunData's validation
    split; see the module docstring."""
    by_direction = data.validation_by_direction
    if not by_direction:
        totals, pairs = validation_pass(evaluate, data.validation(), eval_batches)
        return {f"eval/{k}": v / pairs for k, v in totals.items()} if pairs else None
    limit = -(-eval_batches // len(by_direction)) if eval_batches else 0
    out: dict[str, float] = {}
    pooled: dict[str, float] = {}
    pooled_pairs = 0.0
    for direction, make in by_direction.items():
        totals, pairs = validation_pass(evaluate, make(), limit)
        if not pairs:
            continue
        out.update({f"eval/{direction}/{k}": v / pairs for k, v in totals.items()})
        out[f"eval/{direction}/num_pairs"] = pairs
        pooled_pairs += pairs
        for k, v in totals.items():
            pooled[k] = pooled.get(k, 0.0) + v
    if not pooled_pairs:
        return None
    return {f"eval/{k}": v / pooled_pairs for k, v in pooled.items()} | out
