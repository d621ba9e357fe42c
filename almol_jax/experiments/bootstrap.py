"""Paired bootstrap over test rows: how sure is a difference between two arms?

For a headline metric that is a mean over test rows, each arm's per-row values (averaged over
its seeds, so a seeded arm's row value is the mean of its seeds' values on that row) are paired
row by row; the difference's point estimate is the mean of the row differences (= the difference
of the arms' metrics), and its interval the percentiles of that mean over ``samples`` resamples of
the rows with replacement (one seeded NumPy generator). ``p_better`` is the share of resamples in
which the first arm is ahead, in the metric's own sense (lower Levenshtein is better).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# headline metric -> (per_row.csv column, None counts as 0, higher is better)
ROW_METRICS: dict[str, tuple[str, bool, bool]] = {
    "meteor": ("meteor", False, True),
    "rouge1": ("rouge1", False, True),
    "rouge2": ("rouge2", False, True),
    "rougeL": ("rougeL", False, True),
    "chrf_sentence_mean": ("chrf", False, True),
    "validity": ("valid", True, True),
    "exact_match": ("exact_match", True, True),
    "levenshtein": ("levenshtein", False, False),
    "morgan_fts_lpm24": ("morgan_fts", True, True),
    "maccs_fts_lpm24": ("maccs_fts", True, True),
    "rdk_fts_lpm24": ("rdk_fts", True, True),
}


def _value(text: str, none_is_zero: bool) -> float:
    if text in ("", "None", "nan"):
        return 0.0 if none_is_zero else math.nan
    if text in ("True", "False"):
        return float(text == "True")
    return float(text)


def row_values(per_row_csv: Path, metric: str) -> np.ndarray:
    """The per-row values of a headline ``metric`` from an evaluation's per_row.csv."""
    if metric not in ROW_METRICS:
        raise ValueError(f"{metric!r} is not a per-row mean metric ({sorted(ROW_METRICS)})")
    column, none_is_zero, _ = ROW_METRICS[metric]
    with per_row_csv.open(newline="", encoding="utf-8") as f:
        return np.array([_value(r[column], none_is_zero) for r in csv.DictReader(f)], np.float64)


def seed_mean(per_seed: Sequence[np.ndarray]) -> np.ndarray:
    """Row-wise mean over seeds (every seed scored the same test rows in the same order)."""
    lengths = {len(v) for v in per_seed}
    if len(lengths) != 1:
        raise ValueError(f"seeds scored different numbers of rows: {sorted(lengths)}")
    return np.mean(np.stack(per_seed), axis=0)


def paired_interval(
    a: np.ndarray,
    b: np.ndarray,
    *,
    higher_is_better: bool,
    samples: int,
    confidence: float,
    seed: int = 0,
) -> dict[str, float]:
    """The mean row difference ``a - b``, its percentile interval and P(a better than b)."""
    if a.shape != b.shape:
        raise ValueError(f"unpaired rows: {a.shape} vs {b.shape}")
    diff = a - b
    n = len(diff)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, n, size=(samples, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    ahead = means > 0 if higher_is_better else means < 0
    return {
        "difference": float(diff.mean()),
        "low": float(low),
        "high": float(high),
        "p_better": float(ahead.mean()),
        "confidence": confidence,
        "samples": samples,
        "rows": n,
    }
