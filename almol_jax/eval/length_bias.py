"""Length-bias statistics: output minus reference length, and score against length.

For each unit (``tokens``, ``chars``) it reports the mean / median / std / 5th and 95th
percentile of ``len(output) - len(reference)``, the mean absolute difference, the share of
outputs longer and shorter than their reference, and the ratio of total lengths. For each
per-row score it reports the Pearson and Spearman correlation with output length and with the
length difference (NaN where a correlation is undefined: fewer than 3 rows or a constant).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as scipy.stats.rankdata."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    return _pearson(_ranks(x[ok]), _ranks(y[ok]))


def length_stats(
    lengths: Mapping[str, tuple[Sequence[int], Sequence[int]]],
    scores: Mapping[str, Sequence[float | None]],
) -> dict[str, float]:
    """Flat ``length_*`` metrics.

    ``lengths``: unit -> (reference lengths, output lengths); ``scores``: name -> per-row score
    (None = undefined for that row).
    """
    out: dict[str, float] = {}
    nan = float("nan")
    for unit, (ref_len, out_len) in lengths.items():
        ref_N = np.asarray(ref_len, dtype=np.float64)
        out_N = np.asarray(out_len, dtype=np.float64)
        diff_N = out_N - ref_N
        empty = len(diff_N) == 0
        prefix = f"length_{unit}"
        out[f"{prefix}_ref_mean"] = nan if empty else float(ref_N.mean())
        out[f"{prefix}_out_mean"] = nan if empty else float(out_N.mean())
        out[f"{prefix}_diff_mean"] = nan if empty else float(diff_N.mean())
        out[f"{prefix}_diff_median"] = nan if empty else float(np.median(diff_N))
        out[f"{prefix}_diff_std"] = nan if empty else float(diff_N.std())
        out[f"{prefix}_diff_p05"] = nan if empty else float(np.percentile(diff_N, 5))
        out[f"{prefix}_diff_p95"] = nan if empty else float(np.percentile(diff_N, 95))
        out[f"{prefix}_abs_diff_mean"] = nan if empty else float(np.abs(diff_N).mean())
        out[f"{prefix}_longer_frac"] = nan if empty else float((diff_N > 0).mean())
        out[f"{prefix}_shorter_frac"] = nan if empty else float((diff_N < 0).mean())
        out[f"{prefix}_ratio"] = float(out_N.sum() / ref_N.sum()) if ref_N.sum() > 0 else nan
        for name, values in scores.items():
            score_N = np.asarray([nan if v is None else v for v in values], dtype=np.float64)
            out[f"corr_{name}_vs_out_{unit}_pearson"] = _pearson(score_N, out_N)
            out[f"corr_{name}_vs_out_{unit}_spearman"] = _spearman(score_N, out_N)
            out[f"corr_{name}_vs_diff_{unit}_pearson"] = _pearson(score_N, diff_N)
    return out
