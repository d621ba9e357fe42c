"""Corpus BLEU from per-row n-gram statistics, bit-identical to ``nltk.corpus_bleu``.

nltk's ``corpus_bleu`` sums, over rows, the clipped n-gram match counts (numerators) and the
hypothesis n-gram counts (denominators) of ``modified_precision``, plus hypothesis and closest
reference lengths, then combines them. Splitting it into :func:`row_stats` (per row, run in
worker processes) and :func:`corpus_bleu_from_stats` (the combination, same float operations,
default ``method0`` smoothing) gives the same number faster. :func:`batch_row_stats` counts
the rows of a chunk together (the same integers as :func:`row_stats`).
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Sequence

MAX_ORDER = 4


def row_stats(reference: Sequence[str], hypothesis: Sequence[str], max_order: int = MAX_ORDER):
    """(numerators[max_order], denominators[max_order], hyp_len, ref_len) for one row.

    ``reference`` / ``hypothesis`` are token lists, or plain strings for character BLEU (then
    substrings stand for character n-grams: the same counts, without building tuples).
    """
    numerators, denominators = [], []
    as_str = isinstance(reference, str) and isinstance(hypothesis, str)
    for n in range(1, max_order + 1):
        if as_str:
            hyp_counts = Counter(hypothesis[i : i + n] for i in range(len(hypothesis) - n + 1))
            ref_counts = Counter(reference[i : i + n] for i in range(len(reference) - n + 1))
        else:
            hyp_counts = Counter(
                tuple(hypothesis[i : i + n]) for i in range(len(hypothesis) - n + 1)
            )
            ref_counts = Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
        numerators.append(sum(min(c, ref_counts[g]) for g, c in hyp_counts.items()))
        # nltk's denominator is max(1, count): an empty hypothesis still contributes 1.
        denominators.append(max(1, sum(hyp_counts.values())))
    return numerators, denominators, len(hypothesis), len(reference)


def stats_from_overlaps(overlaps: Sequence[int], hyp_len: int, ref_len: int):
    """:func:`row_stats` of one row from its clipped n-gram overlaps (orders 1..len)."""
    numerators = list(overlaps)
    denominators = [max(1, hyp_len - n + 1) for n in range(1, len(numerators) + 1)]
    return numerators, denominators, hyp_len, ref_len


def batch_row_stats(references: Sequence, hypotheses: Sequence, max_order: int = MAX_ORDER):
    """:func:`row_stats` of many rows (token lists, or strings for characters), with the
    overlaps counted for all rows at once (:mod:`almol_jax.eval.ngrams`)."""
    from almol_jax.eval.ngrams import overlap_counts

    overlaps = overlap_counts(hypotheses, references, max_order)
    return [
        stats_from_overlaps(o, len(h), len(r))
        for o, h, r in zip(overlaps, hypotheses, references, strict=True)
    ]


def corpus_bleu_from_stats(stats, weights: Sequence[float] = (0.25, 0.25, 0.25, 0.25)) -> float:
    """nltk ``corpus_bleu(..., weights)`` (no smoothing, auto_reweigh off) from row stats."""
    order = len(weights)
    numerators = [0] * order
    denominators = [0] * order
    hyp_total = ref_total = 0
    for nums, dens, hyp_len, ref_len in stats:
        if len(nums) < order:
            raise ValueError(f"row stats hold {len(nums)} orders, {weights=} needs {order}")
        for i in range(order):
            numerators[i] += nums[i]
            denominators[i] += dens[i]
        hyp_total += hyp_len
        ref_total += ref_len
    if not stats or numerators[0] == 0:
        return 0.0
    bp = _brevity_penalty(ref_total, hyp_total)
    # method0: a zero-match order becomes sys.float_info.min (nltk warns and does the same).
    p_n = [
        numerators[i] / denominators[i] if numerators[i] != 0 else sys.float_info.min
        for i in range(order)
    ]
    s = (w_i * math.log(p_i) for w_i, p_i in zip(weights, p_n, strict=True) if p_i > 0)
    return bp * math.exp(math.fsum(s))


def _brevity_penalty(closest_ref_len: int, hyp_len: int) -> float:
    if hyp_len > closest_ref_len:
        return 1
    if hyp_len == 0:
        return 0
    return math.exp(1 - closest_ref_len / hyp_len)
