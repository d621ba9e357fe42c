"""chrF / chrF++ (sacrebleu ``CHRF``), corpus-level and mean sentence-level.

sacrebleu reports chrF on a 0-100 scale; the evaluator keeps that scale and labels it.
``word_order=0`` is chrF, ``word_order=2`` is chrF++; ``char_order`` 6 and ``beta`` 2 are the
sacrebleu defaults.
"""

from __future__ import annotations

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


def row_chrf(metric, reference: str, output: str) -> tuple[float, list]:
    """(sentence chrF 0-100, the row's n-gram statistics) for one row.

    Does what ``metric.sentence_score(output, [reference])`` does, keeping the statistics so
    that :func:`corpus_chrf_from_stats` gives ``corpus_score`` without recomputing them.
    """
    stats = metric._extract_corpus_statistics([output], [[reference]])
    return float(metric._aggregate_and_compute(stats).score), stats[0]


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
