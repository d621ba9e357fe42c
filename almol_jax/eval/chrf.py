"""chrF / chrF++ (sacrebleu ``CHRF``), corpus-level and mean sentence-level.

sacrebleu reports chrF on a 0-100 scale; the evaluator keeps that scale and labels it.
``word_order=0`` is chrF, ``word_order=2`` is chrF++; ``char_order`` 6 and ``beta`` 2 are the
sacrebleu defaults. Row statistics of plain chrF come from :func:`char_ngram_stats` (the same
integers as sacrebleu's, counted with less overhead); chrF++ uses sacrebleu's own extraction.
The scores are always sacrebleu's own float arithmetic on those statistics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ChrfConfig:
    """sacrebleu CHRF arguments."""

    char_order: int = 6
    word_order: int = 0
    beta: int = 2

    def __post_init__(self):
        if self.char_order < 1:
            raise ValueError(f"chrF char_order={self.char_order} must be >= 1")
        if self.word_order < 0:
            raise ValueError(f"chrF word_order={self.word_order} must be >= 0")
        if self.beta < 1:
            raise ValueError(f"chrF beta={self.beta} must be >= 1")

    def metric(self):
        from sacrebleu.metrics import CHRF

        return CHRF(char_order=self.char_order, word_order=self.word_order, beta=self.beta)

    @property
    def label(self) -> str:
        name = "chrF" + "+" * self.word_order
        return f"{name} (sacrebleu, char_order={self.char_order}, word_order={self.word_order}, beta={self.beta}, 0-100)"


def char_ngram_stats(reference: str, output: str, max_order: int) -> list[int]:
    """sacrebleu CHRF's row statistics for character n-grams 1..``max_order`` (whitespace
    removed, case kept): ``[hyp, ref, match]`` per order, flattened.

    As sacrebleu: ``hyp`` is the output's n-gram count (0 when the reference has none of that
    order), ``ref`` the reference's, ``match`` the clipped overlap sum(min(count_out, count_ref)).
    The per-order match counts of whitespace-free strings are also nltk BLEU's numerators.
    """
    ref = "".join(reference.split())
    hyp = "".join(output.split())
    len_ref, len_hyp = len(ref), len(hyp)
    stats: list[int] = []
    for n in range(1, max_order + 1):
        n_ref = max(0, len_ref - n + 1)
        n_hyp = max(0, len_hyp - n + 1) if n_ref else 0
        if n_hyp == 0:  # also when the reference is too short: no overlap
            stats += (0, n_ref, 0)
            continue
        if n == 1:
            ref_counts, hyp_counts = Counter(ref), Counter(hyp)
        else:
            ref_counts = Counter([ref[i : i + n] for i in range(n_ref)])
            hyp_counts = Counter([hyp[i : i + n] for i in range(n_hyp)])
        if len(hyp_counts) > len(ref_counts):
            ref_counts, hyp_counts = hyp_counts, ref_counts  # min() is symmetric
        match = sum([min(c, ref_counts[g]) for g, c in hyp_counts.items() if g in ref_counts])
        stats += (n_hyp, n_ref, match)
    return stats


def batch_row_chrf(metric, references: Sequence[str], outputs: Sequence[str]) -> list:
    """[(sentence chrF 0-100, row statistics)] of many rows: :func:`row_chrf` per row, with
    plain chrF's n-gram overlaps counted for all rows at once (:mod:`almol_jax.eval.ngrams`)."""
    if not _plain_chrf(metric):
        return [row_chrf(metric, r, o) for r, o in zip(references, outputs, strict=True)]
    from almol_jax.eval.ngrams import overlap_counts

    refs = ["".join(r.split()) for r in references]
    outs = ["".join(o.split()) for o in outputs]
    out = []
    for ref, hyp, overlaps in zip(
        refs, outs, overlap_counts(outs, refs, metric.char_order), strict=True
    ):
        stats: list[int] = []
        for n, match in enumerate(overlaps, start=1):
            n_ref = max(0, len(ref) - n + 1)
            stats += (max(0, len(hyp) - n + 1) if n_ref else 0, n_ref, match)
        out.append((float(metric._compute_f_score(stats)), stats))
    return out


def _plain_chrf(metric) -> bool:
    """Whether ``metric`` is plain character chrF, which :func:`char_ngram_stats` counts."""
    return metric.word_order == 0 and not metric.lowercase and not metric.whitespace


def row_chrf(metric, reference: str, output: str) -> tuple[float, list]:
    """(sentence chrF 0-100, the row's n-gram statistics) for one row.

    Does what ``metric.sentence_score(output, [reference])`` does, keeping the statistics so
    that :func:`corpus_chrf_from_stats` gives ``corpus_score`` without recomputing them.
    """
    if _plain_chrf(metric):
        stats = char_ngram_stats(reference, output, metric.char_order)
    else:
        stats = metric._extract_corpus_statistics([output], [[reference]])[0]
    return float(metric._compute_f_score(stats)), stats


def corpus_chrf_from_stats(metric, stats: Sequence[list]) -> float:
    """``metric.corpus_score(outputs, [references]).score`` from per-row statistics."""
    if not stats:
        return float("nan")
    return float(metric._aggregate_and_compute(list(stats)).score)


def corpus_chrf(config: ChrfConfig, references: Sequence[str], outputs: Sequence[str]) -> float:
    """Corpus-level chrF (0-100) through sacrebleu's public API (the slow path, for tests)."""
    if not outputs:
        return float("nan")
    return float(config.metric().corpus_score(list(outputs), [list(references)]).score)
