"""Unit tests of the evaluator's pieces against independent implementations.

Each fast path is compared with the library it replaces: corpus BLEU from row statistics vs
nltk ``corpus_bleu``; bit-parallel LCS / ROUGE vs rouge_score; chrF from row statistics vs
sacrebleu's public API; FTS vs RDKit's legacy fingerprint functions (what the scorers call).
"""

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from almol_jax.eval import bleu as bleu_lib
from almol_jax.eval.chrf import ChrfConfig, corpus_chrf, corpus_chrf_from_stats, row_chrf
from almol_jax.eval.length_bias import length_stats
from almol_jax.eval.text import Rouge, lcs_length

tokens = st.lists(st.sampled_from(list("abcde")), max_size=12)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(tokens, tokens), min_size=1, max_size=8))
def test_corpus_bleu_from_stats_matches_nltk(pairs):
    import warnings

    from nltk.translate.bleu_score import corpus_bleu

    stats = [bleu_lib.row_stats(ref, hyp) for ref, hyp in pairs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns about zero n-gram overlaps
        for weights in ((0.25, 0.25, 0.25, 0.25), (0.5, 0.5)):
            expected = corpus_bleu([[r] for r, _ in pairs], [h for _, h in pairs], weights=weights)
            assert bleu_lib.corpus_bleu_from_stats(stats, weights) == float(expected)


def test_corpus_bleu_golden():
    # nltk's own doctest corpus: 0.5920... for BLEU-4.
    hyp1 = "It is a guide to action which ensures that the military always obeys the commands of the party".split()
    ref1a = "It is a guide to action that ensures that the military will forever heed Party commands".split()
    hyp2 = "he read the book because he was interested in world history".split()
    ref2a = "he was interested in world history because he read the book".split()
    stats = [bleu_lib.row_stats(ref1a, hyp1), bleu_lib.row_stats(ref2a, hyp2)]
    from nltk.translate.bleu_score import corpus_bleu

    expected = corpus_bleu([[ref1a], [ref2a]], [hyp1, hyp2])
    np.testing.assert_allclose(bleu_lib.corpus_bleu_from_stats(stats), expected, rtol=0, atol=0)
    assert bleu_lib.corpus_bleu_from_stats([bleu_lib.row_stats(["a"], [])]) == 0.0


@settings(max_examples=30, deadline=None)
@given(tokens, tokens)
def test_lcs_length_matches_rouge_table(a, b):
    from rouge_score.rouge_scorer import _lcs_table

    expected = _lcs_table(a, b)[-1][-1] if a and b else 0
    assert lcs_length(a, b) == expected


words = st.lists(
    st.sampled_from(["the", "molecule", "is", "an", "acid", "base", "of", "ß", "C1=CC", "a-b", ""]),
    max_size=15,
).map(" ".join)


@settings(max_examples=30, deadline=None)
@given(words, words)
def test_rouge_matches_rouge_score(ref, out):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    expected = scorer.score(out, ref)
    got = Rouge()(ref, out)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert got[key] == expected[key].fmeasure


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(words, words), min_size=1, max_size=6), st.sampled_from([0, 2]))
def test_chrf_from_stats_matches_sacrebleu(pairs, word_order):
    config = ChrfConfig(word_order=word_order)
    metric = config.metric()
    rows = [row_chrf(metric, ref, out) for ref, out in pairs]
    for (ref, out), (sentence, _) in zip(pairs, rows, strict=True):
        assert sentence == config.metric().sentence_score(out, [ref]).score
    refs, outs = [p[0] for p in pairs], [p[1] for p in pairs]
    assert corpus_chrf_from_stats(metric, [s for _, s in rows]) == corpus_chrf(config, refs, outs)


def test_chrf_config_rejects_bad_values():
    with pytest.raises(ValueError, match="char_order=0"):
        ChrfConfig(char_order=0)


def test_length_stats_golden():
    stats = length_stats({"chars": ([2, 4, 6, 8], [3, 4, 4, 12])}, {"s": [0.1, 0.2, None, 0.9]})
    np.testing.assert_allclose(
        stats["length_chars_diff_mean"], (1 + 0 - 2 + 4) / 4, rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(stats["length_chars_abs_diff_mean"], 7 / 4, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats["length_chars_ratio"], 23 / 20, rtol=0, atol=1e-12)
    assert stats["length_chars_longer_frac"] == 0.5 and stats["length_chars_shorter_frac"] == 0.25
    from scipy import stats as sps

    x, y = np.array([3, 4, 12.0]), np.array([0.1, 0.2, 0.9])
    np.testing.assert_allclose(
        stats["corr_s_vs_out_chars_pearson"], sps.pearsonr(x, y)[0], rtol=1e-12, atol=0
    )
    np.testing.assert_allclose(
        stats["corr_s_vs_out_chars_spearman"], sps.spearmanr(x, y)[0], rtol=1e-12, atol=0
    )
    # Undefined correlations are NaN, not errors.
    flat = length_stats({"chars": ([1, 1], [1, 1])}, {"s": [0.5, 0.5]})
    assert math.isnan(flat["corr_s_vs_out_chars_pearson"])


def test_spearman_ties_match_scipy():
    from scipy import stats as sps

    rng = random.Random(0)
    x = [rng.randint(0, 5) for _ in range(50)]
    y = [rng.random() for _ in range(50)]
    got = length_stats({"t": ([0] * 50, x)}, {"s": y})["corr_s_vs_out_t_spearman"]
    np.testing.assert_allclose(got, sps.spearmanr(x, y)[0], rtol=1e-12, atol=0)


def _times(state, chunk):
    return [state * x for x in chunk]


def test_map_chunks_parallel_equals_serial():
    from almol_jax.eval.parallel import map_chunks

    items = list(range(1000))
    serial = map_chunks(_times, items, state=3, num_workers=1)
    parallel = map_chunks(_times, items, state=3, num_workers=2, start_method="fork")
    assert serial == parallel == [3 * x for x in items]
    with pytest.raises(ValueError, match="num_workers=0"):
        map_chunks(_times, items, num_workers=0)
